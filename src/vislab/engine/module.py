"""Lightning modules: a model, its loss and its epoch metrics.

:class:`TaskModule` holds what every task shares (optimiser, ReduceLROnPlateau, per-epoch metric
collection that works under DDP, the metadata saved into checkpoints); a task subclass says only how
to compute the loss and the metrics:

* :class:`ClassificationModule` — single-label, cross-entropy, accuracy.
* :class:`MultiLabelModule` — multi-hot targets, BCE-with-logits, F1/mAP (``vislab.metrics.multilabel``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TaskModule(L.LightningModule):
    """Base module. Subclasses implement :meth:`compute_loss` and :meth:`metrics`.

    Args:
        model: the network; ``forward`` returns what :meth:`compute_loss` expects.
        lr, weight_decay: AdamW settings (``param_groups`` may override per group).
        lr_patience, lr_factor: ReduceLROnPlateau on ``monitor``.
        param_groups: optional callable ``model -> list[dict]`` of optimiser groups, e.g. a lower
            learning rate for deformable offsets; default: all trainable parameters.
        meta: JSON-able facts saved in each checkpoint under ``"vislab"`` (model name and kwargs,
            class names, image size, normalisation), enough to rebuild the model for inference.
        augment: optional module applied to the training images inside the training step (batched,
            on the training device), e.g. ``vislab.data.augment.RandomAffineBatch``.
    """

    def __init__(self, model: nn.Module, *, lr: float = 1e-3, weight_decay: float = 1e-4,
                 lr_patience: int = 2, lr_factor: float = 0.5, monitor: str = "val/loss",
                 param_groups: Callable[[nn.Module], list[dict[str, Any]]] | None = None,
                 meta: dict[str, Any] | None = None, augment: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.augment = augment
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_patience = lr_patience
        self.lr_factor = lr_factor
        self.monitor = monitor
        self.param_groups = param_groups
        self.meta = dict(meta or {})
        self._store: dict[str, dict[str, list[Tensor]]] = {}

    # -- to implement -----------------------------------------------------------------------
    def compute_loss(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(loss, outputs, targets)`` for one batch; outputs/targets feed :meth:`metrics`."""
        raise NotImplementedError

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        """Epoch metrics from all outputs and targets of the epoch (lower-case names)."""
        raise NotImplementedError

    # -- Lightning hooks --------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if self.augment is not None:
            batch = (self.augment(batch[0]), *batch[1:])
        loss, out, y = self.compute_loss(batch)
        self._remember("train", loss, out, y)
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False,
                 batch_size=len(y))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, out, y = self.compute_loss(batch)
        self._remember("val", loss, out, y)
        self.log("val/loss", loss.detach(), prog_bar=True, on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=len(y))

    def configure_optimizers(self) -> dict[str, Any]:
        groups: Iterable[Any]
        if self.param_groups is not None:
            groups = self.param_groups(self.model)
        else:
            groups = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=self.lr_factor,
                                                           patience=self.lr_patience)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": self.monitor}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vislab"] = self.meta

    # -- epoch metric collection ------------------------------------------------------------
    def _remember(self, split: str, loss: Tensor, out: Tensor, y: Tensor) -> None:
        s = self._store.setdefault(split, {"loss": [], "n": [], "out": [], "y": []})
        s["loss"].append(loss.detach().float() * len(y))
        s["n"].append(torch.tensor(float(len(y)), device=loss.device))
        s["out"].append(out.detach())
        s["y"].append(y.detach())

    def collect(self, split: str) -> dict[str, float]:
        """Loss and metrics of everything seen on ``split`` since the last call (gathered over DDP ranks)."""
        s = self._store.pop(split, None)
        if not s or not s["n"]:
            return {}
        loss_sum = torch.stack(s["loss"]).sum()
        n = torch.stack(s["n"]).sum()
        out = torch.cat(s["out"])
        y = torch.cat(s["y"])
        if self.trainer is not None and self.trainer.world_size > 1:
            loss_sum = self.all_gather(loss_sum).sum()
            n = self.all_gather(n).sum()
            out = self.all_gather(out).flatten(0, 1)
            y = self.all_gather(y).flatten(0, 1)
        result = {"loss": float(loss_sum / n)}
        result.update(self.metrics(out.float().cpu(), y.cpu()))
        return result


class ClassificationModule(TaskModule):
    """Single-label classification: ``batch = (images Tensor[B,C,H,W], labels Tensor[B])``; CE loss."""

    def __init__(self, model: nn.Module, *, label_smoothing: float = 0.0, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.label_smoothing = label_smoothing

    def compute_loss(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch[0], batch[1]
        logits = self.model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return loss, logits, y

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        return {"accuracy": float((outputs.argmax(1) == targets).float().mean())}


class MultiLabelModule(TaskModule):
    """Multi-label classification: ``batch = (images, multi-hot Tensor[B, L])``; BCE-with-logits."""

    def compute_loss(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch[0], batch[1]
        logits = self.model(x)
        return F.binary_cross_entropy_with_logits(logits, y.float()), logits, y

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        from vislab.metrics.multilabel import multilabel_metrics

        m = multilabel_metrics(outputs, targets, from_logits=True)
        return {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable[Any], device: torch.device | str = "cpu",
            *, desc: str | None = None) -> tuple[Tensor, Tensor]:
    """Run ``model`` in eval mode over ``loader``; return ``(outputs, targets)`` concatenated on CPU."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval().to(device)
    outs, ys = [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=desc is None or not _progress_enabled()):
        x, y = batch[0], batch[1]
        outs.append(model(x.to(device)).float().cpu())
        ys.append(y.cpu())
    model.train(was_training)
    return torch.cat(outs), torch.cat(ys)


def _progress_enabled() -> bool:
    import os

    return os.environ.get("VISLAB_PROGRESS", "1") != "0"
