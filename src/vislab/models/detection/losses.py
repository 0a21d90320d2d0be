"""The four Faster R-CNN losses, normalised as torchvision normalises them.

Paper (Ren et al., 2015, eq. 1): ``L = 1/N_cls Σ L_cls(p_i, p_i*) + λ 1/N_reg Σ p_i* L_reg(t_i, t_i*)``.
torchvision (and so vislab) uses, for a batch of images:

- RPN objectness: binary cross-entropy on the objectness logit, **mean over the sampled anchors** of all
  images (positives and negatives, ≤ 256 per image).
- RPN box: smooth-L1 (β = 1/9) of the ``(dx, dy, dw, dh)`` deltas, **summed over the sampled positive
  anchors and divided by the number of sampled anchors** (positives + negatives). This plays the role of
  the paper's ``λ / N_reg`` with ``N_reg ≈ N_cls`` and ``λ = 1``.
- Head classifier: cross-entropy over ``num_classes`` (background = 0), **mean over the sampled RoIs**.
- Head box: smooth-L1 (β = 1/9) of the positive RoIs' deltas *for their ground-truth class* (weights
  10, 10, 5, 5), **summed and divided by the number of sampled RoIs**.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["fast_rcnn_loss", "rpn_loss"]

SMOOTH_L1_BETA = 1.0 / 9


def rpn_loss(objectness: Tensor, deltas: Tensor, labels: Tensor, regression_targets: Tensor, pos_mask: Tensor,
             neg_mask: Tensor) -> tuple[Tensor, Tensor]:
    """RPN losses over the anchors of a whole batch (images concatenated).

    Args:
        objectness: ``Tensor[N]`` logits.
        deltas: ``Tensor[N, 4]`` predicted deltas.
        labels: ``Tensor[N]`` 1 / 0 / −1 (only sampled anchors are used).
        regression_targets: ``Tensor[N, 4]`` (only the sampled positives are read).
        pos_mask, neg_mask: ``Tensor[N]`` bool, the sampled positives and negatives.

    Returns:
        ``(loss_objectness, loss_rpn_box_reg)``: BCE mean over sampled anchors; smooth-L1 (β = 1/9) summed
        over sampled positives / number of sampled anchors.
    """
    n = objectness.shape[0]
    for name, t, shape in (("deltas", deltas, (n, 4)), ("labels", labels, (n,)),
                           ("regression_targets", regression_targets, (n, 4)), ("pos_mask", pos_mask, (n,)),
                           ("neg_mask", neg_mask, (n,))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must be Tensor{list(shape)}, got {tuple(t.shape)}")
    pos = torch.where(pos_mask)[0]
    sampled = torch.cat([pos, torch.where(neg_mask)[0]])
    box_loss = F.smooth_l1_loss(deltas[pos], regression_targets[pos], beta=SMOOTH_L1_BETA,
                                reduction="sum") / sampled.numel()
    objectness_loss = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled].to(objectness.dtype))
    return objectness_loss, box_loss


def fast_rcnn_loss(class_logits: Tensor, box_deltas: Tensor, labels: Tensor,
                   regression_targets: Tensor) -> tuple[Tensor, Tensor]:
    """Box-head losses over the sampled RoIs of a whole batch.

    Args:
        class_logits: ``Tensor[R, K]`` (``K = num_classes`` including background 0).
        box_deltas: ``Tensor[R, K·4]`` class-specific deltas.
        labels: ``Tensor[R]`` int64 in ``[0, K)``.
        regression_targets: ``Tensor[R, 4]`` (read for ``labels > 0`` only).

    Returns:
        ``(loss_classifier, loss_box_reg)``: cross-entropy mean over the RoIs; smooth-L1 (β = 1/9) of the
        positives' deltas of their own class, summed / ``R``.
    """
    R, K = class_logits.shape
    if tuple(box_deltas.shape) != (R, 4 * K):
        raise ValueError(f"box_deltas must be Tensor[{R}, {4 * K}], got {tuple(box_deltas.shape)}")
    if tuple(labels.shape) != (R,) or tuple(regression_targets.shape) != (R, 4):
        raise ValueError(f"labels must be Tensor[{R}] and regression_targets Tensor[{R}, 4], got "
                         f"{tuple(labels.shape)} and {tuple(regression_targets.shape)}")
    classification_loss = F.cross_entropy(class_logits, labels)
    pos = torch.where(labels > 0)[0]
    deltas = box_deltas.reshape(R, K, 4)  # (R, K, 4)
    box_loss = F.smooth_l1_loss(deltas[pos, labels[pos]], regression_targets[pos], beta=SMOOTH_L1_BETA,
                                reduction="sum") / labels.numel()
    return classification_loss, box_loss
