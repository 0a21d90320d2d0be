"""Faster R-CNN (Ren et al., 2015) assembled from its pieces, with torchvision's ``FasterRCNN`` contract.

    images ─ DetectionTransform ─ backbone (stride 16) ─┬─ RegionProposalNetwork ─ proposals ─┐
             (normalise, resize                         └──────────── features ──────────────┴─ RoIHeads ─ detections
              boxes with the image,                                                                 │
              pad to a multiple of 32)                           boxes mapped back to the original size ┘

- ``model.train()``: ``model(images, targets)`` → ``{"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
  "loss_box_reg"}`` (sum them to train);
- ``model.eval()``: ``model(images)`` → ``[{"boxes" Tensor[D, 4] xyxy (original pixels), "labels" Tensor[D] int64,
  "scores" Tensor[D]}]`` per image;
- ``model.explain(image, target)``: the intermediate pipeline of one image, for teaching figures.

:func:`build_torchvision_faster_rcnn` builds torchvision's ``FasterRCNN`` with the same settings around a
backbone, and :func:`copy_weights_to_torchvision` gives it our weights: the two then agree output for
output (tests/models/test_det_faster_rcnn.py).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import _filter_input, _setup_scales

from vislab.models.detection.anchors import AnchorGenerator
from vislab.models.detection.roi_heads import ROI_OPS, RoIHeads, postprocess_detections
from vislab.models.detection.rpn import RegionProposalNetwork, RPNHead

__all__ = ["DetectionTransform", "FasterRCNN", "build_torchvision_faster_rcnn", "copy_weights_to_torchvision",
           "default_representation_size", "resize_boxes"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_boxes(boxes: Tensor, original_size: tuple[int, int], new_size: tuple[int, int]) -> Tensor:
    """Scale ``Tensor[N, 4]`` xyxy boxes from an ``(h, w)`` image to an ``(h', w')`` one (torchvision's rule)."""
    ratio_h = torch.tensor(new_size[0], dtype=torch.float32, device=boxes.device) / torch.tensor(
        original_size[0], dtype=torch.float32, device=boxes.device)
    ratio_w = torch.tensor(new_size[1], dtype=torch.float32, device=boxes.device) / torch.tensor(
        original_size[1], dtype=torch.float32, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)  # (N, 4)


class DetectionTransform(nn.Module):
    """Normalise, resize (boxes with the image) and batch, like torchvision's ``GeneralizedRCNNTransform``.

    Each image is scaled by ``min(min_size / short side, max_size / long side)`` (bilinear), the boxes of
    its target by the same factors; the batch is zero-padded at the bottom/right to a multiple of
    ``size_divisible``. In training one of several ``min_size`` values is drawn per image from torch's
    global generator (one draw per image even when there is a single value, as torchvision draws, so that a
    seed gives both implementations the same random state). ``postprocess`` maps boxes back.
    """

    def __init__(self, min_size: int | Sequence[int], max_size: int, image_mean: Sequence[float],
                 image_std: Sequence[float], *, size_divisible: int = 32) -> None:
        super().__init__()
        sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
        if not sizes or any(int(s) < 1 for s in sizes) or max_size < 1:
            raise ValueError(f"min_size and max_size must be positive, got {min_size!r} and {max_size!r}")
        if len(image_mean) != 3 or len(image_std) != 3 or any(s <= 0 for s in image_std):
            raise ValueError(f"image_mean and image_std must be 3 numbers (std > 0), got {image_mean!r}, {image_std!r}")
        self.min_size = tuple(int(s) for s in sizes)
        self.max_size = int(max_size)
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.size_divisible = int(size_divisible)

    def _scale_size(self) -> int:
        if self.training:
            return self.min_size[int(torch.empty(1).uniform_(0.0, float(len(self.min_size))).item())]
        return self.min_size[-1]

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
                ) -> tuple[Tensor, list[tuple[int, int]], list[dict[str, Tensor]] | None]:
        """→ ``(batch Tensor[B, 3, H_pad, W_pad], image_sizes [(h, w)] after resizing, resized targets)``."""
        out_images, out_targets = [], []
        for i, image in enumerate(images):
            mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
            std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
            image = (image - mean[:, None, None]) / std[:, None, None]
            h, w = image.shape[-2:]
            size = self._scale_size()
            scale = min(size / min(h, w), self.max_size / max(h, w))
            image = F.interpolate(image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                                  align_corners=False)[0]
            out_images.append(image)
            if targets is not None:
                t = dict(targets[i])
                t["boxes"] = resize_boxes(t["boxes"], (h, w), tuple(image.shape[-2:]))
                out_targets.append(t)
        image_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in out_images]
        d = float(self.size_divisible)
        H = int(math.ceil(max(s[0] for s in image_sizes) / d) * d)
        W = int(math.ceil(max(s[1] for s in image_sizes) / d) * d)
        batch = out_images[0].new_zeros((len(out_images), out_images[0].shape[0], H, W))  # (B, 3, H, W)
        for b, im in zip(batch, out_images):
            b[:, :im.shape[1], :im.shape[2]].copy_(im)
        return batch, image_sizes, (out_targets if targets is not None else None)

    def postprocess(self, detections: list[dict[str, Tensor]], image_sizes: list[tuple[int, int]],
                    original_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        for det, size, orig in zip(detections, image_sizes, original_sizes):
            det["boxes"] = resize_boxes(det["boxes"], size, orig)
        return detections

    def extra_repr(self) -> str:
        return (f"min_size={self.min_size}, max_size={self.max_size}, mean={self.image_mean}, std={self.image_std}, "
                f"size_divisible={self.size_divisible}")


def _check_images_targets(images: Any, targets: Any, training: bool, num_classes: int) -> None:
    if not isinstance(images, (list, tuple)) or not images:
        raise TypeError(f"images must be a non-empty list of Tensor[3, H, W], got {type(images).__name__}")
    for i, im in enumerate(images):
        if not isinstance(im, Tensor) or im.dim() != 3 or im.shape[0] != 3:
            shape = tuple(im.shape) if isinstance(im, Tensor) else type(im).__name__
            raise ValueError(f"images[{i}] must be Tensor[3, H, W], got {shape}")
        if not im.is_floating_point():
            raise TypeError(f"images[{i}] must be a float image in [0, 1], got {im.dtype}")
    if targets is None:
        if training:
            raise ValueError("training mode needs targets: one {'boxes', 'labels'} dict per image")
        return
    if len(targets) != len(images):
        raise ValueError(f"got {len(targets)} targets for {len(images)} images")
    for i, t in enumerate(targets):
        boxes, labels = t.get("boxes"), t.get("labels")
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"targets[{i}]['boxes'] must be Tensor[N, 4], got "
                             f"{tuple(boxes.shape) if isinstance(boxes, Tensor) else boxes!r}")
        if not boxes.is_floating_point():
            raise TypeError(f"targets[{i}]['boxes'] must be float, got {boxes.dtype}")
        if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or tuple(labels.shape) != (boxes.shape[0],):
            raise ValueError(f"targets[{i}]['labels'] must be an int64 Tensor[{boxes.shape[0]}], got "
                             f"{(labels.dtype, tuple(labels.shape)) if isinstance(labels, Tensor) else labels!r}")
        if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) >= num_classes):
            raise ValueError(f"targets[{i}]['labels'] must be in 1..{num_classes - 1} (0 is the background), got "
                             f"{labels.tolist()}")
        bad = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if bad.any():
            raise ValueError(f"targets[{i}] has a box without positive width and height: "
                             f"{boxes[bad][0].tolist()} (drop degenerate boxes when loading the data)")


def default_representation_size(backbone: nn.Module) -> int:
    """The width of the box head's two FC layers: 4096 for the VGG16 trunk (the paper's fc6/fc7), 1024 for any
    other backbone (torchvision's ``TwoMLPHead``)."""
    return 4096 if getattr(backbone, "name", None) == "vgg16" else 1024


class FasterRCNN(nn.Module):
    """Faster R-CNN with one stride-16 feature map.

    Args:
        backbone: ``nn.Module`` ``Tensor[B, 3, H, W] → Tensor[B, C, H/16, W/16]`` with ``.out_channels = C``
            (and optionally ``.image_mean`` / ``.image_std``, used when ``image_mean`` / ``image_std`` are None);
            see :func:`vislab.models.detection.build_backbone`.
        num_classes: classes *including* the background (torchvision's convention); labels are ``1..num_classes-1``.
        anchor_sizes, aspect_ratios: the anchors (sizes × ratios per location; ratio = h / w). The paper uses
            (128, 256, 512) on ~600 px images; the default (32, 64, 128) suits small images.
        min_size, max_size: resize so that the short side is ``min_size`` unless the long side would pass
            ``max_size`` (the paper: 600 / 1000). A tuple ``min_size`` draws one per image in training.
        rpn_*: the RPN (:class:`RegionProposalNetwork`); ``rpn_mid_channels`` defaults to the backbone's channels;
            ``rpn_min_size`` 1e-3 and ``rpn_topk_first=False`` (the issue's order: clip, drop small, top-n).
            With the same weights the outputs equal torchvision's except where exactly tied objectness scores
            (anchors over the zero padding of a batch of unequal images) are ranked differently;
            ``rpn_topk_first=True`` follows torchvision's sequence of operations and equals it there too.
        box_*: the RoI heads (:class:`RoIHeads`); ``roi_op`` ``"roi_pool"`` (paper) or ``"roi_align"``.
        representation_size: width of the two FC layers; None: :func:`default_representation_size` (4096 for
            VGG16 as in the paper, 1024 otherwise as in torchvision).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, anchor_sizes: Sequence[float] = (32, 64, 128),
                 aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), min_size: int | Sequence[int] = 600,
                 max_size: int = 1000, image_mean: Sequence[float] | None = None,
                 image_std: Sequence[float] | None = None, rpn_pre_nms_top_n_train: int = 12000,
                 rpn_post_nms_top_n_train: int = 2000, rpn_pre_nms_top_n_test: int = 6000,
                 rpn_post_nms_top_n_test: int = 300, rpn_nms_thresh: float = 0.7, rpn_fg_iou_thresh: float = 0.7,
                 rpn_bg_iou_thresh: float = 0.3, rpn_batch_size_per_image: int = 256,
                 rpn_positive_fraction: float = 0.5, rpn_min_size: float = 1e-3, rpn_topk_first: bool = False,
                 rpn_mid_channels: int | None = None, box_fg_iou_thresh: float = 0.5, box_bg_iou_thresh: float = 0.5,
                 box_batch_size_per_image: int = 128, box_positive_fraction: float = 0.25,
                 box_score_thresh: float = 0.05, box_nms_thresh: float = 0.5, box_detections_per_img: int = 100,
                 roi_output_size: int = 7, roi_op: str = "roi_pool", roi_sampling_ratio: int = 2,
                 representation_size: int | None = None) -> None:
        super().__init__()
        out_channels = getattr(backbone, "out_channels", None)
        if not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"backbone must have an int attribute out_channels, got {out_channels!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
        if roi_op not in ROI_OPS:
            raise ValueError(f"roi_op must be one of {ROI_OPS}, got {roi_op!r}")
        self.num_classes = num_classes
        mean = image_mean if image_mean is not None else getattr(backbone, "image_mean", IMAGENET_MEAN)
        std = image_std if image_std is not None else getattr(backbone, "image_std", IMAGENET_STD)
        self.transform = DetectionTransform(min_size, max_size, mean, std)
        self.backbone = backbone
        anchor_generator = AnchorGenerator(anchor_sizes, aspect_ratios)
        head = RPNHead(out_channels, anchor_generator.num_anchors_per_location, mid_channels=rpn_mid_channels)
        self.rpn = RegionProposalNetwork(
            anchor_generator, head, fg_iou_thresh=rpn_fg_iou_thresh, bg_iou_thresh=rpn_bg_iou_thresh,
            batch_size_per_image=rpn_batch_size_per_image, positive_fraction=rpn_positive_fraction,
            pre_nms_top_n=(rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test),
            post_nms_top_n=(rpn_post_nms_top_n_train, rpn_post_nms_top_n_test), nms_thresh=rpn_nms_thresh,
            min_size=rpn_min_size, topk_first=rpn_topk_first)
        self.roi_heads = RoIHeads(
            out_channels, num_classes,
            representation_size=representation_size or default_representation_size(backbone),
            roi_output_size=roi_output_size,
            roi_op=roi_op, sampling_ratio=roi_sampling_ratio, fg_iou_thresh=box_fg_iou_thresh,
            bg_iou_thresh=box_bg_iou_thresh, batch_size_per_image=box_batch_size_per_image,
            positive_fraction=box_positive_fraction, score_thresh=box_score_thresh, nms_thresh=box_nms_thresh,
            detections_per_img=box_detections_per_img)

    def _features(self, batch: Tensor) -> tuple[Tensor, float]:
        features = self.backbone(batch)
        if not isinstance(features, Tensor) or features.dim() != 4:
            raise TypeError(f"the backbone must return one Tensor[B, C, H, W], got {type(features).__name__}")
        stride = batch.shape[-2] // features.shape[-2]
        return features, 1.0 / stride

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training mode: the four losses (dict). Eval mode: detections per image (original pixels)."""
        _check_images_targets(images, targets if self.training else None, self.training, self.num_classes)
        original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        batch, image_sizes, targets = self.transform(images, targets if self.training else None)
        features, spatial_scale = self._features(batch)
        proposals, rpn_losses = self.rpn(features, image_sizes, tuple(batch.shape[-2:]), targets)
        detections, head_losses = self.roi_heads(features, proposals, image_sizes, spatial_scale, targets)
        if self.training:
            return {**rpn_losses, **head_losses}
        return self.transform.postprocess(detections, image_sizes, original_sizes)

    @torch.no_grad()
    def explain(self, image: Tensor, target: dict[str, Tensor] | None = None, *,
                location: tuple[int, int] | None = None, seed: int = 0) -> dict[str, Any]:
        """The pipeline of one image, every box in the original image's pixels (xyxy), for teaching figures.

        Runs with test-time proposal numbers and does not change the model's mode or torch's random state.

        Args:
            image: ``Tensor[3, H, W]`` float in [0, 1].
            target: optional ``{"boxes" Tensor[G, 4], "labels" Tensor[G]}``: adds the anchor labels and the
                sampled RoIs that training would use (drawn from a generator seeded with ``seed``).
            location: ``(row, col)`` of the feature-map cell whose anchors are returned (default: the centre).

        Returns a dict with ``feature_size`` ``(Hf, Wf)``, ``stride`` ``(sh, sw)``, ``scale`` ``(sy, sx)``
        (resized / original), ``location``; ``anchors`` ``Tensor[A, 4]`` (the anchors at ``location``);
        ``proposals_pre_nms`` / ``scores_pre_nms`` (the candidates entering NMS, sorted by score);
        ``proposals`` / ``scores`` (after NMS and the top-n cut); ``detections`` (as ``forward`` in eval mode);
        and with a target: ``anchors_positive`` / ``anchors_negative`` (the sampled anchors of the RPN loss),
        ``rois_fg`` / ``rois_fg_labels`` / ``rois_bg`` (the sampled RoIs; the gt boxes join
        the proposals before sampling).
        """
        _check_images_targets([image], [target] if target is not None else None, False, self.num_classes)
        was_training = self.training
        self.eval()
        try:
            batch, sizes, targets = self.transform([image], [target] if target is not None else None)
            features, spatial_scale = self._features(batch)
            anchors, objectness, deltas = self.rpn.predict(features, tuple(batch.shape[-2:]))
            prop = self.rpn.propose(anchors, objectness, deltas, sizes, mode="testing", keep_pre_nms=True)[0]
            logits, box_deltas = self.roi_heads.predict(features, [prop["boxes"]], spatial_scale)
            det = postprocess_detections(logits, box_deltas, [prop["boxes"]], sizes,
                                         score_thresh=self.roi_heads.score_thresh,
                                         nms_thresh=self.roi_heads.nms_thresh,
                                         detections_per_img=self.roi_heads.detections_per_img,
                                         weights=self.roi_heads.weights)[0]
            Hf, Wf = features.shape[-2:]
            stride = (batch.shape[-2] // Hf, batch.shape[-1] // Wf)
            row, col = location if location is not None else (Hf // 2, Wf // 2)
            if not (0 <= row < Hf and 0 <= col < Wf):
                raise ValueError(f"location must be inside the {Hf}×{Wf} feature map, got {(row, col)}")
            A = self.rpn.anchor_generator.num_anchors_per_location
            start = (row * Wf + col) * A
            size, orig = sizes[0], (int(image.shape[-2]), int(image.shape[-1]))

            def back(b: Tensor) -> Tensor:
                return resize_boxes(b, size, orig)

            out: dict[str, Any] = {
                "feature_size": (int(Hf), int(Wf)), "stride": stride, "location": (int(row), int(col)),
                "scale": (size[0] / orig[0], size[1] / orig[1]), "anchors": back(anchors[start:start + A]),
                "proposals_pre_nms": back(prop["pre_nms_boxes"]), "scores_pre_nms": prop["pre_nms_scores"],
                "proposals": back(prop["boxes"]), "scores": prop["scores"],
                "detections": {"boxes": back(det["boxes"]), "labels": det["labels"], "scores": det["scores"]},
            }
            if targets is not None:
                g = torch.Generator(device="cpu").manual_seed(seed)
                rpn_t = self.rpn.assign(anchors, targets, generator=g)[0]
                out["anchors_positive"] = back(anchors[rpn_t["pos_mask"]])
                out["anchors_negative"] = back(anchors[rpn_t["neg_mask"]])
                s = self.roi_heads.sample([prop["boxes"]], targets, generator=g)[0]
                fg = s["labels"] > 0
                out["rois_fg"], out["rois_fg_labels"] = back(s["rois"][fg]), s["labels"][fg]
                out["rois_bg"] = back(s["rois"][s["labels"] == 0])
            return out
        finally:
            self.train(was_training)


class _TorchvisionMidRPNHead(nn.Module):
    """torchvision's ``RPNHead`` interface and parameter names with a 3×3 conv of ``mid_channels`` (torchvision's
    own head always has ``mid_channels = in_channels``)."""

    def __init__(self, in_channels: int, num_anchors: int, mid_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Sequential(nn.Conv2d(in_channels, mid_channels, 3, padding=1),
                                                nn.ReLU(inplace=True)))
        self.cls_logits = nn.Conv2d(mid_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(mid_channels, 4 * num_anchors, 1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.zeros_(layer.bias)

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        ts = [self.conv(f) for f in x]
        return [self.cls_logits(t) for t in ts], [self.bbox_pred(t) for t in ts]


class _TorchvisionRoIPool(MultiScaleRoIAlign):
    """torchvision's FasterRCNN accepts only a ``MultiScaleRoIAlign`` pooler: this one infers the scale the same way
    (from the first batch) and runs ``roi_pool`` on the single feature map."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        feats = _filter_input(x, self.featmap_names)
        if self.scales is None:
            self.scales, self.map_levels = _setup_scales(feats, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        return torchvision.ops.roi_pool(feats[0], boxes, self.output_size, self.scales[0])


def _rpn_head_for_torchvision(out_channels: int, num_anchors: int, mid_channels: int | None) -> nn.Module:
    from torchvision.models.detection.rpn import RPNHead as TVRPNHead

    if mid_channels is None or mid_channels == out_channels:
        return TVRPNHead(out_channels, num_anchors)
    return _TorchvisionMidRPNHead(out_channels, num_anchors, mid_channels)


def build_torchvision_faster_rcnn(backbone: nn.Module, num_classes: int, **kwargs: Any) -> nn.Module:
    """torchvision's ``FasterRCNN`` with the settings :class:`FasterRCNN` would use for the same keywords.

    One feature map (``AnchorGenerator(sizes=(anchor_sizes,), aspect_ratios=(aspect_ratios,))``), RoI pooling
    ``roi_output_size``² by ``roi_op`` (``MultiScaleRoIAlign(["0"], 7, 2)`` for ``roi_align``; the same class
    running ``roi_pool`` for ``roi_pool``), ``TwoMLPHead`` of ``representation_size``, ``FastRCNNPredictor``,
    box weights (10, 10, 5, 5), the same proposal numbers, thresholds, sampler sizes and RPN ``min_size``.
    ``rpn_topk_first`` is ignored (torchvision always takes the top-n first).
    """
    from torchvision.models.detection import FasterRCNN as TVFasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    defaults = {k: p.default for k, p in inspect.signature(FasterRCNN.__init__).parameters.items()
                if p.kind == p.KEYWORD_ONLY}
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise TypeError(f"unknown FasterRCNN settings: {sorted(unknown)}")
    cfg = {**defaults, **kwargs}
    out_channels = getattr(backbone, "out_channels", None)
    if not isinstance(out_channels, int):
        raise ValueError(f"backbone must have an int attribute out_channels, got {out_channels!r}")
    if cfg["roi_op"] not in ROI_OPS:
        raise ValueError(f"roi_op must be one of {ROI_OPS}, got {cfg['roi_op']!r}")
    anchor_generator = TVAnchorGenerator(sizes=(tuple(cfg["anchor_sizes"]),),
                                         aspect_ratios=(tuple(cfg["aspect_ratios"]),))
    num_anchors = anchor_generator.num_anchors_per_location()[0]
    rpn_head = _rpn_head_for_torchvision(out_channels, num_anchors, cfg["rpn_mid_channels"])
    size = cfg["roi_output_size"]
    if cfg["roi_op"] == "roi_align":
        pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=size, sampling_ratio=cfg["roi_sampling_ratio"])
    else:
        pool = _TorchvisionRoIPool(featmap_names=["0"], output_size=size, sampling_ratio=cfg["roi_sampling_ratio"])
    rep = cfg["representation_size"] or default_representation_size(backbone)
    mean = cfg["image_mean"] if cfg["image_mean"] is not None else getattr(backbone, "image_mean", IMAGENET_MEAN)
    std = cfg["image_std"] if cfg["image_std"] is not None else getattr(backbone, "image_std", IMAGENET_STD)
    model = TVFasterRCNN(
        backbone, num_classes=None, min_size=cfg["min_size"], max_size=cfg["max_size"], image_mean=list(mean),
        image_std=list(std), rpn_anchor_generator=anchor_generator, rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=cfg["rpn_pre_nms_top_n_train"], rpn_pre_nms_top_n_test=cfg["rpn_pre_nms_top_n_test"],
        rpn_post_nms_top_n_train=cfg["rpn_post_nms_top_n_train"],
        rpn_post_nms_top_n_test=cfg["rpn_post_nms_top_n_test"], rpn_nms_thresh=cfg["rpn_nms_thresh"],
        rpn_fg_iou_thresh=cfg["rpn_fg_iou_thresh"], rpn_bg_iou_thresh=cfg["rpn_bg_iou_thresh"],
        rpn_batch_size_per_image=cfg["rpn_batch_size_per_image"], rpn_positive_fraction=cfg["rpn_positive_fraction"],
        box_roi_pool=pool, box_head=TwoMLPHead(out_channels * size**2, rep),
        box_predictor=FastRCNNPredictor(rep, num_classes), box_score_thresh=cfg["box_score_thresh"],
        box_nms_thresh=cfg["box_nms_thresh"], box_detections_per_img=cfg["box_detections_per_img"],
        box_fg_iou_thresh=cfg["box_fg_iou_thresh"], box_bg_iou_thresh=cfg["box_bg_iou_thresh"],
        box_batch_size_per_image=cfg["box_batch_size_per_image"], box_positive_fraction=cfg["box_positive_fraction"],
        bbox_reg_weights=(10.0, 10.0, 5.0, 5.0))
    model.rpn.min_size = cfg["rpn_min_size"]
    return model


def copy_weights_to_torchvision(model: FasterRCNN, tv_model: nn.Module) -> None:
    """Load ``model``'s RPN and head weights into a model from :func:`build_torchvision_faster_rcnn`.

    The backbone is not copied (pass the same backbone object to both, or load it yourself).
    """
    head = model.rpn.head
    tv_head = tv_model.rpn.head
    with torch.no_grad():
        tv_conv = tv_head.conv[0][0]
        for src, dst in ((head.conv, tv_conv), (head.cls_logits, tv_head.cls_logits),
                         (head.bbox_pred, tv_head.bbox_pred),
                         (model.roi_heads.box_head.fc6, tv_model.roi_heads.box_head.fc6),
                         (model.roi_heads.box_head.fc7, tv_model.roi_heads.box_head.fc7),
                         (model.roi_heads.box_predictor.cls_score, tv_model.roi_heads.box_predictor.cls_score),
                         (model.roi_heads.box_predictor.bbox_pred, tv_model.roi_heads.box_predictor.bbox_pred)):
            if src.weight.shape != dst.weight.shape:
                raise ValueError(f"weight shapes differ: {tuple(src.weight.shape)} vs {tuple(dst.weight.shape)}")
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
