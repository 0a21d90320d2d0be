"""RoI pooling, the box head, post-processing and the head losses against torchvision's roi_heads.py."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads as TVRoIHeads
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.ops import MultiScaleRoIAlign

from vislab.models.detection import RoIHeads, fast_rcnn_loss, pool_rois, postprocess_detections


def _boxes(n, size=(96, 128), seed=0):
    g = torch.Generator().manual_seed(seed)
    H, W = size
    xy = torch.rand(n, 2, generator=g) * torch.tensor([W - 8.0, H - 8.0])
    wh = 3 + torch.rand(n, 2, generator=g) * 70
    return torch.cat([xy, torch.minimum(xy + wh, torch.tensor([float(W), float(H)]))], 1)


@pytest.mark.parametrize("output_size", [7, 5])
def test_pool_rois_equals_torchvision(output_size):
    feats = torch.randn(2, 6, 6, 8)
    rois = [_boxes(30, seed=1), _boxes(17, seed=2)]
    ref_align = MultiScaleRoIAlign(["0"], output_size, 2)({"0": feats}, rois, [(96, 128), (90, 120)])
    ours_align = pool_rois(feats, rois, output_size=output_size, spatial_scale=1 / 16, op="roi_align")
    assert torch.equal(ours_align, ref_align)
    ours_pool = pool_rois(feats, rois, output_size=output_size, spatial_scale=1 / 16)
    assert ours_pool.shape == (47, 6, output_size, output_size)
    assert torch.equal(ours_pool, torchvision.ops.roi_pool(feats, rois, output_size, 1 / 16))


@pytest.mark.parametrize("num_classes, n_rois, score, nms, det", [
    (4, (60, 45), 0.05, 0.5, 100),
    (21, (300, 120), 0.05, 0.5, 100),  # > 4000 box coordinates: torchvision's per-class NMS loop
    (3, (80, 10), 0.2, 0.3, 7),  # other thresholds, few detections
    (5, (0, 30), 0.05, 0.5, 100),  # an image without proposals
])
def test_postprocess_equals_torchvision(num_classes, n_rois, score, nms, det):
    g = torch.Generator().manual_seed(num_classes)
    proposals = [_boxes(n, seed=i + 3) for i, n in enumerate(n_rois)]
    R = sum(n_rois)
    logits = torch.randn(R, num_classes, generator=g) * 3
    deltas = torch.randn(R, 4 * num_classes, generator=g)
    sizes = [(96, 128), (70, 100)]
    ref = TVRoIHeads(None, None, None, 0.5, 0.5, 128, 0.25, None, score, nms, det)
    ref_boxes, ref_scores, ref_labels = ref.postprocess_detections(logits, deltas, proposals, sizes)
    ours = postprocess_detections(logits, deltas, proposals, sizes, score_thresh=score, nms_thresh=nms,
                                  detections_per_img=det)
    for o, b, s, lab in zip(ours, ref_boxes, ref_scores, ref_labels):
        assert torch.equal(o["boxes"], b) and torch.equal(o["scores"], s) and torch.equal(o["labels"], lab)
        assert len(o["boxes"]) <= det and (o["scores"] > score).all() and (o["scores"].diff() <= 0).all()
        assert o["labels"].dtype == torch.int64 and (o["labels"] >= 1).all()


def test_fast_rcnn_loss_equals_torchvision():
    g = torch.Generator().manual_seed(0)
    R, K = 200, 6
    logits = torch.randn(R, K, generator=g, requires_grad=True)
    deltas = torch.randn(R, 4 * K, generator=g, requires_grad=True)
    labels = torch.randint(0, K, (R,), generator=g)
    targets = torch.randn(R, 4, generator=g)
    ours = fast_rcnn_loss(logits, deltas, labels, targets)
    ref = fastrcnn_loss(logits, deltas, [labels[:120], labels[120:]], [targets[:120], targets[120:]])
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # normalisation: box loss = Σ smooth-L1 over positives / number of sampled RoIs
    pos = labels > 0
    manual = torch.nn.functional.smooth_l1_loss(deltas.view(R, K, 4)[pos, labels[pos]], targets[pos], beta=1 / 9,
                                                reduction="sum") / R
    torch.testing.assert_close(ours[1], manual)


def _pair(num_classes=4, in_ch=6, rep=32, roi_op="roi_pool", **kw):
    torch.manual_seed(0)
    ours = RoIHeads(in_ch, num_classes, representation_size=rep, roi_op=roi_op, **kw)
    if roi_op == "roi_align":
        pool = MultiScaleRoIAlign(["0"], 7, 2)
    else:
        class Pool(torch.nn.Module):
            def forward(self, x, boxes, shapes):
                return torchvision.ops.roi_pool(x["0"], boxes, 7, 1 / 16)
        pool = Pool()
    tv = TVRoIHeads(pool, TwoMLPHead(in_ch * 49, rep), FastRCNNPredictor(rep, num_classes),
                    kw.get("fg_iou_thresh", 0.5), kw.get("bg_iou_thresh", 0.5), kw.get("batch_size_per_image", 128),
                    kw.get("positive_fraction", 0.25), None, 0.05, 0.5, 100)
    tv.box_head.load_state_dict(ours.box_head.state_dict())
    tv.box_predictor.load_state_dict(ours.box_predictor.state_dict())
    return ours, tv


@pytest.mark.parametrize("roi_op, kw", [("roi_pool", {}), ("roi_align", {"batch_size_per_image": 64,
                                                                          "positive_fraction": 0.5})])
def test_roi_heads_equal_torchvision(roi_op, kw):
    ours, tv = _pair(roi_op=roi_op, **kw)
    feats = torch.randn(2, 6, 6, 8, requires_grad=True)
    proposals = [_boxes(300, seed=7), _boxes(200, seed=8)]
    sizes = [(96, 128), (90, 110)]
    targets = [{"boxes": _boxes(3, seed=9), "labels": torch.tensor([1, 3, 2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    ours.eval()
    tv.eval()
    dets, _ = ours(feats, proposals, sizes, 1 / 16)
    ref, _ = tv({"0": feats}, proposals, sizes)
    for a, b in zip(dets, ref):
        assert all(torch.equal(a[k], b[k]) for k in ("boxes", "scores", "labels"))
    ours.train()
    tv.train()
    torch.manual_seed(11)
    _, losses = ours(feats, proposals, sizes, 1 / 16, targets)
    torch.manual_seed(11)
    _, ref_losses = tv({"0": feats}, proposals, sizes, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg"}
    for k in losses:
        torch.testing.assert_close(losses[k], ref_losses[k], rtol=0, atol=0)
    g1 = torch.autograd.grad(sum(losses.values()), [feats, ours.box_head.fc6.weight])
    g2 = torch.autograd.grad(sum(ref_losses.values()), [feats, tv.box_head.fc6.weight])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_argument_errors():
    with pytest.raises(ValueError, match="roi_op must be one of"):
        RoIHeads(4, 3, roi_op="roi_warp")
    with pytest.raises(ValueError, match="num_classes counts the background"):
        RoIHeads(4, 1)
    with pytest.raises(ValueError, match="need 0 <= bg_iou_thresh <= fg_iou_thresh"):
        RoIHeads(4, 3, fg_iou_thresh=0.3, bg_iou_thresh=0.5)
    with pytest.raises(ValueError, match=r"box_deltas must be Tensor\[3, 8\]"):
        postprocess_detections(torch.zeros(3, 2), torch.zeros(3, 4), [torch.zeros(3, 4)], [(9, 9)])
    with pytest.raises(ValueError, match="got RoIs for 1 images and a batch of 2"):
        pool_rois(torch.zeros(2, 3, 4, 4), [torch.zeros(1, 4)], spatial_scale=1.0)
    ours = RoIHeads(4, 3).train()
    with pytest.raises(ValueError, match="need targets in training mode"):
        ours(torch.zeros(1, 4, 4, 4), [torch.zeros(1, 4)], [(64, 64)], 1 / 16)
