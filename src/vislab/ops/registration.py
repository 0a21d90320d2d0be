"""Classical registration of two images: phase correlation, log-polar Fourier–Mellin, and the hybrid.

The convention (the same in the whole project): ``img2`` is ``img1`` scaled by ``s`` about the image
centre ``c = ((W − 1) / 2, (H − 1) / 2)``, then shifted by ``t = (dx, dy)`` pixels (x right, y down).
A point ``p`` of ``img1`` appears at ``s·(p − c) + c + t`` in ``img2``. Every function returns its
estimate of ``(dx, dy, s)`` in this convention, as a :class:`Registration`.

* :func:`phase_correlation` — ``skimage.registration.phase_cross_correlation`` (normalised cross-power
  spectrum, sub-pixel peak by upsampled DFT) on Hann-windowed images. Exact for a pure shift to a
  fraction of a pixel; it knows nothing of scaling (``scale = 1``), so under scaling it breaks.
* :func:`fourier_mellin` — the magnitude spectrum does not depend on the shift; scaling the image by
  ``s`` scales the spectrum by ``1/s``, and rotating it rotates the spectrum. In log-polar coordinates
  of the (windowed, high-passed) magnitude spectrum both become shifts, found by phase correlation:
  ``log s`` along the log-radius axis, the rotation along the angle axis (reported, modulo 180°, but
  not part of the convention). The scale is then undone and phase correlation gives the shift.
* :func:`hybrid` — the scale comes from elsewhere (the change-detection network), is refined on the
  log-polar spectra and undone, phase correlation gives the sub-pixel shift, and :func:`refine_direct`
  (Lucas–Kanade: Gauss–Newton on the pixels, with gain and offset) polishes shift and scale together.

Undoing a scale ``s`` resamples the image that gets *enlarged* (``img1`` by ``s`` when ``s >= 1``, else
``img2`` by ``1/s``), so the resampled image never needs pixels from outside its frame.

References: Reddy & Chatterji, "An FFT-based technique for translation, rotation, and scale-invariant
image registration", IEEE TIP 1996 (the high-pass filter); scikit-image's gallery example "Using
Polar and Log-Polar Transformations for Registration" (log-polar of the spectrum via ``warp_polar``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

CHANGE_TYPES = ("none", "shift", "scale", "both")


@dataclass(frozen=True)
class Registration:
    """An estimate in the convention of the module docstring: shift ``(dx, dy)`` in pixels, ``scale`` s,
    and, from Fourier–Mellin only, ``rotation`` in degrees, modulo 180° (img2 is img1 rotated by that angle
    counter-clockwise as displayed, the sense of ``skimage.transform.rotate``; 0 from the other methods)."""

    dx: float
    dy: float
    scale: float = 1.0
    rotation: float = 0.0

    @property
    def log_scale(self) -> float:
        return math.log(self.scale)

    def change_type(self, *, shift_threshold: float, scale_threshold: float) -> str:
        """``none | shift | scale | both`` from thresholds: a shift when ``|t| >= shift_threshold`` px, a
        scaling when ``|log s| >= scale_threshold``."""
        return change_type_of(self.dx, self.dy, math.log(self.scale), shift_threshold=shift_threshold,
                              scale_threshold=scale_threshold)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def change_type_of(dx: float, dy: float, log_s: float, *, shift_threshold: float, scale_threshold: float) -> str:
    """The change type of an estimate (see :meth:`Registration.change_type`)."""
    shifted = math.hypot(dx, dy) >= shift_threshold
    scaled = abs(log_s) >= scale_threshold
    return CHANGE_TYPES[int(shifted) + 2 * int(scaled)]


def _as_image(img: Any, name: str) -> np.ndarray:
    a = np.asarray(img.detach().cpu() if hasattr(img, "detach") else img, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a grayscale image [H, W], got shape {a.shape}")
    if min(a.shape) < 8:
        raise ValueError(f"{name} must be at least 8×8 pixels, got {a.shape[1]}×{a.shape[0]}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _pair(img1: Any, img2: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_image(img1, "img1"), _as_image(img2, "img2")
    if a.shape != b.shape:
        raise ValueError(f"img1 and img2 must have the same size, got {a.shape[1]}×{a.shape[0]} and "
                         f"{b.shape[1]}×{b.shape[0]}")
    return a, b


@lru_cache(maxsize=32)
def _hann_cached(shape: tuple[int, int]) -> np.ndarray:
    """The radially symmetric 2-D Hann window of ``skimage.filters.window("hann", shape)``, in NumPy (that
    function imports ``scipy.signal``, 0.5–2 s, for one 1-D window): the symmetric 1-D Hann window of the
    longer side, sampled by linear interpolation at each pixel's distance from the centre (zero outside), the
    sides scaled to the longer one. Equal to scikit-image's within 3e-7 (its warp rounds in float32; test)."""
    n = max(shape)
    w1 = np.hanning(n)  # symmetric: 0.5 − 0.5·cos(2πk/(n − 1)), as scipy.signal.get_window(fftbins=False)
    centre = n / 2 - 0.5
    axes = [np.arange(s, dtype=np.float32) * np.float32(n / s) - np.float32(centre) for s in shape]
    dist = np.sqrt(axes[0][:, None] ** 2 + axes[1][None, :] ** 2)  # float32, as scikit-image computes it
    coords = (dist + np.float32(centre)).astype(np.float64)  # float32 sums, as scikit-image's coordinates
    w = np.interp(coords, np.arange(n, dtype=np.float64), w1, left=0.0, right=0.0)
    w.setflags(write=False)
    return w


def _hann(shape: tuple[int, ...]) -> np.ndarray:
    return _hann_cached((int(shape[0]), int(shape[1])))


def _shift(img1: np.ndarray, img2: np.ndarray, *, upsample_factor: int, window: bool) -> tuple[float, float]:
    """``(dx, dy)`` with ``img2(x) = img1(x − t)``: the shift of img2's content relative to img1's."""
    from skimage.registration import phase_cross_correlation

    if window:
        w = _hann(img1.shape)
        img1 = (img1 - img1.mean()) * w
        img2 = (img2 - img2.mean()) * w
    # phase_cross_correlation(reference, moving) returns the shift that registers `moving` onto `reference`;
    # with reference = img2 and moving = img1 that is +t, as (row, col) = (dy, dx).
    shift, _, _ = phase_cross_correlation(img2, img1, upsample_factor=upsample_factor, normalization="phase")
    return float(shift[1]), float(shift[0])


def phase_correlation(img1: Any, img2: Any, *, upsample_factor: int = 20, window: bool = True) -> Registration:
    """Pure-shift registration by phase correlation (sub-pixel: ``1 / upsample_factor`` px).

    Args:
        img1, img2: grayscale images ``[H, W]`` (NumPy arrays or tensors) of the same size.
        upsample_factor: sub-pixel precision of the correlation peak (upsampled DFT around it).
        window: multiply both images (minus their mean) by a Hann window first, so the image borders
            (a periodic FFT sees them as edges) do not pull the peak to zero.
    Returns:
        ``Registration(dx, dy, scale=1)``.
    """
    a, b = _pair(img1, img2)
    if upsample_factor < 1:
        raise ValueError(f"upsample_factor must be >= 1, got {upsample_factor}")
    dx, dy = _shift(a, b, upsample_factor=upsample_factor, window=window)
    return Registration(dx, dy, 1.0)


def rescale_about_centre(img: Any, scale: float, *, order: int = 3) -> np.ndarray:
    """``out(q) = img((q − c) / scale + c)``: ``img`` scaled by ``scale`` about its centre, same size.
    Points outside the frame (``scale < 1``) repeat the border (``mode="nearest"``)."""
    from scipy.ndimage import affine_transform

    a = np.asarray(img, dtype=np.float64)
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    c = (np.array(a.shape, dtype=np.float64) - 1) / 2
    return affine_transform(a, np.full(2, 1.0 / scale), offset=c - c / scale, order=order, mode="nearest")


def shift_after_unscale(img1: Any, img2: Any, scale: float, *, upsample_factor: int = 20,
                        window: bool = True) -> tuple[float, float]:
    """The shift ``t`` of the convention once a known ``scale`` is undone (see the module docstring).

    ``s >= 1``: ``img1`` enlarged by ``s`` is ``img2`` shifted back by ``t``, so phase correlation gives ``t``.
    ``s < 1``: ``img2`` enlarged by ``1/s`` is ``img1`` shifted by ``t/s``, so ``t = s · t'``.
    """
    a, b = _pair(img1, img2)
    if scale <= 0 or not math.isfinite(scale):
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    if scale == 1.0:
        return _shift(a, b, upsample_factor=upsample_factor, window=window)
    if scale > 1.0:
        return _shift(rescale_about_centre(a, scale), b, upsample_factor=upsample_factor, window=window)
    dx, dy = _shift(a, rescale_about_centre(b, 1.0 / scale), upsample_factor=upsample_factor, window=window)
    return scale * dx, scale * dy


@lru_cache(maxsize=32)
def highpass_filter(shape: tuple[int, int]) -> np.ndarray:
    """Reddy & Chatterji's high-pass emphasis ``(1 − X)(2 − X)``, ``X = cos(π ξ) cos(π η)``, on the
    ``fftshift``-ed frequency grid (ξ, η in cycles per pixel, in [−0.5, 0.5)): 0 at the zero frequency."""
    H, W = shape
    fy = np.fft.fftshift(np.fft.fftfreq(H))[:, None]  # (H, 1)
    fx = np.fft.fftshift(np.fft.fftfreq(W))[None, :]  # (1, W)
    X = np.cos(np.pi * fy) * np.cos(np.pi * fx)
    out = (1.0 - X) * (2.0 - X)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=16)
def _log_polar_coords(n: int, angles: int, radial: int, r_min: float, r_max: float) -> tuple[np.ndarray, float]:
    """(row, col) sampling points of a log-polar grid around the centre ``(n // 2, n // 2)`` of an ``n × n``
    centred spectrum: row ``i`` is the angle ``2π i / angles`` (only the first ``angles // 2`` rows,
    0 … 180°), column ``j`` the radius ``r_min · exp(j / k)``, ``k = radial / log(r_max / r_min)``. With
    ``r_min = 1`` and ``r_max = n // 2`` these are the points of ``skimage.transform.warp_polar(scaling="log")``.
    Returns ``(coords float64[2, angles // 2, radial], k)``; ``k``: columns per unit of log r."""
    k_radius = radial / math.log(r_max / r_min)
    k_angle = angles / (2 * math.pi)
    rows, cols = np.mgrid[0:angles // 2, 0:radial].astype(np.float64)  # (angles // 2, radial) each
    r = r_min * np.exp(cols / k_radius)
    theta = rows / k_angle
    coords = np.stack([r * np.sin(theta) + n // 2, r * np.cos(theta) + n // 2])  # (2, angles // 2, radial)
    coords.setflags(write=False)
    return coords, k_radius


def log_polar_spectrum(img: Any, *, angles: int = 360, radial: int | None = None, r_min: float | None = None,
                       r_max: float | None = None, highpass: bool = True,
                       normalize_radius: bool = True) -> tuple[np.ndarray, float]:
    """Log-polar resampling of the windowed, high-passed magnitude spectrum of ``img``.

    The image (minus its mean) is Hann-windowed and zero-padded to a square ``N × N`` (so frequency
    radii are isotropic), its centred magnitude spectrum multiplied by :func:`highpass_filter`, then
    sampled (bilinear, scipy's ``map_coordinates`` with ``grid-constant`` borders: what
    ``skimage.transform.warp_polar(scaling="log", order=1)`` does, with the points computed once per
    size) over radii ``r_min … r_max`` (default ``max(1, N/64) … N/2`` frequency bins). With
    ``normalize_radius`` each log-radius column is divided by its mean over the angles: the blur and
    noise of each image change the spectrum's radial fall-off, which would otherwise dominate the
    correlation and pin the scale at 1 (measured on the embedded pairs at 128 px: median scale error
    0.3 % with, 1.7 % without, and 36 % instead of 6 % of the scaled pairs off by more than 5 %).

    Returns:
        ``(lp, k)``: ``lp`` ``float64[angles // 2, radial]`` (angles 0 … 180°: the spectrum of a real
        image is symmetric; default ``radial = N``) and ``k``, columns per unit of ``log r``.
    """
    from scipy.ndimage import map_coordinates

    a = np.asarray(img, dtype=np.float64)
    H, W = a.shape
    n = max(H, W)
    sq = np.zeros((n, n))
    sq[:H, :W] = (a - a.mean()) * _hann((H, W))
    mag = np.abs(np.fft.fftshift(np.fft.fft2(sq)))
    if highpass:
        mag = mag * highpass_filter((n, n))
    r_min = float(r_min if r_min is not None else max(1.0, n / 64))
    r_max = float(r_max if r_max is not None else n // 2)
    if not 0 < r_min < r_max:
        raise ValueError(f"need 0 < r_min < r_max, got r_min={r_min}, r_max={r_max}")
    coords, k = _log_polar_coords(n, angles, int(radial or n), r_min, r_max)
    lp = map_coordinates(mag, coords, order=1, mode="grid-constant", cval=0.0)  # (angles // 2, radial)
    if normalize_radius:
        lp = lp / (lp.mean(axis=0, keepdims=True) + 1e-12)
    return lp, k


def _scale_rotation(a: np.ndarray, b: np.ndarray, *, upsample_factor: int, angles: int, radial: int | None,
                    highpass: bool) -> tuple[float, float]:
    """``(log s, rotation in degrees)`` from the log-polar spectra, searched over every shift."""
    from skimage.registration import phase_cross_correlation

    lp1, k = log_polar_spectrum(a, angles=angles, radial=radial, highpass=highpass)
    lp2, _ = log_polar_spectrum(b, angles=angles, radial=radial, highpass=highpass)
    # |F2|(r) = |F1|(s·r): in log-polar lp2(j) = lp1(j + k log s), a shift of -k log s columns; registering
    # lp2 onto lp1 takes +k log s (and the rotation in rows).
    shift, _, _ = phase_cross_correlation(lp1, lp2, upsample_factor=upsample_factor, normalization=None)
    rotation = float(shift[0]) * 360.0 / angles  # rows of the full circle are 360/angles degrees
    return float(shift[1]) / k, (rotation + 90.0) % 180.0 - 90.0  # the magnitude spectrum is symmetric: mod 180°


def fourier_mellin(img1: Any, img2: Any, *, upsample_factor: int = 20, angles: int = 360, radial: int | None = None,
                   highpass: bool = True, window: bool = True) -> Registration:
    """Scale (and rotation) from the log-polar magnitude spectra, then the shift by phase correlation.

    Args:
        img1, img2: grayscale images ``[H, W]`` of the same size.
        upsample_factor: sub-pixel precision of both phase correlations.
        angles: angular samples over 360° of the log-polar grid (half of them are used).
        radial: log-radius samples (default ``max(H, W)``).
        highpass: apply :func:`highpass_filter` to the magnitude spectra (suppresses the low
            frequencies that the window and the image borders dominate).
        window: Hann window in the final phase correlation for the shift.
    Returns:
        ``Registration(dx, dy, scale, rotation)``.
    """
    a, b = _pair(img1, img2)
    if angles < 8 or angles % 2:
        raise ValueError(f"angles must be an even number >= 8, got {angles}")
    log_s, rotation = _scale_rotation(a, b, upsample_factor=upsample_factor, angles=angles, radial=radial,
                                      highpass=highpass)
    scale = math.exp(log_s)
    dx, dy = shift_after_unscale(a, b, scale, upsample_factor=upsample_factor, window=window)
    return Registration(dx, dy, scale, rotation)


def _upsampled_correlation_peak(X: np.ndarray, u0: float, v0: float, *, upsample_factor: int,
                                span: float = 1.5) -> tuple[float, float]:
    """Sub-sample peak of the circular correlation ``c = ifft2(X)`` near ``(u0, v0)``: ``c`` evaluated on a grid
    ``1 / upsample_factor`` fine within ``±span`` by a matrix DFT (Guizar-Sicairos et al. 2008, the method of
    ``phase_cross_correlation``), restricted to that neighbourhood."""
    A, R = X.shape
    step = 1.0 / upsample_factor
    offs = np.arange(-span, span + step / 2, step)
    us, vs = u0 + offs, v0 + offs
    ka = np.fft.fftfreq(A) * A  # integer frequencies of the rows
    kr = np.fft.fftfreq(R) * R
    Eu = np.exp(2j * np.pi * np.outer(us, ka) / A)  # (nu, A)
    Ev = np.exp(2j * np.pi * np.outer(kr, vs) / R)  # (R, nv)
    c = np.real(Eu @ X @ Ev)  # (nu, nv): the correlation at the fine offsets
    i, j = np.unravel_index(int(np.argmax(c)), c.shape)
    return float(us[i]), float(vs[j])


def refine_scale(img1: Any, img2: Any, scale: float, *, search: float = 0.05, angles: int = 360,
                 radial: int | None = None, max_rotation: float = 3.0, upsample_factor: int = 20) -> float:
    """A scale estimate refined on the log-polar spectra: the correlation peak of Fourier–Mellin is looked
    for only within ``|log s' − log scale| <= search`` (and rotations within ``±max_rotation`` degrees),
    then located to ``1 / upsample_factor`` of a sample by an upsampled DFT around it (what
    ``phase_cross_correlation`` does for the whole surface). Fourier–Mellin's precision without its gross
    failures, when ``scale`` is a robust first guess (the network's)."""
    a, b = _pair(img1, img2)
    if scale <= 0 or not math.isfinite(scale):
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    if search <= 0:
        raise ValueError(f"search must be > 0, got {search}")
    lp1, k = log_polar_spectrum(a, angles=angles, radial=radial)
    lp2, _ = log_polar_spectrum(b, angles=angles, radial=radial)
    A, Rn = lp1.shape
    # circular cross-correlation c(u, v) = Σ lp1(i + u, j + v)·lp2(i, j): its peak is at v = +k log s
    X = np.fft.fft2(lp1) * np.conj(np.fft.fft2(lp2))  # (A, Rn)
    corr = np.real(np.fft.ifft2(X))
    centre = k * math.log(scale)
    cols = np.arange(math.floor(centre - k * search), math.ceil(centre + k * search) + 1)
    rmax = max(0, int(round(max_rotation * angles / 360.0)))
    rows = np.arange(-rmax, rmax + 1)
    band = corr[np.ix_(rows % A, cols % Rn)]  # (rows, cols) of the allowed shifts
    i, j = np.unravel_index(int(np.argmax(band)), band.shape)
    _, v = _upsampled_correlation_peak(X, float(rows[i]), float(cols[j]), upsample_factor=upsample_factor)
    v = float(np.clip(v, centre - k * search, centre + k * search))
    return math.exp(v / k)


def refine_direct(img1: Any, img2: Any, init: Registration, *, fit_scale: bool = True, sigma: float = 1.0,
                  iterations: int = 30, tol: float = 1e-4, max_step: float = 2.0) -> Registration:
    """Direct (pixel-domain) refinement of an estimate: Gauss–Newton on the sum of squared differences
    (Lucas & Kanade 1981; Baker & Matthews 2004, "forwards additive"), with a gain and an offset for brightness
    and contrast changes.

    Minimises ``Σ_p [img1(p) − (g · img2(W(p)) + o)]²`` over ``θ = (dx, dy, log s, g, o)`` where
    ``W(p) = s·(p − c) + c + t`` (the convention of this module) and ``p`` runs over the pixels whose ``W(p)`` lies
    inside img2 (a margin of one pixel), both images smoothed by a Gaussian of ``sigma`` px first. The Fourier
    methods are limited by their sampling (log-polar bins, the upsampled DFT's grid, the Hann window's weighting
    of the frame); this uses every overlapping pixel at its own position, so from a start within a pixel or two it
    converges to the least-squares estimate.

    Args:
        img1, img2: grayscale images ``[H, W]`` of the same size.
        init: the starting estimate (``dx, dy, scale``).
        fit_scale: ``False`` keeps ``init.scale`` fixed (only the shift, gain and offset are fitted).
        sigma: Gaussian smoothing of both images (px); widens the basin of convergence, and noise matters less.
        iterations, tol: at most this many steps; stop when a step moves the shift by < ``tol`` px and log s by
            < ``tol`` / 100.
        max_step: a result more than this many pixels (shift, or the scale's displacement at the frame's corner)
            from ``init`` is a divergence, and ``init`` is returned unchanged; so is one whose residual is not
            below ``init``'s.

    Returns:
        ``Registration(dx, dy, scale)``.
    """
    return _refine_direct(img1, img2, init, fit_scale=fit_scale, sigma=sigma, iterations=iterations, tol=tol,
                          max_step=max_step)[0]


def _refine_direct(img1: Any, img2: Any, init: Registration, *, fit_scale: bool = True, sigma: float = 1.0,
                   iterations: int = 30, tol: float = 1e-4, max_step: float = 2.0) -> tuple[Registration, float]:
    """:func:`refine_direct` and the mean squared residual of its result (inf when nothing overlaps)."""
    from scipy.ndimage import gaussian_filter, map_coordinates, spline_filter

    a, b = _pair(img1, img2)
    if not math.isfinite(init.scale) or init.scale <= 0:
        raise ValueError(f"init.scale must be a positive finite number, got {init.scale}")
    if sigma < 0 or iterations < 1 or tol <= 0 or max_step <= 0:
        raise ValueError(f"need sigma >= 0, iterations >= 1, tol > 0, max_step > 0; got {sigma}, {iterations}, "
                         f"{tol}, {max_step}")
    if sigma > 0:
        a, b = gaussian_filter(a, sigma), gaussian_filter(b, sigma)
    H, W = a.shape
    cy, cx = (H - 1) / 2, (W - 1) / 2
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    ux, uy = (xx - cx).ravel(), (yy - cy).ravel()
    av = a.ravel()
    coeffs = spline_filter(b, order=3)  # cubic B-spline coefficients: values and exact derivatives
    gy, gx = np.gradient(b)
    radius = math.hypot(cx, cy)

    def residual(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        s = math.exp(theta[2])
        sx, sy = s * ux + cx + theta[0], s * uy + cy + theta[1]
        ok = (sx >= 1) & (sx <= W - 2) & (sy >= 1) & (sy <= H - 2)
        pts = [sy[ok], sx[ok]]
        warped = map_coordinates(coeffs, pts, order=3, prefilter=False)
        r = av[ok] - (theta[3] * warped + theta[4])
        return r, ok, warped, map_coordinates(gx, pts, order=1), map_coordinates(gy, pts, order=1)

    def cost(r: np.ndarray) -> float:
        return float(np.mean(r * r)) if r.size else math.inf

    start = np.array([init.dx, init.dy, math.log(init.scale), 1.0, 0.0])
    r, ok, warped, wx, wy = residual(start)
    if r.size < 16:  # no overlap worth fitting
        return Registration(init.dx, init.dy, init.scale), math.inf
    # gain and offset at the start: the least-squares fit of img1 by img2 warped
    A0 = np.stack([warped, np.ones_like(warped)], 1)
    start[3:] = np.linalg.lstsq(A0, av[ok], rcond=None)[0]
    r, ok, warped, wx, wy = residual(start)
    start_cost = cost(r)
    theta = start.copy()
    free = [0, 1, 2, 3, 4] if fit_scale else [0, 1, 3, 4]
    for _ in range(iterations):
        s, g = math.exp(theta[2]), theta[3]
        J = np.stack([g * wx, g * wy, g * s * (wx * ux[ok] + wy * uy[ok]), warped, np.ones_like(warped)], 1)[:, free]
        step = np.linalg.lstsq(J, r, rcond=None)[0]
        theta[free] += step
        r, ok, warped, wx, wy = residual(theta)
        if r.size < 16:
            return Registration(init.dx, init.dy, init.scale), start_cost
        if math.hypot(step[0], step[1]) < tol and (not fit_scale or abs(step[2]) < tol / 100):
            break
    moved = math.hypot(theta[0] - start[0], theta[1] - start[1]) + radius * abs(math.expm1(theta[2] - start[2]))
    if not np.isfinite(theta).all() or moved > max_step or cost(r) >= start_cost:
        return Registration(init.dx, init.dy, init.scale), start_cost
    return Registration(float(theta[0]), float(theta[1]), math.exp(float(theta[2]))), cost(r)


def hybrid(img1: Any, img2: Any, *, scale: float, refine: bool = True, search: float = 0.05,
           scale_threshold: float | None = None, shift_threshold: float | None = None, direct: bool = True,
           upsample_factor: int = 20, window: bool = True) -> Registration:
    """A first scale estimate from elsewhere (the change-detection network), made precise in three steps:

    1. the scale is refined on the log-polar spectra (:func:`refine_scale`, within ``±search`` in log s;
       ``refine=False`` keeps it) and set to 1 when ``|log s| < scale_threshold`` (no scaling detected);
    2. the scale is undone and phase correlation gives the sub-pixel shift;
    3. ``direct=True``: :func:`refine_direct` refines shift and scale together on the pixels (the scale stays 1
       when step 1 found none); then the shift is set to 0 when ``|t| < shift_threshold`` (no shift detected), so
       that the estimate says what the change type from the same thresholds says.

    When the refined scale of step 1 ends at the edge of its band (the first guess was off by more than
    ``search``: the true peak lies outside), Fourier–Mellin's unrestricted scale is a second candidate through
    steps 2–3, and the candidate whose pixels agree better (lower residual in step 3) is the answer.

    Returns ``Registration(dx, dy, s)``.
    """
    a, b = _pair(img1, img2)
    s = refine_scale(a, b, scale, search=search, upsample_factor=upsample_factor) if refine else float(scale)
    scales = [s]
    if refine and direct and abs(math.log(s) - math.log(scale)) >= 0.98 * search:
        log_s, _ = _scale_rotation(a, b, upsample_factor=upsample_factor, angles=360, radial=None, highpass=True)
        scales.append(math.exp(log_s))
    best, best_cost = None, math.inf
    for s in scales:
        no_scale = scale_threshold is not None and abs(math.log(s)) < scale_threshold
        if no_scale:
            s = 1.0
        dx, dy = shift_after_unscale(a, b, s, upsample_factor=upsample_factor, window=window)
        reg, cost = Registration(dx, dy, float(s)), math.inf
        if direct:
            reg, cost = _refine_direct(a, b, reg, fit_scale=not no_scale)
            if scale_threshold is not None and abs(math.log(reg.scale)) < scale_threshold:  # the pixels undid it
                reg, cost = _refine_direct(a, b, Registration(reg.dx, reg.dy, 1.0), fit_scale=False)
        if best is None or cost < best_cost:
            best, best_cost = reg, cost
    assert best is not None
    if shift_threshold is not None and math.hypot(best.dx, best.dy) < shift_threshold:
        best = Registration(0.0, 0.0, best.scale)
    return best


def warp_back(img2: Any, reg: Registration, *, order: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``img2`` mapped back into ``img1``'s frame with the estimate ``reg``: ``out(p) = img2(s·(p − c) + c + t)``.
    Returns ``(warped float64[H, W], valid bool[H, W])`` where ``valid`` marks points inside img2's frame."""
    from scipy.ndimage import map_coordinates

    b = np.asarray(img2, dtype=np.float64)
    H, W = b.shape
    cy, cx = (H - 1) / 2, (W - 1) / 2
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    sx = reg.scale * (xx - cx) + cx + reg.dx
    sy = reg.scale * (yy - cy) + cy + reg.dy
    valid = (sx >= -0.5) & (sx <= W - 0.5) & (sy >= -0.5) & (sy <= H - 0.5)
    out = map_coordinates(b, [sy, sx], order=order, mode="nearest")
    return out, valid
