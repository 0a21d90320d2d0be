"""Dice + cross-entropy loss for binary segmentation logits, equal to MONAI's ``DiceCELoss(sigmoid=True)``.

For logits ``x`` and a 0/1 target ``g`` of shape ``[B, 1, H, W]``, with ``p = sigmoid(x)`` and sums over the
pixels of each image (MONAI's default ``batch=False``):

    dice_b = 1 - (2 Σ p·g + smooth_nr) / (Σ p + Σ g + smooth_dr)          (squared_pred: Σ p² + Σ g²)
    loss   = lambda_dice · mean_b dice_b + lambda_ce · BCEWithLogits(x, g)  (mean over all pixels)

MONAI's cross-entropy term for a single channel is ``nn.BCEWithLogitsLoss`` on the logits (its
``DiceCELoss.bce``), not a two-class softmax; ``sigmoid=True`` only affects the Dice term. MONAI is a
test-only reference (tests/losses/test_dice_ce.py compares both ``squared_pred`` settings).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DiceCELoss", "dice_ce_loss", "soft_dice_loss"]


def _check(logits: Tensor, target: Tensor) -> None:
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise ValueError(f"logits must be Tensor[B, 1, H, W], got {tuple(logits.shape)}")
    if target.shape != logits.shape:
        raise ValueError(f"target must have the shape of logits {tuple(logits.shape)}, got {tuple(target.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}")


def soft_dice_loss(logits: Tensor, target: Tensor, *, squared_pred: bool = False, smooth_nr: float = 1e-5,
                   smooth_dr: float = 1e-5) -> Tensor:
    """Mean over the batch of ``1 - (2 Σ p·g + smooth_nr) / (Σ p + Σ g + smooth_dr)``, ``p = sigmoid(logits)``.

    Args:
        logits: ``Tensor[B, 1, H, W]``.
        target: ``Tensor[B, 1, H, W]`` with values 0/1 (bool or any number type).
        squared_pred: ``Σ p² + Σ g²`` in the denominator (V-Net's form).
    """
    _check(logits, target)
    p = logits.sigmoid()
    g = target.to(p.dtype)
    dims = (2, 3)
    intersection = (p * g).sum(dims)  # (B, 1)
    if squared_pred:
        denominator = (p * p).sum(dims) + (g * g).sum(dims)
    else:
        denominator = p.sum(dims) + g.sum(dims)
    dice = 1.0 - (2.0 * intersection + smooth_nr) / (denominator + smooth_dr)  # (B, 1)
    return dice.mean()


def dice_ce_loss(logits: Tensor, target: Tensor, *, squared_pred: bool = False, lambda_dice: float = 1.0,
                 lambda_ce: float = 1.0, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5) -> Tensor:
    """``lambda_dice · soft Dice + lambda_ce · BCE-with-logits`` (scalar) on ``Tensor[B, 1, H, W]`` logits and
    a 0/1 target of the same shape; see the module docstring."""
    if lambda_dice < 0 or lambda_ce < 0:
        raise ValueError(f"lambda_dice and lambda_ce must be >= 0, got {lambda_dice}, {lambda_ce}")
    dice = soft_dice_loss(logits, target, squared_pred=squared_pred, smooth_nr=smooth_nr, smooth_dr=smooth_dr)
    ce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
    return lambda_dice * dice + lambda_ce * ce


class DiceCELoss(nn.Module):
    """Module form of :func:`dice_ce_loss` (MONAI's ``DiceCELoss(sigmoid=True)`` arguments and defaults)."""

    def __init__(self, squared_pred: bool = False, lambda_dice: float = 1.0, lambda_ce: float = 1.0,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5) -> None:
        super().__init__()
        if lambda_dice < 0 or lambda_ce < 0:
            raise ValueError(f"lambda_dice and lambda_ce must be >= 0, got {lambda_dice}, {lambda_ce}")
        self.squared_pred = bool(squared_pred)
        self.lambda_dice = float(lambda_dice)
        self.lambda_ce = float(lambda_ce)
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return dice_ce_loss(logits, target, squared_pred=self.squared_pred, lambda_dice=self.lambda_dice,
                            lambda_ce=self.lambda_ce, smooth_nr=self.smooth_nr, smooth_dr=self.smooth_dr)

    def extra_repr(self) -> str:
        return (f"squared_pred={self.squared_pred}, lambda_dice={self.lambda_dice}, lambda_ce={self.lambda_ce}, "
                f"smooth_nr={self.smooth_nr}, smooth_dr={self.smooth_dr}")
