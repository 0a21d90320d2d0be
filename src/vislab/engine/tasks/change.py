"""The Lightning task of the change-detection network (:class:`vislab.models.change.ChangeNet`): the weighted
regression + change-type loss of :func:`vislab.models.change.change_loss`, pair augmentation during
training, a one-cycle (or plateau) schedule, and per-epoch type accuracy and median errors."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vislab.engine.module import TaskModule
from vislab.metrics.registration import registration_metrics
from vislab.models.change import ChangeNet, augment_pairs, change_loss

__all__ = ["ChangeTask", "targets_as_truth"]


class ChangeTask(TaskModule):
    """``batch = (x Tensor[B, 2, S, S], y Tensor[B, 4] = (dx, dy, log_s, type))``; the loss of
    :func:`vislab.models.change.change_loss` (with its parts logged); epoch metrics: type accuracy (the
    head), median translation error (px) and median scale error (%) of the regressed values."""

    def __init__(self, model: ChangeNet, *, loss_weights: tuple[float, float, float] = (1.0, 1.0, 0.2),
                 augment_pairs: bool = True, shift_threshold: float = 2.0, scale_threshold: float = 0.04,
                 schedule: str = "onecycle", **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if schedule not in ("onecycle", "plateau"):
            raise ValueError(f"schedule must be 'onecycle' or 'plateau', got {schedule!r}")
        self.schedule = schedule
        self.loss_weights = loss_weights
        self.augment_pairs = augment_pairs
        self.shift_threshold = shift_threshold
        self.scale_threshold = scale_threshold

    def compute_loss(self, batch: Any) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        x, y = batch[0], batch[1]
        if self.training and self.augment_pairs:
            x, y = augment_pairs(x, y)
        out = self.model(x)
        w_shift, w_scale, w_type = self.loss_weights
        losses = change_loss(self.model, out, y, shift_weight=w_shift, scale_weight=w_scale, type_weight=w_type)
        return losses, out, y

    def configure_optimizers(self) -> dict[str, Any]:
        """``plateau``: the engine's AdamW + ReduceLROnPlateau. ``onecycle``: AdamW with a one-cycle schedule
        over all planned steps (warm-up for 15 %, cosine decay to ~0): far better than a constant rate when
        the budget is a few epochs."""
        if self.schedule == "plateau":
            return super().configure_optimizers()
        opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=self.lr,
                                weight_decay=self.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=total, pct_start=0.15)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        d = self.model.decode(outputs)
        m = registration_metrics(d, targets_as_truth(targets), shift_threshold=self.shift_threshold,
                                 scale_threshold=self.scale_threshold, pred_types=d["type"])
        return {k: m[k] for k in ("type_accuracy", "translation_error_median", "scale_error_median")}


def _truth(targets: Tensor) -> dict[str, Tensor]:
    return {"dx": targets[:, 0], "dy": targets[:, 1], "log_s": targets[:, 2], "type": targets[:, 3].long()}


def targets_as_truth(targets: Tensor) -> dict[str, Tensor]:
    """``Tensor[N, 4] = (dx, dy, log_s, type)`` as the truth dict of
    :func:`vislab.metrics.registration.registration_metrics`."""
    return {"dx": targets[:, 0], "dy": targets[:, 1], "log_s": targets[:, 2], "type": targets[:, 3].long()}
