"""Overlap metrics of binary masks, per image: IoU (Jaccard) and Dice (F1).

``iou(pred, target)`` = |P ∩ G| / |P ∪ G| and ``dice(pred, target)`` = 2 |P ∩ G| / (|P| + |G|) for each image
of a batch ``Tensor[B, H, W]``; an image where both masks are empty scores 1 (nothing to find, nothing
found), one where only one is empty scores 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_binary_masks", "dice", "iou", "overlap_counts"]


def check_binary_masks(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``(pred, target)`` as bool ``Tensor[B, H, W]``; a ValueError for other shapes or non-binary values."""
    if pred.ndim != 3:
        raise ValueError(f"pred must be Tensor[B, H, W], got {tuple(pred.shape)}")
    if target.shape != pred.shape:
        raise ValueError(f"target must have the shape of pred {tuple(pred.shape)}, got {tuple(target.shape)}")
    for name, t in (("pred", pred), ("target", target)):
        if t.dtype != torch.bool and t.numel() and not bool(((t == 0) | (t == 1)).all()):
            raise ValueError(f"{name} must be a binary mask (bool or 0/1 values); threshold it first")
    return pred.bool(), target.bool()


def overlap_counts(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(intersection, |pred|, |target|)``, each ``Tensor[B]`` float64, of binary masks ``Tensor[B, H, W]``.

    Masks may be bool or numbers with values 0/1 only (threshold probabilities first).
    """
    p, g = check_binary_masks(pred, target)
    inter = (p & g).flatten(1).sum(1).double()
    return inter, p.flatten(1).sum(1).double(), g.flatten(1).sum(1).double()


def iou(pred: Tensor, target: Tensor) -> Tensor:
    """Intersection over union per image: ``Tensor[B]`` float64 (1 where both masks are empty)."""
    inter, ps, gs = overlap_counts(pred, target)
    union = ps + gs - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def dice(pred: Tensor, target: Tensor) -> Tensor:
    """Dice coefficient per image: ``Tensor[B]`` float64 (1 where both masks are empty)."""
    inter, ps, gs = overlap_counts(pred, target)
    total = ps + gs
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))
