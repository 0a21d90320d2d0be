"""Box maths for detection, boxes in ``(x1, y1, x2, y2)`` pixel coordinates (xyxy).

The box parametrisation of R-CNN (Girshick et al., 2014) used by Faster R-CNN (Ren et al., 2015):
a box ``(x, y, w, h)`` (centre, width, height) relative to a reference box (an anchor or a proposal)
``(xa, ya, wa, ha)`` is the four numbers

    dx = wx · (x − xa) / wa        dy = wy · (y − ya) / ha
    dw = ww · log(w / wa)          dh = wh · log(h / ha)

with per-coordinate weights ``(wx, wy, ww, wh)``: ``(1, 1, 1, 1)`` for the RPN and ``(10, 10, 5, 5)``
for the box head (which scales the small head targets to roughly unit variance). Semantics are
exactly those of torchvision's ``BoxCoder.encode_single`` / ``decode_single``:

- widths are ``x2 − x1`` (no "+1" of the original Caffe code), centres ``x1 + 0.5·w``;
- on decoding, ``dw`` and ``dh`` (after dividing by their weights) are clamped from above at
  ``clip = log(1000 / 16)`` so that ``exp`` cannot overflow for a wild prediction.

IoU, clipping and small-box removal wrap ``torchvision.ops`` (SPEC: NMS and RoI ops come from there).
"""

from __future__ import annotations

import math

import torch
import torchvision
from torch import Tensor

__all__ = ["box_iou", "clip_boxes_to_image", "decode_boxes", "encode_boxes", "remove_small_boxes"]

Weights = tuple[float, float, float, float]
DEFAULT_CLIP = math.log(1000.0 / 16)


def _check_weights(weights: Weights) -> tuple[float, float, float, float]:
    if len(weights) != 4:
        raise ValueError(f"weights must be 4 numbers (wx, wy, ww, wh), got {weights!r}")
    if any(float(w) <= 0 for w in weights):
        raise ValueError(f"weights must be positive, got {weights!r}")
    wx, wy, ww, wh = (float(w) for w in weights)
    return wx, wy, ww, wh


def _check_boxes(name: str, boxes: Tensor) -> None:
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must be Tensor[N, 4], got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise TypeError(f"{name} must be a floating-point Tensor, got {boxes.dtype}")


def encode_boxes(boxes: Tensor, anchors: Tensor, weights: Weights = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Regression targets of ``boxes`` relative to ``anchors`` (one box per anchor).

    Args:
        boxes: ``Tensor[N, 4]`` xyxy, the boxes to encode (e.g. the ground truth matched to each anchor).
        anchors: ``Tensor[N, 4]`` xyxy, the reference boxes (anchors or proposals), positive sizes.
        weights: ``(wx, wy, ww, wh)``; RPN ``(1, 1, 1, 1)``, box head ``(10, 10, 5, 5)``.

    Returns:
        ``Tensor[N, 4]`` of ``(dx, dy, dw, dh)``, in ``anchors``' dtype. Equal to torchvision's
        ``BoxCoder(weights).encode_single(boxes, anchors)``.
    """
    _check_boxes("boxes", boxes)
    _check_boxes("anchors", anchors)
    if boxes.shape[0] != anchors.shape[0]:
        raise ValueError(f"boxes and anchors must have the same length, got {boxes.shape[0]} and {anchors.shape[0]}")
    wx, wy, ww, wh = _check_weights(weights)
    boxes = boxes.to(anchors.dtype)

    anchor_w = anchors[:, 2] - anchors[:, 0]
    anchor_h = anchors[:, 3] - anchors[:, 1]
    anchor_cx = anchors[:, 0] + 0.5 * anchor_w
    anchor_cy = anchors[:, 1] + 0.5 * anchor_h

    box_w = boxes[:, 2] - boxes[:, 0]
    box_h = boxes[:, 3] - boxes[:, 1]
    box_cx = boxes[:, 0] + 0.5 * box_w
    box_cy = boxes[:, 1] + 0.5 * box_h

    dx = wx * (box_cx - anchor_cx) / anchor_w
    dy = wy * (box_cy - anchor_cy) / anchor_h
    dw = ww * torch.log(box_w / anchor_w)
    dh = wh * torch.log(box_h / anchor_h)
    return torch.stack((dx, dy, dw, dh), dim=1)  # (N, 4)


def decode_boxes(deltas: Tensor, anchors: Tensor, weights: Weights = (1.0, 1.0, 1.0, 1.0),
                 clip: float = DEFAULT_CLIP) -> Tensor:
    """Boxes described by ``deltas`` relative to ``anchors``: the inverse of :func:`encode_boxes`.

    Args:
        deltas: ``Tensor[N, 4]`` of ``(dx, dy, dw, dh)``, or ``Tensor[N, K, 4]`` with ``K`` boxes per
            anchor (the box head's class-specific deltas, ``K = num_classes``).
        anchors: ``Tensor[N, 4]`` xyxy reference boxes.
        weights: the weights the deltas were encoded with.
        clip: upper bound of ``dw / ww`` and ``dh / wh`` before ``exp`` (torchvision's ``bbox_xform_clip``).

    Returns:
        ``Tensor[N, 4]`` (or ``Tensor[N, K, 4]``) xyxy boxes in ``deltas``' dtype. Equal to torchvision's
        ``BoxCoder(weights, clip).decode_single(deltas.reshape(N, 4 * K), anchors)`` (reshaped).
    """
    if not isinstance(deltas, Tensor):
        raise TypeError(f"deltas must be a Tensor, got {type(deltas).__name__}")
    if deltas.dim() not in (2, 3) or deltas.shape[-1] != 4:
        raise ValueError(f"deltas must be Tensor[N, 4] or Tensor[N, K, 4], got {tuple(deltas.shape)}")
    _check_boxes("anchors", anchors)
    if deltas.shape[0] != anchors.shape[0]:
        raise ValueError(f"deltas and anchors must have the same length, got {deltas.shape[0]} "
                         f"and {anchors.shape[0]}")
    wx, wy, ww, wh = _check_weights(weights)
    anchors = anchors.to(deltas.dtype)
    per_anchor = deltas.dim() == 2
    if per_anchor:
        deltas = deltas[:, None]  # (N, 1, 4)

    anchor_w = (anchors[:, 2] - anchors[:, 0])[:, None]  # (N, 1)
    anchor_h = (anchors[:, 3] - anchors[:, 1])[:, None]
    anchor_cx = anchors[:, 0, None] + 0.5 * anchor_w
    anchor_cy = anchors[:, 1, None] + 0.5 * anchor_h

    dx = deltas[..., 0] / wx  # (N, K)
    dy = deltas[..., 1] / wy
    dw = torch.clamp(deltas[..., 2] / ww, max=clip)
    dh = torch.clamp(deltas[..., 3] / wh, max=clip)

    cx = dx * anchor_w + anchor_cx
    cy = dy * anchor_h + anchor_cy
    half_w = 0.5 * (torch.exp(dw) * anchor_w)
    half_h = 0.5 * (torch.exp(dh) * anchor_h)
    boxes = torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=2)  # (N, K, 4)
    return boxes[:, 0] if per_anchor else boxes


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """``Tensor[N, 4]``, ``Tensor[M, 4]`` xyxy → ``Tensor[N, M]`` intersection over union (``torchvision.ops``)."""
    _check_boxes("boxes1", boxes1)
    _check_boxes("boxes2", boxes2)
    return torchvision.ops.box_iou(boxes1, boxes2)


def clip_boxes_to_image(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clamp ``Tensor[N, 4]`` xyxy boxes to ``[0, W] × [0, H]`` for ``image_size = (H, W)``."""
    _check_boxes("boxes", boxes)
    if len(image_size) != 2:
        raise ValueError(f"image_size must be (H, W), got {image_size!r}")
    return torchvision.ops.clip_boxes_to_image(boxes, (int(image_size[0]), int(image_size[1])))


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices (``Tensor[K]`` int64, ascending) of the boxes whose width and height are both ``>= min_size``."""
    _check_boxes("boxes", boxes)
    return torchvision.ops.remove_small_boxes(boxes, float(min_size))
