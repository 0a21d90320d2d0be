"""Classical registration (``vislab.ops.registration``): phase correlation (sub-pixel, sign of the convention),
Fourier–Mellin on pure scaling (and rotation), the hybrid, the log-polar grid against scikit-image's."""

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from vislab.data.pairs import render_pair
from vislab.ops.registration import (
    Registration,
    _log_polar_coords,
    change_type_of,
    fourier_mellin,
    hybrid,
    log_polar_spectrum,
    phase_correlation,
    refine_direct,
    refine_scale,
    rescale_about_centre,
    shift_after_unscale,
    warp_back,
)


def _photo() -> np.ndarray:
    from skimage import data

    return (data.camera() / 255.0).astype(np.float32)


def _fourier_shift(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``img`` with its content moved by (dx, dy) (periodic, exact for sub-pixel shifts)."""
    H, W = img.shape
    fy = np.fft.fftfreq(H)[:, None]
    fx = np.fft.fftfreq(W)[None, :]
    return np.real(np.fft.ifft2(np.fft.fft2(img) * np.exp(-2j * np.pi * (fx * dx + fy * dy))))


@pytest.mark.parametrize("dx, dy", [(3.0, 0.0), (0.0, -5.0), (2.35, -1.7), (-6.6, 4.25), (0.4, 0.15)])
def test_phase_correlation_subpixel_and_sign(dx, dy):
    base = gaussian_filter(np.random.default_rng(0).normal(size=(96, 96)), 1.5)
    img2 = _fourier_shift(base, dx, dy)  # content moves by +t: a point p of img1 is at p + t in img2
    r = phase_correlation(base, img2, window=False)
    assert (r.dx, r.dy, r.scale) == pytest.approx((dx, dy, 1.0), abs=0.06)
    back = phase_correlation(img2, base, window=False)
    assert (back.dx, back.dy) == pytest.approx((-dx, -dy), abs=0.06)


@pytest.mark.parametrize("dx, dy", [(4.0, -2.0), (-3.3, 5.6), (1.25, 0.75)])
def test_phase_correlation_on_crops_of_a_photo(dx, dy):
    img1, img2 = render_pair(_photo(), (256.0, 250.0), dx=dx, dy=dy, scale=1.0, size=128)
    r = phase_correlation(img1, img2)
    assert (r.dx, r.dy) == pytest.approx((dx, dy), abs=0.15)


@pytest.mark.parametrize("s", [0.8, 0.9, 1.1, 1.25])
def test_fourier_mellin_on_pure_scaling(s):
    img1, img2 = render_pair(_photo(), (250.0, 240.0), dx=0.0, dy=0.0, scale=s, size=128)
    r = fourier_mellin(img1, img2)
    assert r.scale == pytest.approx(s, rel=0.02)
    assert math.hypot(r.dx, r.dy) < 0.5 and abs(r.rotation) < 1.5
    assert phase_correlation(img1, img2).scale == 1.0  # phase correlation knows no scale


def test_fourier_mellin_scale_and_shift_together():
    img1, img2 = render_pair(_photo(), (260.0, 250.0), dx=-6.5, dy=3.25, scale=1.18, size=128)
    r = fourier_mellin(img1, img2)
    assert r.scale == pytest.approx(1.18, rel=0.02)
    assert (r.dx, r.dy) == pytest.approx((-6.5, 3.25), abs=0.4)
    pc = phase_correlation(img1, img2)
    assert math.hypot(pc.dx + 6.5, pc.dy - 3.25) > math.hypot(r.dx + 6.5, r.dy - 3.25)


def test_fourier_mellin_reports_rotation_in_skimage_sense():
    from skimage.transform import rotate

    cam = _photo()
    a = cam[128:384, 128:384]
    b = rotate(cam, 8, center=(255.5, 255.5), order=3)[128:384, 128:384]  # counter-clockwise as displayed
    assert fourier_mellin(a, b).rotation == pytest.approx(8.0, abs=0.7)
    b = rotate(cam, -5, center=(255.5, 255.5), order=3)[128:384, 128:384]
    assert fourier_mellin(a, b).rotation == pytest.approx(-5.0, abs=0.7)


@pytest.mark.parametrize("s, dx, dy", [(1.2, 5.0, -3.0), (0.85, -4.5, 2.0), (1.0, 3.5, 1.5)])
def test_shift_after_unscale_recovers_the_shift_of_the_convention(s, dx, dy):
    img1, img2 = render_pair(_photo(), (250.0, 260.0), dx=dx, dy=dy, scale=s, size=128)
    got = shift_after_unscale(img1, img2, s)
    assert got == pytest.approx((dx, dy), abs=0.25)


def test_hybrid_refines_a_rough_scale_and_finds_the_shift():
    img1, img2 = render_pair(_photo(), (250.0, 250.0), dx=4.0, dy=-6.0, scale=1.15, size=128)
    r = hybrid(img1, img2, scale=1.15 * 1.03)  # a first guess 3 % off
    assert r.scale == pytest.approx(1.15, rel=0.006)
    assert (r.dx, r.dy) == pytest.approx((4.0, -6.0), abs=0.3)
    kept = hybrid(img1, img2, scale=1.1, refine=False)
    assert kept.scale == 1.1
    assert refine_scale(img1, img2, 0.9, search=0.02) == pytest.approx(0.9 * math.exp(0.02), rel=0.01)  # band edge
    # a pure shift: the refined scale is below the threshold, nothing is undone, phase correlation decides
    img1, img2 = render_pair(_photo(), (250.0, 250.0), dx=-3.0, dy=2.5, scale=1.0, size=128)
    r = hybrid(img1, img2, scale=1.02, scale_threshold=math.log(1.08) / 2, direct=False)
    assert r.scale == 1.0 and (r.dx, r.dy) == pytest.approx((-3.0, 2.5), abs=0.15)
    pc = phase_correlation(img1, img2)
    assert (r.dx, r.dy) == (pc.dx, pc.dy)
    # with the direct refinement (the default) the pure shift stays a pure shift, found more precisely
    d = hybrid(img1, img2, scale=1.02, scale_threshold=math.log(1.08) / 2)
    assert d.scale == 1.0 and (d.dx, d.dy) == pytest.approx((-3.0, 2.5), abs=0.05)
    assert math.hypot(d.dx + 3.0, d.dy - 2.5) < math.hypot(pc.dx + 3.0, pc.dy - 2.5)


@pytest.mark.parametrize("s, dx, dy", [(1.17, 5.3, -2.6), (0.88, -4.4, 7.1), (1.0, 2.35, -1.7), (1.09, 0.0, 0.0)])
def test_refine_direct_converges_to_the_true_change_from_a_rough_start(s, dx, dy):
    img1, img2 = render_pair(_photo(), (250.0, 260.0), dx=dx, dy=dy, scale=s, size=128)
    img2 = 0.8 * img2 + 0.1  # a contrast and brightness change: the gain and offset absorb it
    start = Registration(dx + 0.8, dy - 0.6, s * 1.01)
    r = refine_direct(img1, img2, start)
    assert (r.dx, r.dy) == pytest.approx((dx, dy), abs=0.03)
    assert r.scale == pytest.approx(s, rel=3e-4)
    fixed = refine_direct(img1, img2, Registration(dx + 0.5, dy, 1.0), fit_scale=False)
    assert fixed.scale == 1.0
    if s == 1.0:
        assert (fixed.dx, fixed.dy) == pytest.approx((dx, dy), abs=0.03)


def test_refine_direct_keeps_the_start_when_it_diverges_or_cannot_improve():
    img1, img2 = render_pair(_photo(), (250.0, 260.0), dx=3.0, dy=-2.0, scale=1.1, size=128)
    far = Registration(-20.0, 15.0, 0.8)  # nowhere near: the steps would run off, or not lower the residual
    r = refine_direct(img1, img2, far, max_step=1.0)
    assert (r.dx, r.dy, r.scale) == (far.dx, far.dy, far.scale)
    noise = np.random.default_rng(0).random((64, 64))
    same = refine_direct(noise, noise, Registration(0.0, 0.0, 1.0))
    assert math.hypot(same.dx, same.dy) < 1e-6 and same.scale == pytest.approx(1.0, abs=1e-8)


def test_hybrid_reports_no_shift_below_the_shift_threshold():
    img1, img2 = render_pair(_photo(), (250.0, 250.0), dx=0.0, dy=0.0, scale=1.2, size=128)
    img2 = img2 + np.random.default_rng(1).normal(0, 0.02, img2.shape)
    raw = hybrid(img1, img2, scale=1.21)
    assert 0 < math.hypot(raw.dx, raw.dy) < 0.2 and raw.scale == pytest.approx(1.2, rel=1e-3)
    snapped = hybrid(img1, img2, scale=1.21, shift_threshold=2.0)
    assert (snapped.dx, snapped.dy) == (0.0, 0.0) and snapped.scale == raw.scale


def test_log_polar_grid_equals_warp_polar():
    from scipy.ndimage import map_coordinates
    from skimage.transform import warp_polar

    m = np.random.default_rng(1).random((64, 64))
    ref = warp_polar(m, center=(32, 32), radius=32, output_shape=(360, 96), scaling="log", order=1)[:180]
    coords, k = _log_polar_coords(64, 360, 96, 1.0, 32.0)
    assert k == pytest.approx(96 / math.log(32))
    np.testing.assert_allclose(map_coordinates(m, coords, order=1, mode="grid-constant"), ref, atol=1e-12)
    lp, k2 = log_polar_spectrum(m)
    assert lp.shape == (180, 64) and np.isfinite(lp).all()


def test_rescale_and_warp_back():
    img1, img2 = render_pair(_photo(), (250.0, 250.0), dx=3.0, dy=-2.0, scale=1.2, size=96)
    back, valid = warp_back(img2, Registration(3.0, -2.0, 1.2))
    inner = valid.copy()
    inner[:4], inner[-4:], inner[:, :4], inner[:, -4:] = False, False, False, False
    assert np.abs(back - img1)[inner].mean() < 0.01
    assert np.abs(img2 - img1).mean() > 0.05
    big = rescale_about_centre(img1, 1.2)
    _, zoom = render_pair(_photo(), (250.0, 250.0), dx=0.0, dy=0.0, scale=1.2, size=96)
    assert np.abs(big - zoom)[8:-8, 8:-8].mean() < 0.01


def test_change_type_thresholds():
    assert change_type_of(0.2, 0.1, 0.001, shift_threshold=1.0, scale_threshold=0.04) == "none"
    assert change_type_of(1.0, 0.0, 0.0, shift_threshold=1.0, scale_threshold=0.04) == "shift"
    assert change_type_of(0.0, 0.0, -0.05, shift_threshold=1.0, scale_threshold=0.04) == "scale"
    assert Registration(3.0, 4.0, 1.1).change_type(shift_threshold=5.0, scale_threshold=0.05) == "both"


def test_argument_errors():
    a = np.zeros((32, 32))
    with pytest.raises(ValueError, match="same size"):
        phase_correlation(a, np.zeros((32, 30)))
    with pytest.raises(ValueError, match=r"grayscale image \[H, W\]"):
        fourier_mellin(np.zeros((32, 32, 3)), np.zeros((32, 32, 3)))
    with pytest.raises(ValueError, match="NaN or inf"):
        phase_correlation(a, np.full((32, 32), np.nan))
    with pytest.raises(ValueError, match="positive finite"):
        hybrid(a, a, scale=0.0)
    with pytest.raises(ValueError, match="positive finite"):
        refine_direct(a, a, Registration(0.0, 0.0, -1.0))
    with pytest.raises(ValueError, match="iterations >= 1"):
        refine_direct(a, a, Registration(0.0, 0.0, 1.0), iterations=0)
    with pytest.raises(ValueError, match="upsample_factor"):
        phase_correlation(a, a, upsample_factor=0)
    with pytest.raises(ValueError, match="angles must be an even number"):
        fourier_mellin(a, a, angles=7)


def test_hybrid_falls_back_to_fourier_mellin_when_the_first_guess_is_outside_its_band():
    img1, img2 = render_pair(_photo(), (250.0, 260.0), dx=-3.0, dy=4.0, scale=1.18, size=128)
    prior = 1.05  # 11 % off: the true peak lies outside the ±0.05 band around it
    banded = hybrid(img1, img2, scale=prior, direct=False)
    assert banded.scale == pytest.approx(prior * math.exp(0.05), rel=1e-3)  # stuck at the band's edge
    r = hybrid(img1, img2, scale=prior)
    assert r.scale == pytest.approx(1.18, rel=1e-3) and (r.dx, r.dy) == pytest.approx((-3.0, 4.0), abs=0.05)
