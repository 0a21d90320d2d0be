"""Learning-rate schedules: the one place vislab defines them.

:class:`WarmupCosine` is the factor a ``torch.optim.lr_scheduler.LambdaLR`` multiplies the base learning rate by
at each optimiser step: a linear warm-up over ``warmup`` steps (``(step + 1) / warmup``), then a half cosine
from 1 down to 0 at step ``total``, and 0 after it. It is a small picklable object (not a closure), so
``LambdaLR.state_dict()`` saves it and a resumed run continues the same schedule.

* :func:`warmup_cosine` builds the ``LambdaLR`` for an optimiser;
* :func:`warmup_steps` turns a warm-up given in epochs or as a fraction of training into steps;
* :func:`lightning_warmup_cosine` is what a Lightning module's ``configure_optimizers`` returns for it
  (stepped every batch over ``trainer.estimated_stepping_batches``);
* :class:`WarmupCosineClassification` is the classification task on it, with AdamW on :func:`no_decay_groups`
  (the usual ViT recipe; the ``vit`` experiment trains every variant with it).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from vislab.engine.module import ClassificationModule

__all__ = ["WarmupCosine", "WarmupCosineClassification", "lightning_warmup_cosine", "no_decay_groups", "warmup_cosine",
           "warmup_steps"]


def _check_int(name: str, v: Any, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < low:
        raise ValueError(f"{name} must be >= {low}, got {v}")
    return v


class WarmupCosine:
    """``step -> lr factor``: ``(step + 1) / warmup`` for ``step < warmup``, then
    ``0.5 * (1 + cos(pi * t))`` with ``t = (step - warmup) / (total - warmup)`` clipped to [0, 1].

    Args:
        warmup: warm-up steps (0: none; the first factor is then 1).
        total: steps of the whole schedule (warm-up included), >= 1.
    """

    def __init__(self, warmup: int, total: int) -> None:
        self.total = _check_int("total", total, 1)
        self.warmup = _check_int("warmup", warmup, 0)
        if warmup > total:
            raise ValueError(f"warmup ({warmup}) must not exceed total ({total}) steps")

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.5 * (1.0 + math.cos(math.pi * t))

    def __repr__(self) -> str:
        return f"WarmupCosine(warmup={self.warmup}, total={self.total})"


def warmup_steps(total: int, *, epochs: int | None = None, warmup_epochs: float | None = None,
                 fraction: float | None = None) -> int:
    """Warm-up length in steps for a schedule of ``total`` steps: ``warmup_epochs`` epochs of ``total / epochs``
    steps each (rounded; at most ``total - 1``), or ``fraction`` of ``total`` (truncated, at least 1). Exactly
    one of ``warmup_epochs`` (with ``epochs``) and ``fraction`` is given."""
    total = _check_int("total", total, 1)
    if (warmup_epochs is None) == (fraction is None):
        raise ValueError("give exactly one of warmup_epochs (with epochs) and fraction")
    if fraction is not None:
        if not (0.0 <= fraction <= 1.0):
            raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
        return min(total, max(1, int(fraction * total)))
    if epochs is None or epochs < 1:
        raise ValueError(f"warmup_epochs needs epochs >= 1, got {epochs}")
    if not (warmup_epochs >= 0 and math.isfinite(warmup_epochs)):
        raise ValueError(f"warmup_epochs must be a finite number >= 0, got {warmup_epochs}")
    per_epoch = total / epochs
    return max(0, min(total - 1, int(round(warmup_epochs * per_epoch))))


def warmup_cosine(optimizer: torch.optim.Optimizer, *, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over ``optimizer`` with the :class:`WarmupCosine` factor (one factor for every group)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total))


def lightning_warmup_cosine(optimizer: torch.optim.Optimizer, trainer: Any, *, warmup_epochs: float | None = None,
                            fraction: float | None = None) -> dict[str, Any]:
    """``configure_optimizers``'s return value for a warm-up + cosine schedule stepped every batch over the
    ``trainer``'s ``estimated_stepping_batches``; the warm-up is ``warmup_epochs`` epochs or ``fraction`` of
    all steps (see :func:`warmup_steps`)."""
    total = max(1, int(trainer.estimated_stepping_batches))
    warm = warmup_steps(total, epochs=max(1, int(trainer.max_epochs or 1)), warmup_epochs=warmup_epochs,
                        fraction=fraction)
    return {"optimizer": optimizer,
            "lr_scheduler": {"scheduler": warmup_cosine(optimizer, warmup=warm, total=total), "interval": "step"}}


def no_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices and conv kernels; none on biases, norms, the class token
    and the positional embedding (the usual ViT recipe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.endswith(("class_token", "pos_embedding")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class WarmupCosineClassification(ClassificationModule):
    """:class:`ClassificationModule` with AdamW (:func:`no_decay_groups`) and the warm-up + cosine schedule of
    :mod:`vislab.engine.schedules` (``warmup_epochs``, stepped every batch) instead of ReduceLROnPlateau."""

    def __init__(self, model: nn.Module, *, warmup_epochs: float = 0.0, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.warmup_epochs = float(warmup_epochs)

    def configure_optimizers(self) -> dict[str, Any]:
        opt = torch.optim.AdamW(no_decay_groups(self.model, self.weight_decay), lr=self.lr)
        return lightning_warmup_cosine(opt, self.trainer, warmup_epochs=self.warmup_epochs)
