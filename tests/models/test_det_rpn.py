"""RPN head, proposal layer and RegionProposalNetwork against torchvision's rpn.py."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork as TVRPN
from torchvision.models.detection.rpn import RPNHead as TVRPNHead
from torchvision.models.detection.rpn import concat_box_prediction_layers

from vislab.models.detection import (
    AnchorGenerator,
    RegionProposalNetwork,
    RPNHead,
    flatten_rpn_outputs,
    nms_top_n,
    pre_nms_proposals,
    select_proposals,
)
from vislab.ops.boxes import box_iou


def _tv_rpn(pre=(12000, 6000), post=(2000, 300), nms=0.7, sizes=(32, 64, 128), ratios=(0.5, 1.0, 2.0),
            batch=256, fraction=0.5, head=None):
    gen = TVAnchorGenerator((sizes,), (ratios,))
    head = head or TVRPNHead(8, len(sizes) * len(ratios))
    return TVRPN(gen, head, 0.7, 0.3, batch, fraction, dict(training=pre[0], testing=pre[1]),
                 dict(training=post[0], testing=post[1]), nms)


def _proposal_inputs(n: int, size=(96, 128), seed=0, degenerate=0):
    """Decoded-anchor-like boxes spilling over the image, logits; ``degenerate`` high-scoring boxes fully
    outside the image (they clip to zero width)."""
    g = torch.Generator().manual_seed(seed)
    H, W = size
    ctr = torch.rand(n, 2, generator=g) * torch.tensor([W + 20.0, H + 20.0]) - 10
    wh = torch.rand(n, 2, generator=g) * 60 + 2
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], 1)
    logits = torch.randn(n, generator=g) * 3
    if degenerate:
        boxes[:degenerate] = torch.tensor([W + 5.0, 10.0, W + 30.0, 40.0])
        logits[:degenerate] = 10.0 + torch.arange(degenerate, dtype=torch.float32)
    return boxes, logits


@pytest.mark.parametrize("n, pre, post, nms, training", [
    (500, 200, 50, 0.7, False),
    (500, 1000, 300, 0.5, True),
    (3000, 600, 100, 0.3, False),  # many boxes
    (50, 10, 100, 0.9, True),  # post > what survives
])
@pytest.mark.parametrize("degenerate", [0, 15])
def test_select_proposals_topk_first_equals_filter_proposals(n, pre, post, nms, training, degenerate):
    boxes, logits = _proposal_inputs(n, seed=n + degenerate, degenerate=degenerate)
    size = (96, 128)
    rpn = _tv_rpn(pre=(pre, pre), post=(post, post), nms=nms).train(training)
    ref_boxes, ref_scores = rpn.filter_proposals(boxes[None], logits[None], [size], [n])
    ours_boxes, ours_scores = select_proposals(boxes, logits, size, pre_nms_top_n=pre, post_nms_top_n=post,
                                               nms_thresh=nms, min_size=1e-3, topk_first=True)
    assert torch.equal(ours_boxes, ref_boxes[0])
    assert torch.equal(torch.sigmoid(ours_scores), ref_scores[0])


@pytest.mark.parametrize("n, post, nms, tied", [
    (400, 80, 0.7, False), (1200, 300, 0.6, False),
    (400, 80, 0.7, True), (900, 200, 0.6, True),  # 900 = the default detection run's anchors (10×10×9)
])
def test_select_proposals_paper_order_equals_torchvision_when_all_anchors_ranked(n, post, nms, tied):
    # with pre_nms_top_n >= N the top-n step keeps everything, so the two orders must agree exactly,
    # degenerate boxes included, and so must the order of exactly tied scores: a trained RPN gives two anchors
    # the same logit (step 57 of the default detection run: -12.365133 twice), and the negative RoI sampler
    # draws by position, so a swapped pair is a different training step. Ties only up to 1000 boxes: above,
    # torchvision's batched_nms re-sorts what NMS kept with an unstable sort (its CPU path for > 4000 numbers)
    boxes, logits = _proposal_inputs(n, seed=11, degenerate=12)
    if tied:  # about 40 distinct values: hundreds of exact ties, some on overlapping boxes
        logits = (logits * 2).round() / 2
    rpn = _tv_rpn(pre=(n, n), post=(post, post), nms=nms).eval()
    ref_boxes, ref_scores = rpn.filter_proposals(boxes[None], logits[None], [(96, 128)], [n])
    ours_boxes, ours_scores = select_proposals(boxes, logits, (96, 128), pre_nms_top_n=n, post_nms_top_n=post,
                                               nms_thresh=nms, min_size=1e-3)
    assert torch.equal(ours_boxes, ref_boxes[0])
    assert torch.equal(torch.sigmoid(ours_scores), ref_scores[0])


def test_select_proposals_paper_order_drops_small_boxes_before_the_top_n():
    n, pre = 300, 40
    boxes, logits = _proposal_inputs(n, seed=12, degenerate=10)  # the 10 best are outside the image
    size = (96, 128)
    cand_b, cand_s = pre_nms_proposals(boxes, logits, size, pre_nms_top_n=pre, min_size=2.0)
    # the definition, step by step with masks
    clipped = boxes.clone()
    clipped[:, 0::2] = clipped[:, 0::2].clamp(0, size[1])
    clipped[:, 1::2] = clipped[:, 1::2].clamp(0, size[0])
    big = ((clipped[:, 2] - clipped[:, 0]) >= 2.0) & ((clipped[:, 3] - clipped[:, 1]) >= 2.0)
    order = torch.argsort(torch.where(big, logits, torch.tensor(-1e9)), descending=True)[:pre]
    assert len(cand_b) == pre  # the paper's order fills the pre-NMS budget...
    assert torch.equal(cand_b, clipped[order])
    assert torch.equal(cand_s, logits[order])
    tv_b, _ = pre_nms_proposals(boxes, logits, size, pre_nms_top_n=pre, min_size=2.0, topk_first=True)
    top = torch.argsort(logits, descending=True)[:pre]
    assert torch.equal(tv_b, clipped[top[big[top]]])  # ...torchvision's loses the dropped boxes from it
    assert len(tv_b) <= pre - 10
    final_b, final_s = select_proposals(boxes, logits, size, pre_nms_top_n=pre, post_nms_top_n=25, nms_thresh=0.5,
                                        min_size=2.0)
    assert len(final_b) <= 25 and (final_s.diff() <= 0).all()
    iou = box_iou(final_b, final_b) - torch.eye(len(final_b))
    assert (iou <= 0.5).all()  # NMS happened


@pytest.mark.parametrize("top_n", [1, 7, 60, 400, 5000])
@pytest.mark.parametrize("thresh", [0.3, 0.7])
def test_nms_top_n_equals_full_nms(top_n, thresh):
    # clustered boxes: most are suppressed, so the prefix has to grow several times for the larger top_n
    g = torch.Generator().manual_seed(top_n)
    centres = torch.rand(25, 2, generator=g) * 100
    ctr = centres[torch.randint(0, 25, (3000,), generator=g)] + torch.randn(3000, 2, generator=g) * 3
    wh = 10 + torch.rand(3000, 2, generator=g) * 20
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], 1)
    scores, order = torch.rand(3000, generator=g).sort(descending=True)
    boxes = boxes[order]
    ref = torchvision.ops.nms(boxes, scores, thresh)[:top_n]
    assert torch.equal(nms_top_n(boxes, scores, thresh, top_n), ref)


def test_rpn_head_and_flatten_match_torchvision():
    torch.manual_seed(0)
    ours = RPNHead(8, 6)
    tv = TVRPNHead(8, 6)
    with torch.no_grad():
        tv.conv[0][0].weight.copy_(ours.conv.weight)
        tv.conv[0][0].bias.copy_(ours.conv.bias)
        for name in ("cls_logits", "bbox_pred"):
            getattr(tv, name).weight.copy_(getattr(ours, name).weight)
            getattr(tv, name).bias.copy_(getattr(ours, name).bias)
    x = torch.randn(2, 8, 5, 7)
    obj, deltas = ours(x)
    assert obj.shape == (2, 6, 5, 7) and deltas.shape == (2, 24, 5, 7)
    tv_obj, tv_deltas = tv([x])
    ref_obj, ref_deltas = concat_box_prediction_layers(tv_obj, tv_deltas)
    flat_obj, flat_deltas = flatten_rpn_outputs(obj, deltas)
    assert flat_obj.shape == (2, 5 * 7 * 6) and flat_deltas.shape == (2, 5 * 7 * 6, 4)
    assert torch.equal(flat_obj.reshape(-1, 1), ref_obj)
    assert torch.equal(flat_deltas.reshape(-1, 4), ref_deltas)
    assert RPNHead(8, 6, mid_channels=32).conv.out_channels == 32


def _pair(sizes=(16, 32, 64), ratios=(0.5, 1.0, 2.0), pre=(12000, 6000), post=(2000, 300), batch=256,
          fraction=0.5):
    torch.manual_seed(1)
    ours = RegionProposalNetwork(AnchorGenerator(sizes, ratios), RPNHead(8, len(sizes) * len(ratios)),
                                 pre_nms_top_n=pre, post_nms_top_n=post, batch_size_per_image=batch,
                                 positive_fraction=fraction)
    tv = _tv_rpn(pre=pre, post=post, sizes=sizes, ratios=ratios, batch=batch, fraction=fraction)
    with torch.no_grad():
        tv.head.conv[0][0].weight.copy_(ours.head.conv.weight * 30)  # larger weights: spread-out scores
        ours.head.conv.weight.mul_(30)
        tv.head.conv[0][0].bias.copy_(ours.head.conv.bias)
        for name in ("cls_logits", "bbox_pred"):
            getattr(ours.head, name).weight.mul_(20)
            getattr(tv.head, name).weight.copy_(getattr(ours.head, name).weight)
            getattr(tv.head, name).bias.copy_(getattr(ours.head, name).bias)
    return ours, tv


TARGETS = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [60.0, 0.0, 128.0, 30.0], [20.0, 30.0, 28.0, 44.0]])},
           {"boxes": torch.zeros(0, 4)}]


@pytest.mark.parametrize("sizes, ratios, pre, post", [
    ((16, 32, 64), (0.5, 1.0, 2.0), (12000, 6000), (2000, 300)),
    ((24, 48), (0.7, 1.4), (300, 200), (120, 50)),  # top-n below the anchor count
])
def test_region_proposal_network_equals_torchvision(sizes, ratios, pre, post):
    ours, tv = _pair(sizes, ratios, pre, post)
    feats = torch.randn(2, 8, 6, 8)
    image_sizes = [(96, 128), (80, 100)]
    images = ImageList(torch.zeros(2, 3, 96, 128), image_sizes)
    for training in (False, True):
        ours.train(training)
        tv.train(training)
        torch.manual_seed(5)
        props, losses = ours(feats, image_sizes, (96, 128), TARGETS if training else None)
        torch.manual_seed(5)
        ref_props, ref_losses = tv(images, {"0": feats}, TARGETS if training else None)
        limit = post[0] if training else post[1]
        for a, b in zip(props, ref_props):
            if pre[0] >= 6 * 8 * len(sizes) * len(ratios):
                assert torch.equal(a, b)
            else:  # the orders may differ here (see the topk_first test for the exact comparison)
                assert 0 < a.shape[0] <= limit and 0 < b.shape[0] <= limit
        if training:
            assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"}
            for k in losses:
                torch.testing.assert_close(losses[k], ref_losses[k], rtol=0, atol=0)


def test_region_proposal_network_topk_first_equals_torchvision_always():
    ours, tv = _pair(pre=(100, 60), post=(40, 20))
    ours.topk_first = True
    feats = torch.randn(2, 8, 6, 8)
    image_sizes = [(96, 128), (50, 64)]  # the second image is mostly padding: many degenerate boxes
    images = ImageList(torch.zeros(2, 3, 96, 128), image_sizes)
    for training in (False, True):
        ours.train(training)
        tv.train(training)
        torch.manual_seed(2)
        props, _ = ours(feats, image_sizes, (96, 128), TARGETS if training else None)
        torch.manual_seed(2)
        ref_props, _ = tv(images, {"0": feats}, TARGETS if training else None)
        for a, b in zip(props, ref_props):
            assert torch.equal(a, b)


def test_rpn_losses_without_sampling_equal_torchvision():
    # batch_size_per_image above the anchor count: every labelled anchor is used, no randomness involved
    ours, tv = _pair(batch=10**6, fraction=0.5)
    ours.train()
    tv.train()
    feats = torch.randn(2, 8, 6, 8, requires_grad=True)
    _, losses = ours(feats, [(96, 128), (96, 100)], (96, 128), TARGETS)
    _, ref = tv(ImageList(torch.zeros(2, 3, 96, 128), [(96, 128), (96, 100)]), {"0": feats}, TARGETS)
    for k in losses:
        torch.testing.assert_close(losses[k], ref[k], rtol=1e-6, atol=0)
    g_ours = torch.autograd.grad(sum(losses.values()), ours.head.bbox_pred.weight)[0]
    g_ref = torch.autograd.grad(sum(ref.values()), tv.head.bbox_pred.weight)[0]
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-8)


def test_argument_errors():
    boxes, logits = _proposal_inputs(20)
    with pytest.raises(ValueError, match=r"scores must be Tensor\[20\]"):
        select_proposals(boxes, logits[:5], (96, 128), pre_nms_top_n=10, post_nms_top_n=5, nms_thresh=0.7,
                         min_size=0)
    with pytest.raises(ValueError, match="post_nms_top_n must be >= 1"):
        select_proposals(boxes, logits, (96, 128), pre_nms_top_n=10, post_nms_top_n=0, nms_thresh=0.7, min_size=0)
    with pytest.raises(ValueError, match="nms_thresh must be in"):
        select_proposals(boxes, logits, (96, 128), pre_nms_top_n=10, post_nms_top_n=5, nms_thresh=1.5, min_size=0)
    with pytest.raises(ValueError, match="head predicts 4 anchors per location, the anchor generator has 9"):
        RegionProposalNetwork(AnchorGenerator(), RPNHead(8, 4))
    rpn = RegionProposalNetwork(AnchorGenerator(), RPNHead(8, 9)).train()
    with pytest.raises(ValueError, match="needs targets in training mode"):
        rpn(torch.zeros(1, 8, 4, 4), [(64, 64)], (64, 64))
