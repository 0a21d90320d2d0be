"""Digit canvases: labels vs placements, held-out source scans, rendering vs scikit-image, errors."""

import math

import numpy as np
import pytest
import torch
from skimage.transform import warp
from sklearn.datasets import load_digits

from vislab.data.digit_canvases import (
    LABEL_NAMES,
    MEAN,
    STD,
    DigitCanvasDataset,
    _coords,
    _draw,
    _render_arcs,
    _render_lines,
    _render_sprites,
    _upsampled_scans,
    make_digit_canvases,
    source_split,
)


def _reference_sprite(sprite: np.ndarray, center, size: float, angle: float, S: int) -> np.ndarray:
    """Float64 scikit-image rendering: bilinear warp of a R×R sprite with the documented geometry.

    The sprite fills a ``size``-pixel square centred on ``center`` (x, y), turned ``angle`` degrees
    counter-clockwise on screen; outside it the canvas is 0.
    """
    R = sprite.shape[0]
    a = math.radians(angle)
    half = size / 2

    def inverse_map(xy):  # canvas (col, row) -> sprite (col, row)
        px, py = xy[:, 0] - center[0], xy[:, 1] - center[1]
        u = (math.cos(a) * px - math.sin(a) * py) / half
        v = (math.sin(a) * px + math.cos(a) * py) / half
        return np.stack([(u + 1) * R / 2 - 0.5, (v + 1) * R / 2 - 0.5], axis=1)

    return warp(sprite.astype(np.float64), inverse_map, output_shape=(S, S), order=1, mode="constant", cval=0.0)


def _full(m: int, size: int):
    """Pixel coordinates of ``m`` whole ``size × size`` canvases."""
    return _coords(torch.zeros(m, 2, dtype=torch.int64), size)


def test_shapes_labels_and_meta_agree():
    images, labels, meta = make_digit_canvases(200, seed=0, digits_per_canvas=(1, 3))
    assert images.shape == (200, 64, 64) and images.dtype == np.uint8
    assert labels.shape == (200, 10) and labels.dtype == np.float32
    assert set(np.unique(labels)) <= {0.0, 1.0}
    _, targets = load_digits(return_X_y=True)
    counts = labels.sum(1)
    assert counts.min() == 1 and counts.max() == 3
    for lab, placed in zip(labels, meta):
        digits = [p.digit for p in placed]
        assert len(set(digits)) == len(digits)  # distinct digits per canvas
        assert set(np.flatnonzero(lab)) == set(digits)
        for p in placed:
            assert targets[p.source_index] == p.digit
            assert 14 <= p.size <= 26 and abs(p.angle) <= 45
            assert p.scale == pytest.approx(p.size / 8)
            x0, y0, x1, y1 = p.box
            assert 0 <= x0 < p.center[0] < x1 <= 64 and 0 <= y0 < p.center[1] < y1 <= 64
    # every digit appears about equally often (2 of 10 per canvas on average)
    assert np.all(np.abs(labels.mean(0) - counts.mean() / 10) < 0.08)


def test_deterministic_and_split_dependent():
    a = make_digit_canvases(20, seed=3)
    b = make_digit_canvases(20, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    assert not np.array_equal(a[0], make_digit_canvases(20, seed=4)[0])
    assert not np.array_equal(a[0], make_digit_canvases(20, seed=3, split="test")[0])


def test_source_split_is_disjoint_stratified_and_used():
    _, targets = load_digits(return_X_y=True)
    parts = {s: source_split(s) for s in ("train", "val", "test")}
    assert sum(p.size for p in parts.values()) == targets.size
    assert len(np.unique(np.concatenate(list(parts.values())))) == targets.size
    for c in range(10):
        n_c = (targets == c).sum()
        assert abs((targets[parts["test"]] == c).sum() - 0.25 * n_c) <= 1
        assert abs((targets[parts["val"]] == c).sum() - 0.15 * n_c) <= 1
    np.testing.assert_array_equal(source_split("test", split_seed=0), parts["test"])
    assert not np.array_equal(source_split("test", split_seed=1), parts["test"])
    for split in ("train", "test"):
        _, _, meta = make_digit_canvases(100, seed=0, split=split)
        used = {p.source_index for placed in meta for p in placed}
        assert used <= set(parts[split].tolist())


def test_clean_canvas_equals_reference_rendering():
    images, _, meta = make_digit_canvases(6, seed=5, digits_per_canvas=(1, 1), clutter=0.0, max_rotation=90)
    up = _upsampled_scans()[:, 0].numpy()
    for img, (p,) in zip(images, meta):
        ref = _reference_sprite(up[p.source_index], p.center, p.size, p.angle, 64)
        ref = np.round(np.clip(ref, 0, 1) * 255)
        assert np.abs(img.astype(float) - ref).max() <= 1.0
        # all ink lies inside the documented box (with the half-pixel of bilinear spill)
        ys, xs = np.nonzero(img)
        x0, y0, x1, y1 = p.box
        assert xs.min() >= x0 - 1 and xs.max() <= x1 + 1 and ys.min() >= y0 - 1 and ys.max() <= y1 + 1


@pytest.mark.parametrize("angle", [0.0, 30.0, -72.5])
def test_render_sprites_matches_skimage(angle):
    sprite = _upsampled_scans()[[7, 11]]  # (2, 1, 32, 32)
    centers = torch.tensor([[20.0, 25.5], [31.3, 17.0]])
    sizes = torch.tensor([18.0, 23.7])
    out = _render_sprites(sprite, centers, sizes, torch.full((2,), angle), *_full(2, 48))
    for k in range(2):
        ref = _reference_sprite(sprite[k, 0].numpy(), centers[k].tolist(), float(sizes[k]), angle, 48)
        np.testing.assert_allclose(out[k].numpy(), ref, atol=2e-5)


def test_rotation_is_counter_clockwise():
    sprite = _upsampled_scans()[[4]]
    c = torch.tensor([[15.5, 15.5]])  # the centre of a 32×32 canvas
    upright = _render_sprites(sprite, c, torch.tensor([20.0]), torch.tensor([0.0]), *_full(1, 32))[0]
    turned = _render_sprites(sprite, c, torch.tensor([20.0]), torch.tensor([90.0]), *_full(1, 32))[0]
    torch.testing.assert_close(turned, torch.rot90(upright, 1), atol=1e-5, rtol=0)  # rot90: anticlockwise


def test_strokes_hand_computed():
    line = _render_lines(torch.tensor([[10.0, 20.0, 30.0, 20.0]]), torch.tensor([2.0]), torch.tensor([1.0]),
                         *_full(1, 40))[0]
    assert line[20, 20] == 1.0  # on the segment: covered
    assert line[21, 20] == pytest.approx(0.5)  # 1 px away, pen half-width 1: half covered
    assert line[22, 20] == 0.0 and line[20, 33] == 0.0  # beyond the width / past the end
    assert line[20, 31] == pytest.approx(0.5)
    arc = _render_arcs(torch.tensor([[20.0, 20.0, 8.0, 0.0, math.pi]]), torch.tensor([2.0]),
                       torch.tensor([0.8]), *_full(1, 40))[0]
    assert arc[28, 20] == pytest.approx(0.8)  # angle π/2 = below the centre (image y points down)
    assert arc[12, 20] == 0.0  # angle -π/2: not on the arc
    assert arc[20, 28] == pytest.approx(0.8) and arc[20, 12] == pytest.approx(0.8)  # both ends


def test_windowed_drawing_equals_full_canvas_drawing():
    # strokes partly outside the canvas, two per canvas, drawn in small windows vs whole canvases
    g = torch.Generator().manual_seed(0)
    p = torch.rand(6, 4, generator=g) * 40 - 4  # end points in [-4, 36) on a 32×32 canvas
    p[:, 2:] = p[:, :2] + (torch.rand(6, 2, generator=g) - 0.5) * 16
    w, alpha, owner = torch.full((6,), 2.5), torch.rand(6, generator=g), torch.arange(6) // 2
    windowed, full = torch.zeros(3, 32, 32), torch.zeros(3, 32, 32)
    origin = torch.minimum(p[:, :2], p[:, 2:]).sub(3).floor().long()
    _draw(windowed, owner, origin, 8 + 6 + 1, _render_lines, p, w, alpha)
    _draw(full, owner, torch.zeros(6, 2, dtype=torch.int64), 32, _render_lines, p, w, alpha)
    assert full.sum() > 0
    torch.testing.assert_close(windowed, full)
    ref = _render_lines(p, w, alpha, *_full(6, 32)).view(3, 2, 32, 32).amax(1)
    torch.testing.assert_close(full, ref)


def test_clutter_controls_the_background():
    clean, _, meta = make_digit_canvases(30, seed=1, clutter=0.0)
    busy, _, meta_busy = make_digit_canvases(30, seed=1, clutter=1.0)

    def outside(images, meta):
        mask = np.ones(images.shape, bool)
        for i, placed in enumerate(meta):
            for p in placed:
                x0, y0, x1, y1 = p.box
                mask[i, max(0, int(y0) - 1):int(y1) + 2, max(0, int(x0) - 1):int(x1) + 2] = False
        return images[mask].astype(float)

    assert outside(clean, meta).max() == 0.0
    bg = outside(busy, meta_busy)
    assert bg.std() > 10 and (bg > 128).mean() > 0.01  # noise and bright strokes / fragments


@pytest.mark.parametrize(("max_overlap", "expect_clean"), [(0.1, True), (1.0, False)])
def test_placement_overlap(max_overlap, expect_clean):
    _, _, meta = make_digit_canvases(150, seed=2, digits_per_canvas=(3, 3), digit_size=(20, 24),
                                     max_overlap=max_overlap, clutter=0.0)
    worst = []
    for placed in meta:
        w = 0.0
        for i, p in enumerate(placed):
            for q in placed[:i]:
                ix = min(p.center[0] + p.size / 2, q.center[0] + q.size / 2) - max(p.center[0] - p.size / 2,
                                                                                   q.center[0] - q.size / 2)
                iy = min(p.center[1] + p.size / 2, q.center[1] + q.size / 2) - max(p.center[1] - p.size / 2,
                                                                                   q.center[1] - q.size / 2)
                w = max(w, max(ix, 0) * max(iy, 0) / min(p.size, q.size) ** 2)
        worst.append(w)
    frac_violating = np.mean(np.array(worst) > 0.1 + 1e-9)
    assert (frac_violating < 0.05) if expect_clean else (frac_violating > 0.3)


def test_dataset_items():
    ds = DigitCanvasDataset(12, seed=0, split="val", canvas_size=40, digit_size=(10, 18))
    assert len(ds) == 12 and ds.num_classes == 10
    assert ds.label_names == LABEL_NAMES == [str(d) for d in range(10)]
    x, y = ds[3]
    assert x.shape == (1, 40, 40) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], (torch.from_numpy(ds.images[3]).float() / 255 - MEAN) / STD)
    torch.testing.assert_close(y, torch.from_numpy(ds.labels[3]))
    rgb = DigitCanvasDataset(4, seed=0, channels=3, transform=lambda t: t * 2)
    x3, _ = rgb[0]
    assert x3.shape == (3, 64, 64)
    torch.testing.assert_close(x3[2], 2 * (torch.from_numpy(rgb.images[0]).float() / 255 - MEAN) / STD)
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert xb.shape == (5, 1, 40, 40) and yb.shape == (5, 10)
    assert "split='val'" in repr(ds)
    assert make_digit_canvases(0, seed=0)[0].shape == (0, 64, 64)


def test_errors():
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'val', 'test', 'all'\), got 'dev'"):
        make_digit_canvases(2, seed=0, split="dev")
    with pytest.raises(ValueError, match="n must be a non-negative int, got -1"):
        make_digit_canvases(-1, seed=0)
    with pytest.raises(ValueError, match=r"digits_per_canvas must be a \(min, max\) pair .* got \(3, 1\)"):
        make_digit_canvases(2, seed=0, digits_per_canvas=(3, 1))
    with pytest.raises(ValueError, match=r"at most 10 distinct digits, got \(1, 11\)"):
        make_digit_canvases(2, seed=0, digits_per_canvas=(1, 11))
    with pytest.raises(TypeError, match=r"digit_size must be a \(min, max\) pair, got 12"):
        make_digit_canvases(2, seed=0, digit_size=12)
    with pytest.raises(ValueError, match=r"must not exceed canvas_size=32, got \(10, 40\)"):
        make_digit_canvases(2, seed=0, canvas_size=32, digit_size=(10, 40))
    with pytest.raises(ValueError, match=r"clutter must lie in \[0, 1\], got 1.5"):
        make_digit_canvases(2, seed=0, clutter=1.5)
    with pytest.raises(ValueError, match=r"max_rotation must lie in \[0, 180\] degrees, got -5"):
        make_digit_canvases(2, seed=0, max_rotation=-5)
    with pytest.raises(ValueError, match=r"canvas_size must be an int >= 8, got 4"):
        make_digit_canvases(2, seed=0, canvas_size=4)
    with pytest.raises(ValueError, match=r"sum below 1, got 0.5 and 0.6"):
        source_split("train", val_fraction=0.5, test_fraction=0.6)
    with pytest.raises(ValueError, match="channels must be 1 or 3, got 2"):
        DigitCanvasDataset(2, seed=0, channels=2)
