"""label_anchors, sample_labels and the RoI targets against torchvision's Matcher, sampler and RoIHeads."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher
from torchvision.models.detection.roi_heads import RoIHeads as TVRoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork as TVRPN

from vislab.models.detection import assign_roi_targets, grid_anchors, label_anchors, sample_labels, sample_rois
from vislab.ops.boxes import box_iou, encode_boxes


def _gt(n: int, size=(96, 128), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    H, W = size
    xy = torch.rand(n, 2, generator=g) * torch.tensor([W - 10.0, H - 10.0])
    wh = 4 + torch.rand(n, 2, generator=g) * 60
    b = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([float(W), float(H)]))], 1)
    if n >= 2:
        b[0] = torch.tensor([0.0, 0.0, 30.0, 25.0])  # at the border
        b[1] = torch.tensor([W - 40.0, H - 20.0, float(W), float(H)])
    return b


def _torchvision_rpn_labels(anchors, gt, fg, bg):
    rpn = TVRPN.__new__(TVRPN)  # only the attributes assign_targets_to_anchors reads
    torch.nn.Module.__init__(rpn)
    rpn.box_similarity = __import__("torchvision").ops.box_iou
    rpn.proposal_matcher = Matcher(fg, bg, allow_low_quality_matches=True)
    labels, matched_boxes = rpn.assign_targets_to_anchors([anchors], [{"boxes": gt}])
    return labels[0], matched_boxes[0]


@pytest.mark.parametrize("n_gt, fg, bg, sizes", [
    (3, 0.7, 0.3, (16, 32, 64)),
    (7, 0.7, 0.3, (24, 48, 96)),
    (5, 0.6, 0.4, (20, 40)),
    (12, 0.5, 0.5, (32,)),  # no ignored band
    (1, 0.8, 0.1, (8, 16, 32, 64)),
])
def test_label_anchors_equals_torchvision_matcher(n_gt, fg, bg, sizes):
    anchors = grid_anchors((6, 8), 16, sizes, (0.5, 1.0, 2.0))
    gt = _gt(n_gt, seed=n_gt)
    labels, matched = label_anchors(anchors, gt, fg, bg)
    ref_labels, ref_boxes = _torchvision_rpn_labels(anchors, gt, fg, bg)
    assert labels.dtype == torch.int64 and matched.dtype == torch.int64
    assert torch.equal(labels.float(), ref_labels)
    pos = labels == 1
    assert torch.equal(gt[matched[pos]], ref_boxes[pos])
    assert (matched[~pos] == -1).all()
    # the paper's rule: every gt box has at least one positive anchor, its best one
    best = box_iou(gt, anchors).argmax(dim=1)
    assert (labels[best] == 1).all()


def test_label_anchors_ties_all_positive():
    # two identical anchors share the best IoU with the gt box: both positive (torchvision includes ties)
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    gt = torch.tensor([[0.0, 0.0, 30.0, 30.0]])  # IoU 1/9 < 0.3 with both
    labels, matched = label_anchors(anchors, gt)
    assert labels.tolist() == [1, 1, 0]
    assert matched.tolist() == [0, 0, -1]
    ref, _ = _torchvision_rpn_labels(anchors, gt, 0.7, 0.3)
    assert torch.equal(labels.float(), ref)


def test_label_anchors_empty_image_is_background():
    anchors = grid_anchors((3, 4), 16, (32,), (1.0,))
    labels, matched = label_anchors(anchors, torch.zeros(0, 4))
    assert (labels == 0).all() and (matched == -1).all() and labels.shape == (12,)
    ref, _ = _torchvision_rpn_labels(anchors, torch.zeros(0, 4), 0.7, 0.3)
    assert torch.equal(labels.float(), ref)


@pytest.mark.parametrize("n_pos, n_neg, batch, fraction", [
    (500, 5000, 256, 0.5),  # plenty of both: 128 + 128
    (7, 5000, 256, 0.5),  # few positives: negatives fill the batch
    (300, 40, 256, 0.5),  # few negatives
    (60, 900, 128, 0.25),  # the RoI setting: 32 fg + 96 bg
    (0, 100, 64, 0.25),  # no positives at all
])
def test_sample_labels_counts_and_torchvision_draws(n_pos, n_neg, batch, fraction):
    g = torch.Generator().manual_seed(n_pos + n_neg)
    labels = torch.cat([torch.randint(1, 4, (n_pos,), generator=g), torch.zeros(n_neg, dtype=torch.int64),
                        torch.full((333,), -1)])
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    torch.manual_seed(9)
    pos, neg = sample_labels(labels, batch, fraction)
    expect_pos = min(n_pos, int(batch * fraction))
    assert int(pos.sum()) == expect_pos
    assert int(neg.sum()) == min(n_neg, batch - expect_pos)
    assert not (pos & neg).any() and (labels[pos] >= 1).all() and (labels[neg] == 0).all()
    torch.manual_seed(9)
    ref_pos, ref_neg = BalancedPositiveNegativeSampler(batch, fraction)([labels])
    assert torch.equal(pos, ref_pos[0].bool()) and torch.equal(neg, ref_neg[0].bool())


def test_sample_labels_generator_leaves_global_state():
    labels = torch.cat([torch.ones(300, dtype=torch.int64), torch.zeros(3000, dtype=torch.int64)])
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = sample_labels(labels, 256, 0.5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.get_rng_state(), before)
    b = sample_labels(labels, 256, 0.5, generator=torch.Generator().manual_seed(4))
    c = sample_labels(labels, 256, 0.5, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def _tv_roi_heads(fg=0.5, bg=0.5, batch=128, fraction=0.25):
    return TVRoIHeads(None, None, None, fg, bg, batch, fraction, None, 0.05, 0.5, 100)


@pytest.mark.parametrize("n_gt, fg, bg, batch, fraction", [
    (4, 0.5, 0.5, 128, 0.25),
    (9, 0.6, 0.3, 64, 0.5),  # an ignored band
    (0, 0.5, 0.5, 128, 0.25),  # an image without boxes
])
def test_sample_rois_equals_torchvision_select_training_samples(n_gt, fg, bg, batch, fraction):
    g = torch.Generator().manual_seed(n_gt)
    gt = _gt(n_gt, seed=20 + n_gt) if n_gt else torch.zeros(0, 4)
    gt_labels = torch.randint(1, 6, (n_gt,), generator=g)
    # proposals: jittered gt boxes (foreground) and random boxes (background)
    jitter = gt.repeat(20, 1) + torch.randn(20 * n_gt, 4, generator=g) * 6 if n_gt else torch.zeros(0, 4)
    rand = _gt(400, seed=30)
    proposals = torch.cat([jitter, rand])
    proposals[:, 2:] = torch.maximum(proposals[:, 2:], proposals[:, :2] + 1)
    torch.manual_seed(3)
    ours = sample_rois(proposals, gt, gt_labels, fg_iou=fg, bg_iou=bg, batch_size_per_image=batch,
                       positive_fraction=fraction)
    torch.manual_seed(3)
    rois, _, labels, targets = _tv_roi_heads(fg, bg, batch, fraction).select_training_samples(
        [proposals], [{"boxes": gt, "labels": gt_labels}])
    assert torch.equal(ours["rois"], rois[0])
    assert torch.equal(ours["labels"], labels[0])
    fgm = ours["labels"] > 0
    assert torch.equal(ours["regression_targets"][fgm], targets[0][fgm])
    assert int(fgm.sum()) <= int(batch * fraction) and len(ours["rois"]) <= batch
    if n_gt:
        assert fgm.any() and ours["is_gt"].any()
        iou = box_iou(ours["rois"], gt).max(dim=1).values
        assert (iou[fgm] >= fg).all() and (iou[ours["labels"] == 0] < bg).all()
        w = (10.0, 10.0, 5.0, 5.0)
        expected = encode_boxes(gt[ours["matched"][fgm]], ours["rois"][fgm], w)
        assert torch.equal(ours["regression_targets"][fgm], expected)
    else:
        assert (ours["labels"] == 0).all()


def test_assign_roi_targets_labels():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]])
    rois = torch.tensor([[0.0, 0.0, 10.0, 10.0], [21.0, 21.0, 40.0, 40.0], [0.0, 0.0, 10.0, 16.0],
                         [60.0, 60.0, 70.0, 70.0]])
    labels, matched = assign_roi_targets(rois, gt, torch.tensor([3, 7]), fg_iou=0.7, bg_iou=0.3)
    assert labels.tolist() == [3, 7, -1, 0]  # IoU 1, 0.90, 0.625 (ignored), 0
    assert matched[:2].tolist() == [0, 1]


def test_argument_errors():
    a = grid_anchors((2, 2), 16, (32,), (1.0,))
    with pytest.raises(ValueError, match="need 0 <= bg_iou <= fg_iou <= 1"):
        label_anchors(a, a, 0.3, 0.7)
    with pytest.raises(ValueError, match=r"gt_boxes must be Tensor\[N, 4\], got \(3,\)"):
        label_anchors(a, torch.zeros(3))
    with pytest.raises(ValueError, match="positive_fraction must be in"):
        sample_labels(torch.zeros(5), 4, 1.5)
    with pytest.raises(ValueError, match=r"labels must be Tensor\[N\]"):
        sample_labels(torch.zeros(5, 2), 4, 0.5)
    with pytest.raises(ValueError, match=r"gt_labels must be Tensor\[2\]"):
        assign_roi_targets(a, a[:2], torch.tensor([1]))
