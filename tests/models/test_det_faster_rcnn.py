"""FasterRCNN end to end against torchvision's FasterRCNN on the same backbone object, the teaching
pipeline (explain), input checks, and the stride-16 backbones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vislab.errors import UserError
from vislab.models.detection import (
    FasterRCNN,
    build_backbone,
    build_torchvision_faster_rcnn,
    copy_weights_to_torchvision,
)
from vislab.ops.boxes import box_iou


class TinyBackbone(nn.Module):
    """Two stride-4 convs: a stride-16 feature map with 16 channels."""

    out_channels = 16

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, stride=4, padding=1), nn.ReLU(),
                                 nn.Conv2d(16, 16, 3, stride=4, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _pair(seed: int = 0, **kw):
    torch.manual_seed(seed)
    backbone = TinyBackbone()
    kw = {"min_size": 128, "max_size": 200, "representation_size": 64, **kw}
    ours = FasterRCNN(backbone, 4, **kw)
    with torch.no_grad():  # larger RPN weights than the N(0, 0.01²) init: spread-out scores, real NMS work
        ours.rpn.head.cls_logits.weight.mul_(50)
        ours.rpn.head.bbox_pred.weight.mul_(20)
    tv = build_torchvision_faster_rcnn(backbone, 4, **kw)
    copy_weights_to_torchvision(ours, tv)
    return ours, tv


def _images(seed: int = 0, same_shape: bool = False):
    """Three images; ``same_shape``: all resize to 128×160 (a batch without padding)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(128, 160), (100, 125), (64, 80)] if same_shape else [(128, 160), (100, 150), (150, 120)]
    return [torch.rand(3, h, w, generator=g) for h, w in shapes]


def _targets(same_shape: bool = False):
    """Targets of :func:`_images` (boxes at the image border, an image without objects)."""
    third = torch.tensor([[0.0, 0.0, 30.0, 40.0], [70.0, 90.0, 120.0, 150.0], [5.0, 100.0, 40.0, 140.0]])
    if same_shape:  # the third image is 64×80 instead of 150×120
        third = third * torch.tensor([80 / 120, 64 / 150, 80 / 120, 64 / 150])
    return [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0], [50.0, 50.0, 160.0, 128.0]]),
             "labels": torch.tensor([1, 3])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # no objects
            {"boxes": third, "labels": torch.tensor([2, 2, 1])}]


# Over the zero padding of a batch of different sizes anchors have identical features, hence exactly tied
# scores: the padded batches check that the paper's proposal order (the default) ranks ties as torchvision does
# (it did not before it ranked with torchvision's own top-k call). ``rpn_topk_first=True`` (torchvision's
# sequence of operations) is compared with a top-n cut below the anchor count too.
@pytest.mark.parametrize("kw, same_shape", [
    ({}, True),
    ({}, False),
    ({"roi_op": "roi_align", "anchor_sizes": (24, 48, 96, 160), "aspect_ratios": (0.6, 1.6)}, True),
    ({"rpn_mid_channels": 24, "min_size": 96, "max_size": 150, "rpn_post_nms_top_n_test": 120}, True),
    ({"rpn_topk_first": True}, False),
    ({"rpn_pre_nms_top_n_test": 200, "rpn_topk_first": True, "box_score_thresh": 0.2, "box_detections_per_img": 30,
      "roi_op": "roi_align"}, False),
])
def test_eval_outputs_equal_torchvision(kw, same_shape):
    ours, tv = _pair(**kw)
    ours.eval()
    tv.eval()
    images = _images(same_shape=same_shape)
    with torch.no_grad():
        out, ref = ours(images), tv(images)
    assert len(out) == 3
    for o, r in zip(out, ref):
        assert set(o) == {"boxes", "labels", "scores"}
        assert o["boxes"].shape[0] > 0
        for k in o:
            assert torch.equal(o[k], r[k]), k


@pytest.mark.parametrize("kw, same_shape", [
    ({}, True),
    ({"roi_op": "roi_align", "min_size": (96, 128, 160), "max_size": 220, "rpn_batch_size_per_image": 64,
      "box_batch_size_per_image": 32, "box_positive_fraction": 0.5, "rpn_topk_first": True}, False),
])
def test_training_losses_and_gradients_equal_torchvision_with_the_same_draws(kw, same_shape):
    # both draw the training scale and the anchor / RoI samples from torch's global generator in the
    # same order: the same seed must give the same samples, hence the same losses and gradients
    ours, tv = _pair(**kw)
    ours.train()
    tv.train()
    images, targets = _images(1, same_shape), _targets(same_shape)
    torch.manual_seed(7)
    losses = ours(images, targets)
    torch.manual_seed(7)
    ref = tv(images, targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    for k in losses:
        torch.testing.assert_close(losses[k], ref[k], rtol=0, atol=0, msg=k)
    params = [ours.rpn.head.conv.weight, ours.roi_heads.box_head.fc6.weight,
              ours.roi_heads.box_predictor.bbox_pred.weight]
    tv_params = [tv.rpn.head.conv[0][0].weight, tv.roi_heads.box_head.fc6.weight,
                 tv.roi_heads.box_predictor.bbox_pred.weight]
    grads = torch.autograd.grad(sum(losses.values()), params + [ours.backbone.net[0].weight])
    ref_grads = torch.autograd.grad(sum(ref.values()), tv_params + [tv.backbone.net[0].weight])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_training_losses_equal_torchvision_without_sampling():
    # samplers larger than every candidate set: no random choice left (besides the training scale)
    ours, tv = _pair(rpn_batch_size_per_image=10**6, box_batch_size_per_image=10**6)
    ours.train()
    tv.train()
    images, targets = _images(2, same_shape=True), _targets(same_shape=True)
    losses = ours(images, targets)
    ref = tv(images, targets)
    for k in losses:
        torch.testing.assert_close(losses[k], ref[k], rtol=1e-6, atol=0, msg=k)


def test_predictions_are_in_original_pixels():
    ours, _ = _pair(min_size=256, max_size=400)  # images upscaled ×2 inside the model
    ours.eval()
    image = _images()[0]
    with torch.no_grad():
        det = ours([image])[0]
        exp = ours.explain(image)
    assert exp["scale"] == (2.0, 2.0)
    assert (det["boxes"][:, 2] <= 160 + 1e-4).all() and (det["boxes"][:, 3] <= 128 + 1e-4).all()
    assert torch.equal(det["boxes"], exp["detections"]["boxes"])


def test_explain_pipeline():
    ours, _ = _pair()
    ours.train()
    image, target = _images()[2], _targets()[2]
    rng = torch.get_rng_state()
    e = ours.explain(image, target, location=(3, 2))
    assert ours.training and torch.equal(torch.get_rng_state(), rng)  # mode and global RNG untouched
    assert e["feature_size"] == (10, 8) and e["stride"] == (16, 16) and e["location"] == (3, 2)
    # resized 150×120 → 160×128 (short side 128): the 9 anchors centred on cell (3, 2) = (32, 48) px resized
    sy, sx = e["scale"]
    centres = (e["anchors"][:, :2] + e["anchors"][:, 2:]) / 2
    torch.testing.assert_close(centres, torch.tensor([[32 / sx, 48 / sy]]).expand(9, 2))
    assert len(e["anchors"]) == 9
    assert len(e["proposals"]) <= 300 and len(e["proposals"]) < len(e["proposals_pre_nms"])
    assert (e["scores_pre_nms"].diff() <= 0).all() and (e["scores"].diff() <= 0).all()
    pre = {tuple(b) for b in e["proposals_pre_nms"].tolist()}
    assert all(tuple(b) in pre for b in e["proposals"].tolist())  # NMS keeps a subset
    assert len(e["anchors_positive"]) >= 3 and len(e["anchors_positive"]) + len(e["anchors_negative"]) == 256
    assert len(e["rois_fg"]) + len(e["rois_bg"]) == 128 and 3 <= len(e["rois_fg"]) <= 32
    iou_fg = box_iou(e["rois_fg"], target["boxes"]).max(dim=1).values
    assert (iou_fg >= 0.5 - 1e-4).all()
    assert (box_iou(e["rois_bg"], target["boxes"]).max(dim=1).values < 0.5 + 1e-4).all()
    assert set(e["rois_fg_labels"].tolist()) <= {1, 2}
    again = ours.explain(image, target, location=(3, 2))
    assert torch.equal(again["rois_fg"], e["rois_fg"])  # seeded: the same figure every time


def test_input_errors():
    ours, _ = _pair()
    ours.train()
    images = _images()[:1]
    with pytest.raises(ValueError, match="training mode needs targets"):
        ours(images)
    with pytest.raises(ValueError, match="box without positive width and height"):
        ours(images, [{"boxes": torch.tensor([[10.0, 10.0, 10.0, 30.0]]), "labels": torch.tensor([1])}])
    with pytest.raises(ValueError, match=r"must be in 1\.\.3"):
        ours(images, [{"boxes": torch.tensor([[1.0, 1.0, 10.0, 30.0]]), "labels": torch.tensor([4])}])
    with pytest.raises(ValueError, match="int64"):
        ours(images, [{"boxes": torch.tensor([[1.0, 1.0, 10.0, 30.0]]), "labels": torch.tensor([1.0])}])
    with pytest.raises(ValueError, match=r"images\[0\] must be Tensor\[3, H, W\]"):
        ours([torch.zeros(1, 3, 64, 64)])
    with pytest.raises(TypeError, match="float image"):
        ours.eval()([torch.zeros(3, 64, 64, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="out_channels"):
        FasterRCNN(nn.Identity(), 3)
    with pytest.raises(ValueError, match="num_classes counts the background"):
        FasterRCNN(TinyBackbone(), 1)
    with pytest.raises(TypeError, match="unknown FasterRCNN settings"):
        build_torchvision_faster_rcnn(TinyBackbone(), 3, rpn_pre_nms=5)


def test_empty_batch_trains():
    ours, _ = _pair()
    ours.train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = ours(_images()[:2], [empty, empty])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_rpn_box_reg"] == 0 and losses["loss_box_reg"] == 0
    sum(losses.values()).backward()


def test_backbones_stride_16():
    vgg = build_backbone("vgg16", pretrained=False)
    assert vgg.out_channels == 512 and vgg.stride == 16
    convs = [m for m in vgg.modules() if isinstance(m, nn.Conv2d)]
    pools = [m for m in vgg.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(convs) == 13 and len(pools) == 4 and isinstance(list(vgg.body)[-1], nn.ReLU)
    with torch.no_grad():
        assert vgg(torch.zeros(1, 3, 64, 96)).shape == (1, 512, 4, 6)
    lite = build_backbone("efficientnet_lite0")  # the packaged ImageNet weights, offline
    assert lite.out_channels == 112 and lite.image_mean == (0.5, 0.5, 0.5) and lite.pretrained_source
    with torch.no_grad():
        assert lite(torch.zeros(1, 3, 64, 96)).shape == (1, 112, 4, 6)
    from vislab.models.backbones import efficientnet_lite0_state_dict

    sd = efficientnet_lite0_state_dict()
    weight = dict(lite.named_parameters())["body.conv_stem.weight"]
    assert torch.equal(weight, sd["conv_stem.weight"])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in lite.modules())  # frozen by default
    res = build_backbone("resnet18", pretrained=False, freeze_bn=False)
    assert res.out_channels == 256 and any(isinstance(m, nn.BatchNorm2d) for m in res.modules())


def test_backbone_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty hub cache
    with pytest.raises(UserError, match="pretrained vgg16 weights are not on this machine"):
        build_backbone("vgg16")
    with pytest.raises(UserError, match="needs its weights as a file"):
        build_backbone("resnet18")
    with pytest.raises(UserError, match="unknown detection backbone"):
        build_backbone("no_such_net")
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match="is not a VGG16 state dict"):
        build_backbone("vgg16", weights=str(bad))


def test_box_head_width_follows_the_backbone():
    """fc6/fc7 are 4096 wide on the VGG16 trunk (the paper) and 1024 elsewhere (torchvision), in both models."""
    from vislab.models.detection.backbones import DetectionBackbone

    def trunk(name: str) -> nn.Module:
        return DetectionBackbone(nn.Conv2d(3, 4, 16, stride=16), out_channels=4, stride=16,
                                 image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), name=name,
                                 pretrained_source=None)

    for name, width in (("vgg16", 4096), ("efficientnet_lite0", 1024)):
        ours = FasterRCNN(trunk(name), 3, roi_output_size=2)
        tv = build_torchvision_faster_rcnn(trunk(name), 3, roi_output_size=2)
        assert ours.roi_heads.box_head.fc6.out_features == width == tv.roi_heads.box_head.fc6.out_features
        assert FasterRCNN(trunk(name), 3, roi_output_size=2, representation_size=64).roi_heads.box_head.fc7 \
            .out_features == 64
