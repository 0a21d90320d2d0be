"""The box and GrabCut baselines of sam-finetune (vislab.models.seg_baselines)."""

import numpy as np
import pytest
import torch

from vislab.metrics.segmentation import iou
from vislab.models.seg_baselines import box_masks, box_pixel_rect, grabcut_masks


def test_box_masks_pixel_centres():
    m = box_masks(torch.tensor([[2.0, 1.0, 7.0, 4.0], [2.4, 1.6, 6.6, 3.4], [0, 0, 0, 0]]), (6, 8))
    assert m.shape == (3, 6, 8) and m.dtype == torch.bool
    expect = torch.zeros(6, 8, dtype=torch.bool)
    expect[1:4, 2:7] = True
    assert torch.equal(m[0], expect)  # a tight continuous box covers exactly its pixels
    assert torch.equal(m[1], _rows(1.6, 3.4)) and int(m[1].sum()) == 5  # row 2, columns 2..6
    assert not m[2].any()
    assert box_pixel_rect((2.0, 1.0, 7.0, 4.0), (6, 8)) == (2, 1, 5, 3)
    with pytest.raises(ValueError, match=r"boxes must be Tensor\[N, 4\]"):
        box_masks(torch.zeros(4), (6, 8))


def _rows(y0: float, y1: float) -> torch.Tensor:
    """Pixels with centres in [2.4, 6.6] x [y0, y1] of a 6 x 8 image (columns 2..6, rows whose centre is inside)."""
    out = torch.zeros(6, 8, dtype=torch.bool)
    for r in range(6):
        if y0 <= r + 0.5 <= y1:
            out[r, 2:7] = True
    return out


def _scene():
    rng = np.random.default_rng(0)
    img = (rng.normal(60, 10, (64, 64, 3))).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:64, :64]
    disk = (yy - 30) ** 2 + (xx - 34) ** 2 <= 14 ** 2
    img[disk] = (rng.normal(200, 10, (int(disk.sum()), 3))).clip(0, 255).astype(np.uint8)
    return img, torch.from_numpy(disk)


def test_grabcut_finds_a_distinct_object_and_is_seeded():
    img, disk = _scene()
    box = torch.tensor([[17.0, 13.0, 52.0, 48.0]])
    masks, failed = grabcut_masks(torch.from_numpy(img).permute(2, 0, 1), box, iterations=3, seed=0)
    assert failed == [] and masks.shape == (1, 64, 64)
    assert iou(masks, disk[None]).item() > 0.9 > iou(box_masks(box, (64, 64)), disk[None]).item()
    again, _ = grabcut_masks(img, box, iterations=3, seed=0)  # numpy HxWx3 works too; same seed, same result
    assert torch.equal(masks, again)


def test_grabcut_degenerate_boxes_and_errors():
    img, _ = _scene()
    masks, failed = grabcut_masks(img, torch.tensor([[0.0, 0.0, 64.0, 64.0], [5.0, 5.0, 5.2, 5.2]]))
    assert failed == [0, 1] and masks[0].all()
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        grabcut_masks(img, torch.zeros(1, 4), iterations=0)
    with pytest.raises(ValueError, match=r"uint8 Tensor\[3, H, W\]"):
        grabcut_masks(torch.zeros(3, 8, 8), torch.zeros(1, 4))


# ---------------------------------------------------------------------------------------------
# the click-seeded baseline
# ---------------------------------------------------------------------------------------------


def _click_scene(shape, seed=0, size=64):
    """A textured grey background with a brighter, differently textured object: a disk or a ring."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(yy - size / 2 + 3, xx - size / 2 + 5)
    mask = (r <= 18) if shape == "disk" else ((r >= 9) & (r <= 20))
    from scipy.ndimage import gaussian_filter

    def texture(mean):  # smooth noise, std about 10 grey levels, like a photo's texture
        return mean + 30 * gaussian_filter(rng.normal(size=(size, size, 3)), sigma=(1.5, 1.5, 0))

    img = texture(90)
    img[mask] = (texture(170) * np.array([1.0, 0.8, 0.6]))[mask]
    return img.clip(0, 255).astype(np.uint8), mask


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("method", ["random_walker", "watershed"])
def test_one_click_recovers_a_disk(method):
    from vislab.models.seg_baselines import click_seeded_mask

    img, mask = _click_scene("disk")
    r, c = np.argwhere(mask).mean(0).round().astype(int)
    out = click_seeded_mask(img, np.array([[c + 0.5, r + 0.5]]), np.array([1]), method=method)
    assert _iou(out, mask) > 0.9, _iou(out, mask)


def test_a_negative_click_opens_the_ring_and_the_protocol_gets_there():
    from vislab.models.sam_clicks import evaluate_clicks
    from vislab.models.seg_baselines import ClickSeededSegmenter, click_seeded_mask

    img, ring = _click_scene("ring", seed=1)
    body = np.argwhere(ring)[0]  # the first ring pixel in raster order (its top), pushed into the body
    pos = np.array([[body[1] + 0.5, body[0] + 4.5]])
    only_pos = click_seeded_mask(img, pos, np.array([1]))
    hole_centre = np.array([[32 - 5 + 0.5, 32 - 3 + 0.5]])
    both = click_seeded_mask(img, np.concatenate([pos, hole_centre]), np.array([1, 0]))
    assert only_pos[29, 27] and not both[29, 27]  # the hole: filled from one click, opened by the negative one
    assert _iou(both, ring) > 0.9 and _iou(both, ring) > _iou(only_pos, ring)
    ev = evaluate_clicks(ClickSeededSegmenter(), [img], [ring], n_clicks=3, thresholds=(0.9,))
    assert ev.iou[0, -1] > 0.9 and ev.noc[0.9] <= 3 and ev.nof[0.9] == 0
    assert ev.runs[0].clicks[1][2] == 0  # the second click is a negative one, in the hole


def test_click_segmenter_box_goes_to_grabcut_and_errors():
    from vislab.models.seg_baselines import ClickSeededSegmenter, click_seeded_mask, click_seeds

    img, mask = _click_scene("disk", seed=2)
    seg = ClickSeededSegmenter()
    with pytest.raises(RuntimeError, match="set_image"):
        seg.predict(box=np.array([1, 1, 5, 5]))
    seg.set_image(torch.from_numpy(img).permute(2, 0, 1))
    box = np.array([8.0, 10.0, 50.0, 52.0])
    m, q, low = seg.predict(box=box)
    ref, _ = grabcut_masks(img, torch.tensor(box, dtype=torch.float32)[None])
    assert m.shape == (1, 64, 64) and np.isnan(q).all() and low is None
    np.testing.assert_array_equal(m[0], ref[0].numpy())
    # box + click: outside the box is background
    seeds = click_seeds((64, 64), np.array([[30.5, 30.5]]), np.array([1]), box=box, seed_radius=1)
    assert (seeds[:, :8] == 2).all() and seeds[30, 30] == 1 and seeds[30, 20] == 0
    m2, _, _ = seg.predict(point_coords=np.array([[29.5, 31.5]]), point_labels=np.array([1]), box=box)
    assert not m2[0][:, :8].any() and _iou(m2[0], mask) > 0.85
    with pytest.raises(ValueError, match="at least one positive click"):
        click_seeded_mask(img, np.array([[3.5, 3.5]]), np.array([0]))
    # box + only negative clicks (box + clicks when the box's mask spills over): GrabCut from the box with the
    # negative disk as sure background, so the clicked pixels leave the mask and the rest stays GrabCut's
    neg = np.array([[12.5, 14.5]])
    m3, q3, _ = seg.predict(point_coords=neg, point_labels=np.array([0]), box=box)
    assert m3.shape == (1, 64, 64) and np.isnan(q3).all()
    assert not m3[0][14, 12] and not m3[0][:, :8].any() and _iou(m3[0], mask) > 0.8
    with pytest.raises(ValueError, match="method must be one of random_walker, watershed"):
        ClickSeededSegmenter(method="graphcut")
    with pytest.raises(ValueError, match="labels must be"):
        click_seeded_mask(img, np.array([[3.5, 3.5]]), np.array([3]))
