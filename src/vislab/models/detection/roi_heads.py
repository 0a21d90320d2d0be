"""The Fast R-CNN head on top of the proposals (Girshick, 2015; Ren et al., 2015, §3.2).

Per RoI: RoI pooling to a fixed ``7 × 7`` grid of the stride-16 feature map (``torchvision.ops.roi_pool``,
the paper's; or ``roi_align`` with ``sampling_ratio=2``, torchvision's default), two fully connected layers
with ReLU (``fc6``, ``fc7``: 4096 for VGG16, smaller for light backbones), and two siblings: class scores
``Tensor[R, K]`` (``K = num_classes``, background = 0) and class-specific box deltas ``Tensor[R, 4K]``
(weights 10, 10, 5, 5).

Training: :func:`~vislab.models.detection.targets.sample_rois` per image (gt boxes appended, 128 RoIs at
0.25 foreground), then :func:`~vislab.models.detection.losses.fast_rcnn_loss`.
Inference: :func:`postprocess_detections`, torchvision's ``RoIHeads.postprocess_detections``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from vislab.models.detection.losses import fast_rcnn_loss
from vislab.models.detection.targets import sample_rois
from vislab.ops.boxes import clip_boxes_to_image, decode_boxes, remove_small_boxes

__all__ = ["BoxPredictor", "RoIHeads", "TwoFCHead", "pool_rois", "postprocess_detections"]

ROI_OPS = ("roi_pool", "roi_align")
BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def pool_rois(features: Tensor, rois: list[Tensor], *, output_size: int = 7, spatial_scale: float,
              op: str = "roi_pool", sampling_ratio: int = 2) -> Tensor:
    """``features`` ``Tensor[B, C, H, W]``, ``rois`` one ``Tensor[R_i, 4]`` per image (image pixels)
    → ``Tensor[ΣR_i, C, output_size, output_size]``, images in order.

    ``spatial_scale`` = 1 / stride maps image pixels to feature cells. ``roi_align`` uses
    ``aligned=False`` (torchvision's ``MultiScaleRoIAlign``).
    """
    if op not in ROI_OPS:
        raise ValueError(f"op must be one of {ROI_OPS}, got {op!r}")
    if len(rois) != features.shape[0]:
        raise ValueError(f"got RoIs for {len(rois)} images and a batch of {features.shape[0]} feature maps")
    boxes = [r.to(features.dtype) for r in rois]
    if op == "roi_pool":
        return torchvision.ops.roi_pool(features, boxes, output_size, spatial_scale)
    return torchvision.ops.roi_align(features, boxes, output_size, spatial_scale, sampling_ratio)


class TwoFCHead(nn.Module):
    """``Tensor[R, C, S, S]`` → flatten → fc6 + ReLU → fc7 + ReLU → ``Tensor[R, representation_size]``."""

    def __init__(self, in_features: int, representation_size: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(start_dim=1)  # (R, C·S·S)
        return F.relu(self.fc7(F.relu(self.fc6(x))))  # (R, representation_size)


class BoxPredictor(nn.Module):
    """``Tensor[R, D]`` → class logits ``Tensor[R, K]`` and class-specific deltas ``Tensor[R, 4K]``."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
        self.cls_score = nn.Linear(in_features, num_classes)
        self.bbox_pred = nn.Linear(in_features, 4 * num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)  # (R, K), (R, 4K)


def postprocess_detections(class_logits: Tensor, box_deltas: Tensor, proposals: list[Tensor],
                           image_sizes: list[tuple[int, int]], *, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                           detections_per_img: int = 100, min_size: float = 1e-2,
                           weights: tuple[float, float, float, float] = BOX_WEIGHTS) -> list[dict[str, Tensor]]:
    """Detections per image from the head's outputs (torchvision's ``RoIHeads.postprocess_detections``).

    Every (RoI, foreground class) pair is a candidate: its box is the RoI decoded with that class's deltas
    and clipped to the image, its score the class's softmax probability. Candidates with score
    ``> score_thresh`` and sides ``>= min_size`` go through per-class NMS at ``nms_thresh``; the
    ``detections_per_img`` best remain.

    Args:
        class_logits: ``Tensor[R, K]``; box_deltas: ``Tensor[R, 4K]``; proposals: ``Tensor[R_i, 4]`` per image
            (``ΣR_i = R``); image_sizes: ``(h, w)`` per image.

    Returns:
        one dict per image: ``boxes`` ``Tensor[D, 4]``, ``scores`` ``Tensor[D]``, ``labels`` ``Tensor[D]`` int64
        (``1..K-1``), sorted by score, descending.
    """
    R, K = class_logits.shape
    if tuple(box_deltas.shape) != (R, 4 * K):
        raise ValueError(f"box_deltas must be Tensor[{R}, {4 * K}], got {tuple(box_deltas.shape)}")
    if sum(p.shape[0] for p in proposals) != R or len(image_sizes) != len(proposals):
        raise ValueError(f"proposals hold {sum(p.shape[0] for p in proposals)} boxes for {R} logits "
                         f"({len(proposals)} images, {len(image_sizes)} sizes)")
    boxes_all = decode_boxes(box_deltas.reshape(R, K, 4), torch.cat(proposals), weights)  # (R, K, 4)
    scores_all = F.softmax(class_logits, -1)  # (R, K)
    counts = [p.shape[0] for p in proposals]
    out = []
    for boxes, scores, size in zip(boxes_all.split(counts), scores_all.split(counts), image_sizes):
        n = boxes.shape[0]
        boxes = clip_boxes_to_image(boxes.reshape(-1, 4), size).reshape(n, K, 4)
        labels = torch.arange(K, device=boxes.device).view(1, K).expand(n, K)  # (n, K)
        boxes = boxes[:, 1:].reshape(-1, 4)  # (n·(K-1), 4), background dropped
        scores = scores[:, 1:].reshape(-1)
        labels = labels[:, 1:].reshape(-1)
        keep = torch.where(scores > score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, min_size)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = torchvision.ops.batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]
        out.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return out


class RoIHeads(nn.Module):
    """RoI pooling + :class:`TwoFCHead` + :class:`BoxPredictor`, with training targets and post-processing.

    ``forward(features Tensor[B, C, H, W], proposals [Tensor[P_i, 4]], image_sizes, spatial_scale, targets=None)``
    → ``(detections, losses)``: in training mode ``detections`` is ``[]`` and ``losses`` holds
    ``loss_classifier`` and ``loss_box_reg``; in eval mode ``losses`` is ``{}``.
    """

    def __init__(self, in_channels: int, num_classes: int, *, representation_size: int = 1024,
                 roi_output_size: int = 7, roi_op: str = "roi_pool", sampling_ratio: int = 2,
                 fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.5, batch_size_per_image: int = 128,
                 positive_fraction: float = 0.25, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                 detections_per_img: int = 100, weights: tuple[float, float, float, float] = BOX_WEIGHTS) -> None:
        super().__init__()
        if roi_op not in ROI_OPS:
            raise ValueError(f"roi_op must be one of {ROI_OPS}, got {roi_op!r}")
        if roi_output_size < 1 or representation_size < 1:
            raise ValueError(f"roi_output_size and representation_size must be >= 1, got {roi_output_size} and "
                             f"{representation_size}")
        if not 0.0 <= bg_iou_thresh <= fg_iou_thresh <= 1.0:
            raise ValueError(f"need 0 <= bg_iou_thresh <= fg_iou_thresh <= 1, got {fg_iou_thresh}, {bg_iou_thresh}")
        if batch_size_per_image < 1 or not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"need batch_size_per_image >= 1 and positive_fraction in [0, 1], got "
                             f"{batch_size_per_image}, {positive_fraction}")
        if detections_per_img < 1:
            raise ValueError(f"detections_per_img must be >= 1, got {detections_per_img}")
        self.num_classes = num_classes
        self.roi_output_size, self.roi_op, self.sampling_ratio = roi_output_size, roi_op, sampling_ratio
        self.box_head = TwoFCHead(in_channels * roi_output_size**2, representation_size)
        self.box_predictor = BoxPredictor(representation_size, num_classes)
        self.fg_iou_thresh, self.bg_iou_thresh = fg_iou_thresh, bg_iou_thresh
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.weights = tuple(float(w) for w in weights)

    def sample(self, proposals: list[Tensor], targets: list[dict[str, Tensor]],
               generator: torch.Generator | None = None) -> list[dict[str, Tensor]]:
        """:func:`sample_rois` for every image (``rois``, ``labels``, ``regression_targets``, ...)."""
        return [sample_rois(p, t["boxes"], t["labels"], fg_iou=self.fg_iou_thresh, bg_iou=self.bg_iou_thresh,
                            batch_size_per_image=self.batch_size_per_image, positive_fraction=self.positive_fraction,
                            weights=self.weights, generator=generator) for p, t in zip(proposals, targets)]

    def predict(self, features: Tensor, rois: list[Tensor], spatial_scale: float) -> tuple[Tensor, Tensor]:
        """Class logits ``Tensor[ΣR_i, K]`` and deltas ``Tensor[ΣR_i, 4K]`` of the RoIs."""
        pooled = pool_rois(features, rois, output_size=self.roi_output_size, spatial_scale=spatial_scale,
                           op=self.roi_op, sampling_ratio=self.sampling_ratio)  # (R, C, S, S)
        return self.box_predictor(self.box_head(pooled))

    def forward(self, features: Tensor, proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                spatial_scale: float, targets: list[dict[str, Tensor]] | None = None
                ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("the RoI heads need targets in training mode")
            sampled = self.sample(proposals, targets)
            logits, deltas = self.predict(features, [s["rois"] for s in sampled], spatial_scale)
            loss_cls, loss_box = fast_rcnn_loss(logits, deltas, torch.cat([s["labels"] for s in sampled]),
                                                torch.cat([s["regression_targets"] for s in sampled]))
            return [], {"loss_classifier": loss_cls, "loss_box_reg": loss_box}
        logits, deltas = self.predict(features, proposals, spatial_scale)
        detections = postprocess_detections(logits, deltas, proposals, image_sizes, score_thresh=self.score_thresh,
                                            nms_thresh=self.nms_thresh, detections_per_img=self.detections_per_img,
                                            weights=self.weights)
        return detections, {}
