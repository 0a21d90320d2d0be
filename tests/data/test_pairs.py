"""Pair generator (``vislab.data.pairs``): the convention on a synthetic image with known points, determinism,
the split by source image, no borders, magnitudes away from zero, folder sources and their errors."""

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, map_coordinates

from vislab.data.pairs import (
    CHANGE_TYPES,
    ChangePairs,
    PairConfig,
    Source,
    _gaussian_blur,
    folder_sources,
    make_pair_splits,
    make_pairs,
    photometric,
    render_pair,
    sample_changes,
    split_sources,
)
from vislab.errors import UserError

CLEAN = {"blur": 0.0, "contrast": 0.0, "brightness": 0.0, "noise": 0.0}


def _blobs(points: list[tuple[float, float]], shape: tuple[int, int] = (300, 300), sigma: float = 2.0) -> np.ndarray:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    img = np.zeros(shape)
    for x, y in points:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return img.astype(np.float32)


def _centroid(img: np.ndarray, around: tuple[float, float], r: float = 9.0) -> tuple[float, float]:
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]].astype(np.float64)
    w = np.where(np.hypot(xx - around[0], yy - around[1]) < r, img, 0.0)
    return float((w * xx).sum() / w.sum()), float((w * yy).sum() / w.sum())


def _texture(seed: int, shape: tuple[int, int] = (400, 400), sigma: float = 3.0) -> np.ndarray:
    """A smooth random texture in [0.2, 0.8] (nothing a photo would be)."""
    t = gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma)
    t = (t - t.min()) / (t.max() - t.min())
    return (0.2 + 0.6 * t).astype(np.float32)


@pytest.mark.parametrize("dx, dy, s", [(0.0, 0.0, 1.0), (5.25, -3.5, 1.0), (0.0, 0.0, 1.25), (-7.0, 4.4, 0.8),
                                       (3.3, 6.1, 1.12)])
def test_render_pair_follows_the_convention_on_known_points(dx, dy, s):
    # blobs at known source points; the crop centre pixel c of img1 sits at source point (150.3, 149.6)
    size, centre = 64, (150.3, 149.6)
    c = (size - 1) / 2
    offsets = [(0.0, 0.0), (14.0, -9.0), (-12.5, 11.0)]  # positions relative to c, inside img1
    src = _blobs([(centre[0] + ox, centre[1] + oy) for ox, oy in offsets])
    img1, img2 = render_pair(src, centre, dx=dx, dy=dy, scale=s, size=size)
    for ox, oy in offsets:
        p = (c + ox, c + oy)
        q = (s * (p[0] - c) + c + dx, s * (p[1] - c) + c + dy)  # where the convention puts p in img2
        got1 = _centroid(img1, p)
        got2 = _centroid(img2, q, r=9.0 * s)
        assert got1 == pytest.approx(p, abs=0.03)
        assert got2 == pytest.approx(q, abs=0.05), (p, q, got2)


def test_render_pair_refuses_a_pair_that_leaves_the_source():
    with pytest.raises(ValueError, match="needs source pixels within"):
        render_pair(np.zeros((80, 80), np.float32), (40.0, 40.0), dx=0, dy=0, scale=1.0, size=76)
    render_pair(np.zeros((80, 80), np.float32), (40.0, 40.0), dx=0, dy=0, scale=1.0, size=64)  # fits
    with pytest.raises(ValueError, match="grayscale"):
        render_pair(np.zeros((80, 80, 3), np.float32), (40.0, 40.0), dx=0, dy=0, scale=1.0, size=8)


def test_make_pairs_img2_is_img1_warped_by_the_target():
    """The batched generator renders img2 as the convention says: compare with img1 resampled by
    scipy's cubic spline at (q − c − t)/s + c, in the interior (noise off)."""
    cfg = PairConfig(size=64, max_shift=8, min_shift=2, **CLEAN)
    p = make_pairs([Source("texture", _texture(0))], 24, seed=3, cfg=cfg)
    c = (cfg.size - 1) / 2
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float64)
    for i in range(len(p)):
        s = math.exp(float(p.log_s[i]))
        px = (xx - c - float(p.dx[i])) / s + c
        py = (yy - c - float(p.dy[i])) / s + c
        inside = (px > 3) & (px < 60) & (py > 3) & (py < 60)
        ref = map_coordinates(p.images[i, 0].double().numpy(), [py, px], order=3)
        err = np.abs(ref - p.images[i, 1].numpy())[inside]
        assert err.max() < 0.02, (i, CHANGE_TYPES[int(p.type[i])], err.max())


def test_deterministic_per_seed():
    cfg = PairConfig(size=64, max_shift=8, min_shift=2)
    src = [Source("a", _texture(1)), Source("b", _texture(2))]
    a = make_pairs(src, 12, seed=5, cfg=cfg)
    b = make_pairs(src, 12, seed=5, cfg=cfg)
    c = make_pairs(src, 12, seed=6, cfg=cfg)
    assert torch.equal(a.images, b.images) and torch.equal(a.dx, b.dx) and torch.equal(a.type, b.type)
    assert not torch.equal(a.images, c.images)
    # the split name is part of the stream: train and test pairs of one seed differ
    t = make_pairs(src, 12, seed=5, cfg=cfg, split="test")
    assert not torch.equal(a.images, t.images)


def test_split_by_source_image():
    for n in (3, 5, 16, 40):
        idx = split_sources(n, seed=0)
        parts = [set(idx[k]) for k in ("train", "val", "test")]
        assert all(parts), (n, idx)
        assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2]) and parts[1].isdisjoint(parts[2])
        assert set().union(*parts) == set(range(n))
    assert split_sources(16, seed=0) == split_sources(16, seed=0) != split_sources(16, seed=1)
    with pytest.raises(ValueError, match="at least 3 sources"):
        split_sources(2, seed=0)
    srcs = [Source(f"img{i}", _texture(i, shape=(200, 200))) for i in range(6)]
    ds, names = make_pair_splits(srcs, sizes={"train": 8, "val": 4, "test": 4}, seed=0,
                                 cfg=PairConfig(size=64, max_shift=8, min_shift=2))
    assert set(names["train"]).isdisjoint(names["test"]) and set(names["val"]).isdisjoint(names["test"])
    for split, d in ds.items():
        used = {d.pairs.source_names[i] for i in d.pairs.source.tolist()}
        assert used <= set(names[split]), split


def test_no_borders_even_at_the_extremes():
    """A source whose values are all >= 0.2: a padded (black) border anywhere would show as values near 0."""
    cfg = PairConfig(size=64, max_shift=16, min_shift=14, max_scale=1.5, min_scale=1.45, zooms=(1.0,), **CLEAN)
    src = _texture(4, shape=(cfg.window + 2, cfg.window + 2))  # the smallest source a pair can use
    p = make_pairs([Source("tight", src)], 40, seed=0, cfg=cfg)
    assert (p.type > 0).sum() >= 30
    assert float(p.images.min()) > 0.15 and float(p.images.max()) < 0.85
    # a source smaller than what a pair needs is enlarged, never padded
    small = _texture(5, shape=(70, 90))
    q = make_pairs([Source("small", small)], 8, seed=0, cfg=cfg)
    assert float(q.images.min()) > 0.15


def test_magnitudes_are_away_from_zero_and_types_balanced():
    cfg = PairConfig(size=128, max_shift=16, min_shift=4, max_scale=1.3, min_scale=1.08)
    ch = sample_changes(4000, np.random.default_rng(0), cfg)
    t = ch["type"]
    assert np.bincount(t, minlength=4).tolist() == [1000] * 4
    mag = np.hypot(ch["dx"], ch["dy"])
    shifted, scaled = np.isin(t, (1, 3)), np.isin(t, (2, 3))
    assert (mag[shifted] >= 4).all() and (mag[~shifted] == 0).all()
    assert (np.abs(ch["dx"]) <= 16).all() and (np.abs(ch["dy"]) <= 16).all()
    ls = np.abs(ch["log_s"])
    assert (ls[scaled] >= math.log(1.08) - 1e-12).all() and (ls[scaled] <= math.log(1.3) + 1e-12).all()
    assert (ls[~scaled] == 0).all()
    assert 0.4 < (ch["log_s"][scaled] > 0).mean() < 0.6  # both enlargements and reductions


def test_photometric_noise_and_blur():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 32, 32)
    torch.testing.assert_close(photometric(x, PairConfig(**CLEAN), gen), x, rtol=0, atol=1e-6)  # float rounding
    y = photometric(x, PairConfig(), gen)
    assert y.shape == x.shape and not torch.equal(x, y) and float(y.min()) >= 0 and float(y.max()) <= 1
    # the matrix blur equals a reflect-padded separable Gaussian convolution
    import torch.nn.functional as F

    sig = torch.tensor([0.0, 0.5, 0.8, 1.2, 0.3, 1.0])
    out = _gaussian_blur(x, sig)
    r = 4
    for i in range(6):
        t = torch.arange(-r, r + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (t / max(float(sig[i]), 1e-3)) ** 2)
        k = k / k.sum()
        img = F.pad(x[i][None, None], (r, r, r, r), mode="reflect")
        ref = F.conv2d(F.conv2d(img, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))[0, 0]
        assert torch.allclose(out[i], ref, atol=1e-5), i


def test_dataset_items_and_targets():
    cfg = PairConfig(size=64, max_shift=8, min_shift=2)
    ds = ChangePairs(make_pairs([Source("t", _texture(7))], 10, seed=0, cfg=cfg))
    x, y = ds[3]
    assert x.shape == (2, 64, 64) and x.dtype == torch.float32 and y.shape == (4,)
    t = ds.target(3)
    assert set(t) == {"dx", "dy", "log_s", "type", "id"} and t["id"] == 3
    assert (t["dx"], t["dy"], t["log_s"], t["type"]) == pytest.approx((float(y[0]), float(y[1]), float(y[2]),
                                                                         int(y[3])))
    assert len(ds.subset(4)) == 4 and ds.subset(None) is ds


@pytest.mark.parametrize("kw, match", [
    ({"min_shift": 9.0}, "min_shift < max_shift"),
    ({"max_shift": 20.0}, "max_shift must be <= size / 4"),
    ({"max_scale": 2.5}, "max_scale <= 2"),
    ({"min_scale": 1.0}, "1 < min_scale"),
    ({"contrast": 1.0}, "contrast must be < 1"),
    ({"zooms": ()}, "zooms must be positive"),
])
def test_pair_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        PairConfig(**{"size": 64, "max_shift": 8.0, "min_shift": 2.0, **kw}).check()


def test_folder_sources(tmp_path):
    from PIL import Image

    with pytest.raises(UserError, match="does not exist"):
        folder_sources(tmp_path / "missing")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        folder_sources(tmp_path / "a.txt")
    for i in range(2):
        Image.fromarray((_texture(i, (120, 150)) * 255).astype(np.uint8)).save(tmp_path / f"t{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError, match="holds 2 readable image"):
        folder_sources(tmp_path)
    sub = tmp_path / "sub"
    sub.mkdir()
    Image.fromarray((_texture(9, (130, 100, 3)) * 255).astype(np.uint8)).save(sub / "rgb.png")
    sources, skipped = folder_sources(tmp_path)
    assert [s.name for s in sources] == ["sub/rgb.png", "t0.png", "t1.png"]
    assert skipped and skipped[0][0] == "broken.jpg"
    assert sources[0].image.shape == (130, 100) and sources[0].image.dtype == np.float32
    assert 0 <= sources[0].image.min() and sources[0].image.max() <= 1


def test_scan_folder_sources_before_the_run(tmp_path):
    from PIL import Image

    from vislab.data.pairs import scan_folder_sources

    with pytest.raises(UserError, match="does not exist"):
        scan_folder_sources(tmp_path / "missing")
    for i in range(2):
        Image.fromarray((_texture(i, (120, 150)) * 255).astype(np.uint8)).save(tmp_path / f"t{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"holds 2 readable image.*1 file\(s\) do not decode, e.g. cannot read image "
                                        r".*broken.jpg") as err:
        scan_folder_sources(tmp_path)
    assert "\n" not in str(err.value)
    Image.fromarray((_texture(5, (120, 150)) * 255).astype(np.uint8)).save(tmp_path / "t5.png")
    assert [p for p, _ in scan_folder_sources(tmp_path)] == ["broken.jpg"]
