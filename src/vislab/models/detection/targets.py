"""Training targets: which anchors / RoIs are foreground, which background, and what they regress to.

- :func:`label_anchors`: the RPN rule (Ren et al., 2015, §3.1.2). An anchor is positive if its IoU with
  some ground-truth box is ``>= fg_iou`` (0.7), or if it is (one of, ties included) the anchors with the
  highest IoU for some ground-truth box; negative if its best IoU is ``< bg_iou`` (0.3) and it is not
  positive; ignored otherwise. Equal to torchvision's ``Matcher(0.7, 0.3, allow_low_quality_matches=True)``
  followed by its RPN's labelling.
- :func:`sample_labels`: the balanced sampler: at most ``batch_size_per_image · positive_fraction``
  positives drawn at random, the rest of the batch negatives (256 anchors at ≤ 0.5 positive for the
  RPN; 128 RoIs at 0.25 foreground for the head). The same draws as torchvision's
  ``BalancedPositiveNegativeSampler`` for the same random state (two ``randperm`` per image).
- :func:`assign_roi_targets` / :func:`sample_rois`: the Fast R-CNN rule: RoIs are the proposals plus
  the ground-truth boxes themselves (as torchvision appends them); a RoI is foreground (label = the class
  of its best-matching box) when its best IoU is ``>= fg_iou`` (0.5), background when it is in
  ``[0, bg_iou)`` (0.5), ignored in between (empty when ``bg_iou == fg_iou``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vislab.ops.boxes import box_iou, encode_boxes

__all__ = ["assign_roi_targets", "label_anchors", "sample_labels", "sample_rois"]


def _check_iou_thresholds(fg_iou: float, bg_iou: float) -> None:
    if not 0.0 <= bg_iou <= fg_iou <= 1.0:
        raise ValueError(f"need 0 <= bg_iou <= fg_iou <= 1, got fg_iou={fg_iou}, bg_iou={bg_iou}")


def _check_boxes(name: str, boxes: Tensor) -> None:
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"{name} must be Tensor[N, 4], got {shape}")


def _match(iou: Tensor, fg_iou: float, bg_iou: float, allow_low_quality_matches: bool) -> tuple[Tensor, Tensor]:
    """``iou``: ``Tensor[G, N]`` (gt × candidates) → labels ``Tensor[N]`` (1 / 0 / −1) and the best gt index."""
    best_iou, best_gt = iou.max(dim=0)  # (N,), (N,): the best ground-truth box of each candidate
    labels = torch.full_like(best_gt, -1)
    labels[best_iou >= fg_iou] = 1
    labels[best_iou < bg_iou] = 0
    if allow_low_quality_matches:
        # the best candidate(s) of every gt box are positive even below fg_iou (ties all count;
        # like torchvision and py-faster-rcnn this includes a best IoU of 0)
        best_per_gt = iou.max(dim=1).values  # (G,)
        candidates = torch.where(iou == best_per_gt[:, None])[1]
        labels[candidates] = 1
    return labels, best_gt


def label_anchors(anchors: Tensor, gt_boxes: Tensor, fg_iou: float = 0.7, bg_iou: float = 0.3, *,
                  allow_low_quality_matches: bool = True) -> tuple[Tensor, Tensor]:
    """RPN labels of the anchors of one image.

    Args:
        anchors: ``Tensor[N, 4]`` xyxy.
        gt_boxes: ``Tensor[G, 4]`` xyxy ground-truth boxes; ``G = 0`` (an image without objects) makes every
            anchor background.
        fg_iou, bg_iou: IoU ``>= fg_iou`` is positive, ``< bg_iou`` negative, in between ignored.
        allow_low_quality_matches: also make each gt box's best anchor(s) positive (the paper's rule).

    Returns:
        ``labels``: ``Tensor[N]`` int64, 1 (object), 0 (background), −1 (ignored);
        ``matched``: ``Tensor[N]`` int64, the index of the gt box each positive anchor regresses to
        (its highest-IoU box), −1 for anchors that are not positive.
    """
    _check_boxes("anchors", anchors)
    _check_boxes("gt_boxes", gt_boxes)
    _check_iou_thresholds(fg_iou, bg_iou)
    N = anchors.shape[0]
    if gt_boxes.shape[0] == 0:
        return (torch.zeros(N, dtype=torch.int64, device=anchors.device),
                torch.full((N,), -1, dtype=torch.int64, device=anchors.device))
    if N == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=anchors.device)
        return empty, empty.clone()
    iou = box_iou(gt_boxes.to(anchors.dtype), anchors)  # (G, N)
    labels, best_gt = _match(iou, fg_iou, bg_iou, allow_low_quality_matches)
    matched = torch.where(labels == 1, best_gt, torch.full_like(best_gt, -1))
    return labels, matched


def sample_labels(labels: Tensor, batch_size_per_image: int, positive_fraction: float,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Balanced random subset of one image's candidates.

    Args:
        labels: ``Tensor[N]``: ``>= 1`` positive (object / class), 0 negative, −1 ignored.
        batch_size_per_image: the number of candidates kept (fewer if there are not enough).
        positive_fraction: at most ``int(batch_size_per_image · positive_fraction)`` of them positive;
            negatives fill the rest.
        generator: random source for the two permutations (default: torch's global generator, which is
            what torchvision's sampler uses, so the same seed gives the same draws).

    Returns:
        ``(pos_mask, neg_mask)``: ``Tensor[N]`` bool each, disjoint.
    """
    if not isinstance(labels, Tensor) or labels.dim() != 1:
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be Tensor[N], got {got}")
    if batch_size_per_image < 1:
        raise ValueError(f"batch_size_per_image must be >= 1, got {batch_size_per_image}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    positive = torch.where(labels >= 1)[0]
    negative = torch.where(labels == 0)[0]
    num_pos = min(positive.numel(), int(batch_size_per_image * positive_fraction))
    num_neg = min(negative.numel(), batch_size_per_image - num_pos)
    pos_mask = torch.zeros_like(labels, dtype=torch.bool)
    neg_mask = torch.zeros_like(labels, dtype=torch.bool)
    pos_mask[positive[_randperm(positive.numel(), generator, labels.device)[:num_pos]]] = True
    neg_mask[negative[_randperm(negative.numel(), generator, labels.device)[:num_neg]]] = True
    return pos_mask, neg_mask


def _randperm(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    if generator is None:
        return torch.randperm(n, device=device)
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


def assign_roi_targets(rois: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *, fg_iou: float = 0.5,
                       bg_iou: float = 0.5) -> tuple[Tensor, Tensor]:
    """Fast R-CNN labels of one image's RoIs (no low-quality matches).

    Args:
        rois: ``Tensor[R, 4]`` xyxy (proposals, usually with the gt boxes appended).
        gt_boxes: ``Tensor[G, 4]``; gt_labels: ``Tensor[G]`` int64 classes ``>= 1``.

    Returns:
        ``labels``: ``Tensor[R]`` int64: the matched class (IoU ``>= fg_iou``), 0 (IoU ``< bg_iou``) or −1;
        ``matched``: ``Tensor[R]`` int64, the best gt index of each RoI (0 when ``G = 0``), valid for the
        foreground RoIs.
    """
    _check_boxes("rois", rois)
    _check_boxes("gt_boxes", gt_boxes)
    _check_iou_thresholds(fg_iou, bg_iou)
    if gt_labels.shape != (gt_boxes.shape[0],):
        raise ValueError(f"gt_labels must be Tensor[{gt_boxes.shape[0]}], got {tuple(gt_labels.shape)}")
    R = rois.shape[0]
    if gt_boxes.shape[0] == 0 or R == 0:
        zeros = torch.zeros(R, dtype=torch.int64, device=rois.device)
        return zeros, zeros.clone()
    iou = box_iou(gt_boxes.to(rois.dtype), rois)  # (G, R)
    fg_bg, best_gt = _match(iou, fg_iou, bg_iou, allow_low_quality_matches=False)
    labels = gt_labels.to(torch.int64)[best_gt]
    labels[fg_bg == 0] = 0
    labels[fg_bg == -1] = -1
    return labels, best_gt


def sample_rois(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, *, fg_iou: float = 0.5,
                bg_iou: float = 0.5, batch_size_per_image: int = 128, positive_fraction: float = 0.25,
                weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """The RoIs one image trains the box head on.

    The gt boxes are appended to the proposals (so that early in training there are foreground RoIs),
    every RoI is labelled by :func:`assign_roi_targets`, and :func:`sample_labels` keeps
    ``batch_size_per_image`` of them at ``positive_fraction`` foreground. Kept RoIs stay in index order.

    Returns a dict: ``rois`` ``Tensor[S, 4]``, ``labels`` ``Tensor[S]`` int64 (0 = background),
    ``regression_targets`` ``Tensor[S, 4]`` (:func:`encode_boxes` of the matched gt box with ``weights``;
    zeros for background RoIs, which have no box loss), ``matched`` ``Tensor[S]`` (gt index, valid where
    ``labels > 0``) and ``is_gt`` ``Tensor[S]`` bool (the RoI is an appended gt box).
    """
    _check_boxes("proposals", proposals)
    gt_boxes = gt_boxes.to(proposals.dtype)
    rois = torch.cat([proposals, gt_boxes])  # (P + G, 4)
    labels, matched = assign_roi_targets(rois, gt_boxes, gt_labels, fg_iou=fg_iou, bg_iou=bg_iou)
    pos_mask, neg_mask = sample_labels(labels, batch_size_per_image, positive_fraction, generator=generator)
    keep = torch.where(pos_mask | neg_mask)[0]
    rois, labels, matched = rois[keep], labels[keep], matched[keep]
    is_gt = keep >= proposals.shape[0]
    targets = torch.zeros_like(rois)
    fg = labels > 0
    if fg.any():
        targets[fg] = encode_boxes(gt_boxes[matched[fg]], rois[fg], weights)
    return {"rois": rois, "labels": labels, "regression_targets": targets, "matched": matched, "is_gt": is_gt}
