"""Training one (variant, stage) with Lightning: seeded, checkpointed, resumable, DDP-ready.

``fit_stage`` is the one call experiments make. It builds a Trainer with early stopping,
ReduceLROnPlateau (in the module), best + last checkpoints in ``checkpoints/VARIANT[-STAGE]/``, one
``metrics.csv`` row per epoch, precise BatchNorm statistics when ``cfg.precise_bn`` asks, and a
progress bar; resumes from ``last.ckpt`` under ``--resume``; and
skips a stage that already finished (loading its best weights), so an interrupted multi-variant run
continues where it stopped.
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

from vislab.engine.callbacks import EpochRecorder, KillAfterEpochs, PreciseBatchNorm
from vislab.engine.context import RunContext
from vislab.engine.module import TaskModule


@dataclass
class StageResult:
    variant: str
    stage: str
    epochs: int  # epochs trained (early stopping may end before max_epochs)
    best_epoch: int
    best_score: float
    best_checkpoint: str
    time: dict[str, float] = field(default_factory=dict)  # fit_s, epoch_s_mean, step_ms_mean


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


def make_trainer(ctx: RunContext, *, max_epochs: int, callbacks: list[L.Callback]) -> L.Trainer:
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
        logger=False,
        enable_model_summary=False,
        enable_progress_bar=os.environ.get("VISLAB_PROGRESS", "1") != "0",
        num_sanity_val_steps=0,
        deterministic=True if accelerator == "cpu" else "warn",
        log_every_n_steps=1,
        default_root_dir=str(ctx.run.path),
    )


def load_weights(module: torch.nn.Module, checkpoint: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint's ``state_dict`` into ``module`` (``weights_only=True``)."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    module.load_state_dict(ckpt["state_dict"])
    return ckpt


def fit_stage(ctx: RunContext, module: TaskModule, train_loader: Any, val_loader: Any, *, variant: str,
              stage: str = "train", epochs: int | None = None, patience: int | None = None) -> StageResult:
    """Train ``module`` for one (variant, stage); afterwards the module holds the best weights."""
    cfg = ctx.cfg
    max_epochs = int(epochs if epochs is not None else cfg.epochs)
    ckdir = ctx.run.checkpoint_dir(variant, stage)
    done = ctx.run.stage_result(variant, stage)
    if done is not None and ctx.resume and Path(done["best_checkpoint"]).exists():
        ctx.log(f"[{variant}/{stage}] finished earlier; loading its best checkpoint")
        load_weights(module, done["best_checkpoint"])
        return StageResult(**done)

    last = ckdir / "last.ckpt"
    ckpt_path = str(last) if ctx.resume and last.exists() else None
    if ckpt_path is None and ctx.is_main:
        ctx.run.drop_metrics(variant, stage)  # a fresh start of this stage: forget stale rows
    recorder = EpochRecorder(ctx.run, variant, stage)
    checkpoint = ModelCheckpoint(dirpath=str(ckdir), filename="best", monitor=module.monitor, mode="min",
                                 save_last=True, save_top_k=1, enable_version_counter=False)
    callbacks: list[L.Callback] = [recorder, checkpoint,
                                   EarlyStopping(monitor=module.monitor, mode="min",
                                                 patience=int(patience if patience is not None else cfg.patience))]
    if getattr(cfg, "precise_bn", 0):
        callbacks.insert(0, PreciseBatchNorm(cfg.precise_bn))
    kill_after = os.environ.get("VISLAB_KILL_AFTER_EPOCHS")
    if kill_after:
        callbacks.append(KillAfterEpochs(int(kill_after)))
    trainer = make_trainer(ctx, max_epochs=max_epochs, callbacks=callbacks)
    if ckpt_path:
        ctx.log(f"[{variant}/{stage}] resuming from {ckpt_path}")
    ctx.log(f"[{variant}/{stage}] training up to {max_epochs} epochs on {ctx.resolved_accelerator()}")
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path)

    best = checkpoint.best_model_path or str(last)
    ckpt = load_weights(module, best)
    result = StageResult(
        variant=variant, stage=stage, epochs=int(trainer.current_epoch),
        best_epoch=int(ckpt.get("epoch", 0)) + 1,
        best_score=float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else float("nan"),
        best_checkpoint=str(best), time=recorder.timing(),
    )
    if ctx.is_main:
        ctx.run.save_stage_result(variant, stage, asdict(result))
    return result
