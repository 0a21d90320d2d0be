"""Training one (variant, stage) with Lightning: seeded, checkpointed, resumable, DDP-ready.

``fit_stage`` is the one call experiments make. It builds a Trainer with early stopping,
ReduceLROnPlateau (in the module), best + last checkpoints in ``checkpoints/[s<seed>/]VARIANT[-STAGE]/``, one
``metrics.csv`` row per epoch, precise BatchNorm statistics when ``cfg.precise_bn`` asks, and a
progress bar; resumes from ``last.ckpt`` under ``--resume``; and
skips a stage that already finished (loading its best weights), so an interrupted multi-variant run
continues where it stopped.

Resume is exact: ``last.ckpt`` is written after every epoch (after early stopping has counted it) with the
random states of Python, NumPy and torch, and :func:`train_loader` shuffles with a generator seeded by
``(seed, epoch)``, so a run killed after epoch *k* and resumed writes the same rows and weights as one that
was never stopped. A non-finite training loss stops the stage with :class:`vislab.errors.TrainingDiverged`
(exit 3 at the CLI); Ctrl-C raises ``KeyboardInterrupt`` (exit 130 with the resume hint) instead of
Lightning's ``SystemExit(1)``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from vislab.engine.callbacks import EpochRecorder, FiniteLoss, KillAfterEpochs, LastCheckpoint, PreciseBatchNorm
from vislab.engine.context import RunContext
from vislab.engine.module import TaskModule
from vislab.errors import UserError


@dataclass
class StageResult:
    """One trained (variant, stage): how long it trained, its best epoch and that epoch's ``metrics.csv`` row
    split into ``train`` and ``val`` metrics (``{"loss": ..., "accuracy": ...}``), so no experiment reads the
    CSV back. ``best_checkpoint`` is relative to the run folder."""

    variant: str
    stage: str
    epochs: int  # epochs trained (early stopping may end before max_epochs)
    best_epoch: int
    best_score: float
    best_checkpoint: str
    time: dict[str, float] = field(default_factory=dict)  # fit_s, epoch_s_mean, step_ms_mean
    train: dict[str, float] = field(default_factory=dict)  # the best epoch's train_* values
    val: dict[str, float] = field(default_factory=dict)  # the best epoch's val_* values
    seed: int | None = None


class EpochSeededSampler(torch.utils.data.Sampler):
    """A shuffling sampler whose order is a function of ``(seed, epoch)`` only (Lightning calls
    ``set_epoch``), so a resumed run draws the same order as an uninterrupted one."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):  # noqa: ANN204
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def train_loader(dataset: Any, *, batch_size: int, seed: int, num_workers: int = 0, shuffle: bool = True,
                 **kwargs: Any) -> torch.utils.data.DataLoader:
    """The training DataLoader of every experiment: shuffled by :class:`EpochSeededSampler` (exact resume)."""
    sampler = EpochSeededSampler(len(dataset), seed) if shuffle else None
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                       persistent_workers=num_workers > 0, **kwargs)


def eval_loader(dataset: Any, *, batch_size: int, num_workers: int = 0, **kwargs: Any) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                       persistent_workers=num_workers > 0, **kwargs)


def seed_everything(seed: int) -> None:
    L.seed_everything(seed, workers=True, verbose=False)


def _quiet_lightning() -> None:
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pat in (".*does not have many workers.*", ".*GPU available but not used.*",
                ".*Checkpoint directory .* exists and is not empty.*", ".*LeafSpec.*",
                ".*The number of training batches .* is smaller than the logging interval.*",
                ".*You are using a CUDA device .* that has Tensor Cores.*",
                ".*torch.backends.cudnn.allow_tf32.*"):
        warnings.filterwarnings("ignore", message=pat)


def make_trainer(ctx: RunContext, *, max_epochs: int, callbacks: list[L.Callback],
                 use_distributed_sampler: bool = True, logger: Any = False) -> L.Trainer:
    _quiet_lightning()
    accelerator = ctx.resolved_accelerator()
    devices = ctx.devices
    try:
        devices = int(devices)
    except (TypeError, ValueError):
        pass
    multi = (isinstance(devices, int) and devices > 1) or ctx.num_nodes > 1
    return L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=ctx.num_nodes,
        strategy="ddp" if multi else "auto",
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=logger,
        precision=getattr(ctx, "precision", None) or "32-true",
        enable_model_summary=False,
        enable_progress_bar=progress_bar_enabled(),
        num_sanity_val_steps=0,
        deterministic=True if accelerator == "cpu" else "warn",
        log_every_n_steps=1,
        default_root_dir=str(ctx.run.path),
        use_distributed_sampler=use_distributed_sampler,
    )


def has_custom_batch_sampler(loader: Any) -> bool:
    """True for a DataLoader driven by its own batch sampler (e.g. P x K batches), which Lightning cannot
    re-wrap with a DistributedSampler; such a sampler shards itself (``BalancedBatchSampler`` reads the
    rank from the process group)."""
    from torch.utils.data import BatchSampler

    bs = getattr(loader, "batch_sampler", None)
    return bs is not None and type(bs) is not BatchSampler


def _rebuild(loader: Any, sampler: Any) -> Any:
    from torch.utils.data import DataLoader

    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                      worker_init_fn=loader.worker_init_fn,
                      persistent_workers=loader.persistent_workers if loader.num_workers > 0 else False)


def shard_loaders(train_loader: Any, val_loader: Any, trainer: L.Trainer, seed: int) -> tuple[Any, Any]:
    """The loaders of one rank under DDP (``use_distributed_sampler=False``: the engine shards itself).

    * training: a ``DistributedSampler`` (shuffled with ``seed`` when the loader shuffled; Lightning sets its
      epoch), or the loader as it is when it brings its own batch sampler (which shards itself);
    * validation: Lightning's ``UnrepeatedDistributedSampler``: rank ``r`` evaluates samples ``r, r + W, ...``
      and nothing is repeated, so an odd-sized split's loss and metrics count every sample exactly once.
    """
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
    from torch.utils.data import DistributedSampler, RandomSampler

    w, r = trainer.world_size, trainer.global_rank
    if w <= 1:
        return train_loader, val_loader
    if not has_custom_batch_sampler(train_loader):
        shuffle = isinstance(train_loader.sampler, RandomSampler)
        train_loader = _rebuild(train_loader, DistributedSampler(train_loader.dataset, num_replicas=w, rank=r,
                                                                 shuffle=shuffle, seed=seed))
    if val_loader is not None:
        if len(val_loader.dataset) < w:
            raise UserError(f"the validation split has {len(val_loader.dataset)} sample(s), fewer than the {w} "
                            "DDP processes; use fewer --devices or a larger split")
        val_loader = _rebuild(val_loader, UnrepeatedDistributedSampler(val_loader.dataset, num_replicas=w, rank=r,
                                                                       shuffle=False))
    return train_loader, val_loader


def progress_bar_enabled() -> bool:
    """Lightning's progress bar on a terminal and in Jupyter (where it is a widget); in a log file (CI, nohup)
    its carriage-return frames would bury everything else, so there ``EpochRecorder`` prints one line per
    epoch instead. ``VISLAB_PROGRESS=0|1`` forces either."""
    import sys

    if os.environ.get("VISLAB_PROGRESS", "") in ("0", "1"):
        return os.environ["VISLAB_PROGRESS"] == "1"
    return sys.stderr.isatty() or in_notebook()


def in_notebook() -> bool:
    """True inside a Jupyter kernel (progress bars become widgets through ``tqdm.auto``)."""
    import sys

    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def load_weights(module: torch.nn.Module, checkpoint: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint's ``state_dict`` into ``module`` (``weights_only=True``); a file that is not
    such a checkpoint is one :class:`UserError` line naming it."""
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = ckpt["state_dict"]
    except (OSError, RuntimeError, EOFError, KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise UserError(f"checkpoint {checkpoint} does not exist") from None
        raise UserError(f"{checkpoint} is not a valid vislab checkpoint (truncated or corrupt?)") from None
    module.load_state_dict(state)
    return ckpt


def _best_row(rows: list[dict[str, Any]], epoch: int) -> tuple[dict[str, float], dict[str, float]]:
    row = next((r for r in rows if r["epoch"] == epoch), rows[-1] if rows else {})
    train = {k[6:]: v for k, v in row.items() if k.startswith("train_")}
    val = {k[4:]: v for k, v in row.items() if k.startswith("val_")}
    return train, val


def fit_stage(ctx: RunContext, module: TaskModule, train_loader: Any, val_loader: Any, *, variant: str,
              stage: str = "train", epochs: int | None = None, patience: int | None = None) -> StageResult:
    """Train ``module`` for one (variant, stage); afterwards the module holds the best weights."""
    cfg = ctx.cfg
    seed = int(getattr(cfg, "seed", 0))
    max_epochs = int(epochs if epochs is not None else cfg.epochs)
    ckdir = ctx.run.checkpoint_dir(variant, stage, ctx.seed_dir)
    done = ctx.run.stage_result(variant, stage, ctx.seed_dir)
    if done is not None and ctx.resume and ctx.run.resolve(done["best_checkpoint"]).exists():
        ctx.log(f"[{_tag(ctx, variant)}/{stage}] finished earlier; loading its best checkpoint")
        load_weights(module, ctx.run.resolve(done["best_checkpoint"]))
        return StageResult(**done)

    last = ckdir / "last.ckpt"
    ckpt_path = str(last) if ctx.resume and last.exists() else None
    if ckpt_path is None and ctx.is_main:
        ctx.run.drop_metrics(variant, stage, seed=seed)  # a fresh start of this stage: forget stale rows
    recorder = EpochRecorder(ctx.run, variant, stage, log_lines=not progress_bar_enabled(),
                             headline=getattr(ctx, "headline", None), max_epochs=max_epochs, seed=seed,
                             label=_tag(ctx, variant))
    mode = getattr(module, "monitor_mode", "min")
    checkpoint = ModelCheckpoint(dirpath=str(ckdir), filename="best", monitor=module.monitor, mode=mode,
                                 save_last=False, save_top_k=1, enable_version_counter=False)
    callbacks: list[L.Callback] = [FiniteLoss(_tag(ctx, variant), stage), recorder, checkpoint,
                                   EarlyStopping(monitor=module.monitor, mode=mode,
                                                 patience=int(patience if patience is not None else cfg.patience)),
                                   LastCheckpoint(last)]
    if getattr(cfg, "precise_bn", 0):
        callbacks.insert(0, PreciseBatchNorm(cfg.precise_bn))
    kill_after = os.environ.get("VISLAB_KILL_AFTER_EPOCHS")  # "N", or "SEED_DIR/VARIANT:N" for one stage only
    if kill_after:
        where, _, n = kill_after.rpartition(":")
        if not where or where == _tag(ctx, variant):
            callbacks.append(KillAfterEpochs(int(n)))
    trainer = make_trainer(ctx, max_epochs=max_epochs, callbacks=callbacks, use_distributed_sampler=False,
                           logger=_logger(ctx, variant, stage))
    train_loader, val_loader = shard_loaders(train_loader, val_loader, trainer, seed)
    if ckpt_path:
        ctx.log(f"[{_tag(ctx, variant)}/{stage}] resuming from {ctx.run.relative(ckpt_path)}")
    ctx.log(f"[{_tag(ctx, variant)}/{stage}] training up to {max_epochs} epochs on {ctx.resolved_accelerator()}")
    try:
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path)
    except SystemExit:  # Lightning turns Ctrl-C into SystemExit(1) after its graceful shutdown
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    if trainer.interrupted:
        raise KeyboardInterrupt

    best = checkpoint.best_model_path or str(last)
    ckpt = load_weights(module, best)
    best_epoch = int(ckpt.get("epoch", 0)) + 1
    train, val = _best_row(ctx.run.stage_rows(variant, stage, seed), best_epoch)
    result = StageResult(
        variant=variant, stage=stage, epochs=int(trainer.current_epoch), best_epoch=best_epoch,
        best_score=float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else float("nan"),
        best_checkpoint=ctx.run.relative(best), time=recorder.timing(), train=train, val=val, seed=seed,
    )
    if ctx.is_main:
        ctx.run.save_stage_result(variant, stage, asdict(result), ctx.seed_dir)
    return result


def _tag(ctx: RunContext, variant: str) -> str:
    return f"{ctx.seed_dir}/{variant}" if ctx.seed_dir else variant


def _logger(ctx: RunContext, variant: str, stage: str) -> Any:
    """TensorBoard scalars in ``tb/`` (one run per seed/variant/stage) unless ``--logger none``."""
    if getattr(ctx, "logger", "none") != "tensorboard" or not ctx.is_main:
        return False
    from lightning.pytorch.loggers import TensorBoardLogger

    name = "/".join(p for p in (ctx.seed_dir or f"s{ctx.seed}", variant, stage) if p)
    return TensorBoardLogger(save_dir=str(ctx.run.path / "tb"), name=name, version="", default_hp_metric=False)
