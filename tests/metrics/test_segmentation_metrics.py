"""vislab.metrics.segmentation: IoU and Dice per image against hand counts."""

import pytest
import torch

from vislab.metrics.segmentation import dice, iou, overlap_counts


def _masks():
    pred = torch.zeros(3, 4, 5, dtype=torch.bool)
    target = torch.zeros(3, 4, 5, dtype=torch.bool)
    pred[0, 0, :4] = True  # 4 px
    target[0, 0, 2:] = True  # 3 px, 2 shared
    pred[1, 1:3, 1:3] = True  # 4 px, target empty
    # image 2: both empty
    return pred, target


def test_hand_counts():
    pred, target = _masks()
    inter, ps, gs = overlap_counts(pred, target)
    assert inter.tolist() == [2, 0, 0] and ps.tolist() == [4, 4, 0] and gs.tolist() == [3, 0, 0]
    torch.testing.assert_close(iou(pred, target), torch.tensor([2 / 5, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(dice(pred, target), torch.tensor([4 / 7, 0.0, 1.0], dtype=torch.float64))


def test_empty_vs_empty_is_one_and_perfect_is_one():
    z = torch.zeros(2, 3, 3)
    assert iou(z, z).tolist() == [1.0, 1.0] and dice(z, z).tolist() == [1.0, 1.0]
    m = torch.rand(2, 6, 6) > 0.5
    assert iou(m, m).tolist() == [1.0, 1.0]


def test_float_01_masks_and_random_vs_formula():
    g = torch.Generator().manual_seed(0)
    p = (torch.rand(5, 9, 7, generator=g) > 0.6).float()
    t = (torch.rand(5, 9, 7, generator=g) > 0.4).float()
    inter = (p * t).sum((1, 2))
    union = ((p + t) > 0).float().sum((1, 2))
    torch.testing.assert_close(iou(p, t), (inter / union).double())
    torch.testing.assert_close(dice(p, t), (2 * inter / (p.sum((1, 2)) + t.sum((1, 2)))).double())
    # dice = 2 iou / (1 + iou)
    j = iou(p, t)
    torch.testing.assert_close(dice(p, t), 2 * j / (1 + j))


def test_argument_errors():
    with pytest.raises(ValueError, match=r"pred must be Tensor\[B, H, W\]"):
        iou(torch.zeros(4, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="target must have the shape of pred"):
        dice(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5))
    with pytest.raises(ValueError, match="binary mask"):
        iou(torch.full((1, 2, 2), 0.7), torch.zeros(1, 2, 2))
