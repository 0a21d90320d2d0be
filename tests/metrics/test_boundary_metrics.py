"""vislab.metrics.boundary: NSD, HD95 and boundary IoU on shapes with values worked out by hand, equal to MONAI's
compute_surface_dice / compute_hausdorff_distance and to the boundary IoU authors' cv2 code; empty-mask
conventions."""

import math

import numpy as np
import pytest
import torch

from vislab.metrics import boundary_iou, hd95, nsd
from vislab.metrics.boundary import boundary_dilation, mask_boundary_band, mask_surface


def _square(size, r0, c0, side, h=None, w=None):
    m = torch.zeros(h or size, w or size, dtype=torch.bool)
    m[r0:r0 + side, c0:c0 + side] = True
    return m


def test_one_pixel_shift_by_hand():
    """A 10 x 10 square and the same square one column to the right: each surface has 36 pixels, 18 of them on
    the other surface (distance 0) and 18 one pixel away."""
    g = _square(40, 10, 10, 10)
    p = _square(40, 10, 11, 10)
    assert mask_surface(g.numpy()).sum() == 36
    assert nsd(p[None], g[None], tau=0).item() == 0.5
    assert nsd(p[None], g[None], tau=0.99).item() == 0.5
    assert nsd(p[None], g[None], tau=1).item() == 1.0
    assert hd95(p[None], g[None]).item() == 1.0
    assert nsd(g[None], g[None], tau=0).item() == 1.0 and hd95(g[None], g[None]).item() == 0.0


def test_hd95_percentile_by_hand():
    """G a 10 x 10 square, P the same plus one pixel 10 columns to its right: d(dP -> dG) is 0 for G's 36
    surface pixels and 10 for the lone one, so its 95th percentile interpolates between the 35th and 36th
    order statistics (0 and 0): 0, and the Hausdorff distance (percentile 100) is 10."""
    g = _square(40, 10, 10, 10)
    p = g.clone()
    p[15, 29] = True
    assert hd95(p[None], g[None]).item() == 0.0
    assert hd95(p[None], g[None], percentile=100).item() == 10.0
    # 19 surface pixels at 0 and one at 10 (a 1 x 19 bar): q95 = 0 + 0.05 * 19 * (10 - 0) / 1 = ... linear: 9.5
    bar = torch.zeros(40, 40, dtype=torch.bool)
    bar[5, 0:19] = True
    bar2 = bar.clone()
    bar2[5, 28] = True
    assert hd95(bar2[None], bar[None]).item() == pytest.approx(np.percentile([0.0] * 19 + [10.0], 95))
    assert hd95(bar2[None], bar[None]).item() == pytest.approx(0.5)


def test_boundary_iou_by_hand():
    """d = 2: a 20 x 20 square's band is 400 - 16^2 = 144 pixels; an 18 x 18 square inside it (one pixel in) has
    a band of 324 - 14^2 = 128, of which its outer ring (68 pixels) lies in the big band: 68 / (144 + 128 - 68)."""
    g = _square(100, 10, 10, 20)
    p = _square(100, 11, 11, 18)
    assert mask_boundary_band(g.numpy(), 2).sum() == 144 and mask_boundary_band(p.numpy(), 2).sum() == 128
    assert boundary_iou(p[None], g[None], dilation=2).item() == pytest.approx(68 / 204)
    # the 16 x 16 square two pixels in shares no band pixel
    assert boundary_iou(_square(100, 12, 12, 16)[None], g[None], dilation=2).item() == 0.0
    # 2 % of the 100 x 100 diagonal (141.4) is 2.83 -> d = 3
    assert boundary_dilation((100, 100)) == 3 and boundary_dilation((10, 10)) == 1
    # the image border is a contour: a full mask's band is its outer ring
    full = torch.ones(1, 10, 10, dtype=torch.bool)
    assert mask_boundary_band(full[0].numpy(), 1).sum() == 36
    assert boundary_iou(full, full).item() == 1.0


def _official_boundary_iou(gt, dt, dilation_ratio=0.02):
    """The authors' code (boundary-iou-api, boundary_iou/utils/boundary_utils.py), cv2 erosion."""
    import cv2

    def mask_to_boundary(mask):
        h, w = mask.shape
        dilation = max(1, int(round(dilation_ratio * np.sqrt(h ** 2 + w ** 2))))
        new_mask = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
        new_mask_erode = cv2.erode(new_mask, np.ones((3, 3), dtype=np.uint8), iterations=dilation)
        return mask - new_mask_erode[1:h + 1, 1:w + 1]

    gb, db = mask_to_boundary(gt.astype(np.uint8)), mask_to_boundary(dt.astype(np.uint8))
    return ((gb * db) > 0).sum() / ((gb + db) > 0).sum()


def _blobs(n, h, w, seed):
    """Random smooth shapes, some touching the image border."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        f = gaussian_filter(rng.normal(size=(h, w)), sigma=rng.uniform(2, 5))
        out.append(f > np.quantile(f, rng.uniform(0.5, 0.85)))
    return torch.from_numpy(np.stack(out))


def test_boundary_iou_equals_the_authors_code():
    g, p = _blobs(6, 48, 64, 0), _blobs(6, 48, 64, 1)
    for ratio in (0.02, 0.05):
        ours = boundary_iou(p, g, dilation_ratio=ratio)
        ref = [_official_boundary_iou(a.numpy(), b.numpy(), ratio) for a, b in zip(g, p)]
        np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-12)


def _onehot(m):
    m = m.float()[:, None]
    return torch.cat([1 - m, m], dim=1)  # (B, 2, H, W)


@pytest.mark.parametrize("seed", [0, 1])
def test_nsd_and_hd95_equal_monai(seed):
    monai_metrics = pytest.importorskip("monai.metrics")
    g = _blobs(8, 40, 56, seed)
    p = _blobs(8, 40, 56, seed + 10)
    p[0] = g[0]  # identical
    p[1] = torch.roll(g[1], 2, dims=1)  # shifted
    for tau in (0.0, 1.0, 2.0, 3.5):
        ref = monai_metrics.compute_surface_dice(_onehot(p), _onehot(g), class_thresholds=[tau],
                                                 include_background=False)[:, 0]
        np.testing.assert_allclose(nsd(p, g, tau=tau).numpy(), ref.double().numpy(), rtol=0, atol=1e-6)
    ref = monai_metrics.compute_hausdorff_distance(_onehot(p), _onehot(g), include_background=False,
                                                   percentile=95)[:, 0]
    np.testing.assert_allclose(hd95(p, g).numpy(), ref.double().numpy(), rtol=1e-6, atol=1e-5)
    ref = monai_metrics.compute_hausdorff_distance(_onehot(p), _onehot(g), include_background=False)[:, 0]
    np.testing.assert_allclose(hd95(p, g, percentile=100).numpy(), ref.double().numpy(), rtol=1e-6, atol=1e-5)


def test_empty_mask_conventions_and_where_monai_differs():
    monai_metrics = pytest.importorskip("monai.metrics")
    g = torch.zeros(3, 20, 20, dtype=torch.bool)
    p = torch.zeros(3, 20, 20, dtype=torch.bool)
    g[1, 5:10, 5:10] = True  # empty prediction, object present
    p[2, 5:10, 5:10] = True  # object predicted where there is none
    assert nsd(p, g).tolist() == [1.0, 0.0, 0.0]
    assert boundary_iou(p, g).tolist() == [1.0, 0.0, 0.0]
    assert hd95(p, g).tolist() == [0.0, math.inf, math.inf]
    with pytest.warns(UserWarning):
        m_nsd = monai_metrics.compute_surface_dice(_onehot(p), _onehot(g), class_thresholds=[2.0])[:, 0]
        m_hd95 = monai_metrics.compute_hausdorff_distance(_onehot(p), _onehot(g), percentile=95)[:, 0]
        m_hd = monai_metrics.compute_hausdorff_distance(_onehot(p), _onehot(g))[:, 0]
    assert math.isnan(m_nsd[0]) and m_nsd[1:].tolist() == [0.0, 0.0]  # MONAI: NaN where both are empty
    assert math.isnan(m_hd[0]) and m_hd[1:].tolist() == [math.inf, math.inf]
    assert all(math.isnan(v) for v in m_hd95)  # MONAI's HD95 with one empty mask: the quantile of infinities
    assert hd95(p, g, percentile=100).tolist() == [0.0, math.inf, math.inf]


def test_bad_input():
    a = torch.zeros(2, 8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"pred must be Tensor\[B, H, W\]"):
        nsd(a[0], a[0])
    with pytest.raises(ValueError, match="binary mask"):
        hd95(torch.full((2, 8, 8), 0.5), a)
    with pytest.raises(ValueError, match="tau must be"):
        nsd(a, a, tau=-1)
    with pytest.raises(ValueError, match="percentile must be"):
        hd95(a, a, percentile=101)
    with pytest.raises(ValueError, match="dilation_ratio must be > 0"):
        boundary_iou(a, a, dilation_ratio=0)
