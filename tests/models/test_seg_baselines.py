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
