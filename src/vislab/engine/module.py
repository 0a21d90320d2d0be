"""Lightning modules: a model, its loss and its epoch metrics.

:class:`TaskModule` holds what every task shares (optimiser, ReduceLROnPlateau, per-epoch metric
collection that works under DDP, the metadata saved into checkpoints); a task subclass says only how
to compute the loss and the metrics:

* :class:`ClassificationModule` — single-label, cross-entropy, accuracy.
* :class:`MultiLabelModule` — multi-hot targets, BCE-with-logits, F1/mAP (``vislab.metrics.multilabel``).
* :class:`StructuredTaskModule` — the base of tasks whose outputs are not one tensor per batch
  (detection boxes, masks, regressed shifts and scales).

One design for epoch metrics
----------------------------
Every step calls ``compute_loss(batch) -> (loss, outputs, targets)``. ``loss`` is a tensor, or a dict
of tensors whose ``"loss"`` entry is the optimised total (every entry is averaged over the epoch and
lands in ``metrics.csv`` as ``train_<name>`` / ``val_<name>``, e.g. the four Faster R-CNN losses); in
evaluation it may be ``None``. ``outputs``/``targets`` are kept for the epoch (detached, on the CPU)
and ``metrics(outputs, targets)`` sees the whole split at once, so a metric that is not a mean over
batches (COCO mAP, a median error, a mean IoU) is computed exactly.

* **Tensor tasks** (``structured = False``): ``outputs``/``targets`` are tensors with the batch as
  first dimension; the epoch's tensors are concatenated.
* **Structured tasks** (``structured = True``): ``outputs`` is a list with one item per sample, of any
  structure (a dict of boxes/labels/scores, a mask, a dict of regressed values), or ``None`` to skip
  metrics for the batch (e.g. detection in training mode); ``targets`` is a list of per-sample dicts,
  each with an ``int`` ``"id"`` unique in its split.

Under DDP the results of all ranks are gathered before ``metrics`` is called, and every sample is
counted once: a ``DistributedSampler`` pads a split whose size is not a multiple of the world size
by repeating its first samples, so ``fit_stage`` shards the validation split without padding
(``shard_loaders``), the tensors of an evaluation split are put back in dataset order, and
structured results are also de-duplicated by ``"id"`` (and sorted by it). ``evaluate`` runs the same
``compute_loss``/``metrics`` path outside Lightning for the final test evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

LossOut = Tensor | dict[str, Tensor] | None


class TaskModule(L.LightningModule):
    """Base module. Subclasses implement :meth:`compute_loss` and :meth:`metrics`.

    Args:
        model: the network; ``forward`` returns what :meth:`compute_loss` expects.
        lr, weight_decay: AdamW settings (``param_groups`` may override per group).
        lr_patience, lr_factor: ReduceLROnPlateau on ``monitor``.
        monitor, monitor_mode: the logged quantity that early stopping, the best checkpoint and the
            LR schedule follow (``"val/loss"``/``"min"``, or e.g. ``"val/map50"``/``"max"``).
        param_groups: optional callable ``model -> list[dict]`` of optimiser groups, e.g. a lower
            learning rate for deformable offsets; default: all trainable parameters.
        meta: JSON-able facts saved in each checkpoint under ``"vislab"`` (model name and kwargs,
            class names, image size, normalisation), enough to rebuild the model for inference.
        augment: optional module applied to the training images inside the training step (batched,
            on the training device), e.g. ``vislab.data.augment.RandomAffineBatch``.
    """

    structured: ClassVar[bool] = False

    def __init__(self, model: nn.Module, *, lr: float = 1e-3, weight_decay: float = 1e-4,
                 lr_patience: int = 2, lr_factor: float = 0.5, monitor: str = "val/loss",
                 monitor_mode: str = "min",
                 param_groups: Callable[[nn.Module], list[dict[str, Any]]] | None = None,
                 meta: dict[str, Any] | None = None, augment: nn.Module | None = None) -> None:
        super().__init__()
        if monitor_mode not in ("min", "max"):
            raise ValueError(f"monitor_mode must be 'min' or 'max', got {monitor_mode!r}")
        self.model = model
        self.augment = augment
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_patience = lr_patience
        self.lr_factor = lr_factor
        self.monitor = monitor
        self.monitor_mode = monitor_mode
        self.param_groups = param_groups
        self.meta = dict(meta or {})
        self._store: dict[str, _EpochStore] = {}
        self.epoch_results: dict[str, dict[str, float]] = {}  # split -> metrics of the last finished epoch

    # -- to implement -----------------------------------------------------------------------
    def compute_loss(self, batch: Any) -> tuple[LossOut, Any, Any]:
        """Return ``(loss, outputs, targets)`` for one batch; outputs/targets feed :meth:`metrics`
        (see the module docstring for what each may be)."""
        raise NotImplementedError

    def metrics(self, outputs: Any, targets: Any) -> dict[str, float]:
        """Epoch metrics from all outputs and targets of the epoch (lower-case names)."""
        raise NotImplementedError

    # -- Lightning hooks --------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if self.augment is not None:
            batch = (self.augment(batch[0]), *batch[1:])
        loss, out, y = self.compute_loss(batch)
        total = self.remember("train", loss, out, y)
        if total is None:
            raise RuntimeError(f"{type(self).__name__}.compute_loss returned no loss in training")
        self.log("train/loss", total.detach(), prog_bar=True, on_step=True, on_epoch=False,
                 batch_size=_batch_len(y))
        return total

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, out, y = self.compute_loss(batch)
        self.remember("val", loss, out, y)

    def on_validation_epoch_end(self) -> None:
        if self.trainer is not None and self.trainer.sanity_checking:
            self._store.pop("val", None)
            return
        val = self.collect("val")
        self.epoch_results["val"] = val
        for k, v in val.items():  # identical on every rank (gathered), so no sync is needed
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.log(f"val/{k}", float(v), prog_bar=k in ("loss", self.monitor.split("/", 1)[-1]),
                         on_step=False, on_epoch=True, sync_dist=False, rank_zero_only=False)

    def configure_optimizers(self) -> dict[str, Any]:
        groups: Iterable[Any]
        if self.param_groups is not None:
            groups = self.param_groups(self.model)
        else:
            groups = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=self.monitor_mode, factor=self.lr_factor,
                                                           patience=self.lr_patience)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": self.monitor}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vislab"] = self.meta

    # -- epoch metric collection ------------------------------------------------------------
    def remember(self, split: str, loss: LossOut, out: Any, y: Any) -> Tensor | None:
        """Keep one batch's losses, outputs and targets for the epoch; return the total loss (or None)."""
        s = self._store.setdefault(split, _EpochStore())
        n = _batch_len(y)
        losses = _loss_dict(loss)
        for k, v in losses.items():
            s.loss_sums[k] = s.loss_sums.get(k, 0.0) + float(v.detach()) * n
        s.n += n
        if out is not None:
            if self.structured:
                if not isinstance(out, (list, tuple)) or not isinstance(y, (list, tuple)) or len(out) != len(y):
                    raise TypeError("a structured task's compute_loss must return outputs and targets as lists "
                                    "with one item per sample")
                s.out.extend(_to_cpu(o) for o in out)
                s.y.extend(_to_cpu(t) for t in y)
            else:
                s.out.append(out.detach())
                s.y.append(y.detach())
        return losses.get("loss")

    def collect(self, split: str, *, gather: bool = True) -> dict[str, float]:
        """Loss and metrics of everything seen on ``split`` since the last call (gathered over DDP ranks
        unless ``gather`` is false, each sample once)."""
        s = self._store.pop(split, None)
        if s is None or s.n == 0:
            return {}
        world = self.trainer.world_size if gather and self._trainer is not None else 1
        names = sorted(s.loss_sums)
        sums = torch.tensor([s.loss_sums[k] for k in names] + [float(s.n)], dtype=torch.float64)
        if world > 1:
            sums = self.trainer.strategy.reduce(sums.to(self.device), reduce_op="sum").cpu()
        result = {k: float(sums[i] / sums[-1]) for i, k in enumerate(names)}
        if not s.out:
            return result
        if self.structured:
            outs, ys = s.out, s.y
            if world > 1:
                gathered: list[Any] = [None] * world
                torch.distributed.all_gather_object(gathered, (outs, ys))
                outs = [o for g in gathered for o in g[0]]
                ys = [t for g in gathered for t in g[1]]
            outs, ys = dedupe_by_id(outs, ys)
        else:
            out, y = torch.cat(s.out), torch.cat(s.y)
            if world > 1:
                out, y = _gather_rows(out, y, world, in_order=split != "train")
            outs, ys = out.float().cpu(), y.cpu()
        result.update(self.metrics(outs, ys))
        return result


def _gather_rows(out: Tensor, y: Tensor, world: int, *, in_order: bool) -> tuple[Tensor, Tensor]:
    """All ranks' rows. For an evaluation split (sharded without padding: rank ``r`` holds samples
    ``r, r + W, ...``) they are put back in dataset order."""
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, (out.cpu(), y.cpu()))
    outs = torch.cat([g[0] for g in gathered])
    ys = torch.cat([g[1] for g in gathered])
    if in_order:
        n = len(outs)
        index = torch.cat([torch.arange(r, n, world) for r in range(world)])
        outs = torch.empty_like(outs).index_copy_(0, index, outs)
        ys = torch.empty_like(ys).index_copy_(0, index, ys)
    return outs, ys


@dataclass
class _EpochStore:
    loss_sums: dict[str, float] = field(default_factory=dict)
    n: int = 0
    out: list[Any] = field(default_factory=list)
    y: list[Any] = field(default_factory=list)


def _loss_dict(loss: LossOut) -> dict[str, Tensor]:
    if loss is None:
        return {}
    if isinstance(loss, Tensor):
        return {"loss": loss}
    if isinstance(loss, dict):
        if "loss" not in loss:
            raise KeyError(f"a loss dict needs a 'loss' entry (the optimised total); got keys {sorted(loss)}")
        return loss
    raise TypeError(f"compute_loss must return the loss as a Tensor, a dict of Tensors or None, got {type(loss)}")


def _batch_len(y: Any) -> int:
    if isinstance(y, Tensor):
        return int(y.shape[0]) if y.ndim else 1
    return len(y)


def _to_cpu(obj: Any) -> Any:
    """Detach and move every tensor inside nested dicts/lists/tuples to the CPU."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _sample_id(t: Any) -> int:
    if not isinstance(t, dict) or "id" not in t:
        raise KeyError("each target of a structured task must be a dict with an int 'id' unique in its split")
    i = t["id"]
    return int(i.item() if isinstance(i, Tensor) else i)


def dedupe_by_id(outputs: list[Any], targets: list[Any]) -> tuple[list[Any], list[Any]]:
    """Keep the first result of every sample id, sorted by id (drops DDP sampler padding duplicates)."""
    seen: dict[int, int] = {}
    for k, t in enumerate(targets):
        seen.setdefault(_sample_id(t), k)
    order = [seen[i] for i in sorted(seen)]
    return [outputs[k] for k in order], [targets[k] for k in order]


class StructuredTaskModule(TaskModule):
    """Base of tasks with per-sample results of any structure (see the module docstring).

    ``compute_loss`` returns ``(loss, outputs, targets)`` with ``outputs`` a list of per-sample results
    (or ``None``) and ``targets`` a list of per-sample dicts with an ``int`` ``"id"``; ``metrics`` gets
    the whole split as two lists, sorted by id, each sample once.
    """

    structured = True


@dataclass
class EvalResult:
    """What :func:`evaluate` returns: the split's metrics (with ``"loss"`` when there is one) and the
    outputs/targets they were computed from (lists for structured tasks, tensors otherwise)."""

    metrics: dict[str, float]
    outputs: Any
    targets: Any


@torch.no_grad()
def evaluate(module: TaskModule, loader: Iterable[Any], *, device: torch.device | str = "cpu",
             desc: str | None = None) -> EvalResult:
    """Run ``module.compute_loss``/``module.metrics`` over ``loader`` in eval mode, outside Lightning:
    the same metric path as validation inside ``fit_stage``, for the final test evaluation."""
    from tqdm.auto import tqdm

    was_training = module.training
    module.eval().to(device)
    split = "_evaluate"
    module._store.pop(split, None)
    try:
        for batch in tqdm(loader, desc=desc, leave=False, disable=desc is None or not _progress_enabled()):
            batch = _to_device(batch, device)
            loss, out, y = module.compute_loss(batch)
            module.remember(split, loss, out, y)
        store = module._store.get(split)
        outputs = targets = None
        if store is not None and store.out:
            if module.structured:
                outputs, targets = dedupe_by_id(store.out, store.y)
            else:
                outputs, targets = torch.cat(store.out).float().cpu(), torch.cat(store.y).cpu()
        metrics = module.collect(split, gather=False)
    finally:
        module._store.pop(split, None)
        module.train(was_training)
    return EvalResult(metrics=metrics, outputs=outputs, targets=targets)


def _to_device(obj: Any, device: torch.device | str) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


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
    """Progress bars only on a terminal (or with VISLAB_PROGRESS=1), as for training."""
    from vislab.engine.fit import progress_bar_enabled

    return progress_bar_enabled()
