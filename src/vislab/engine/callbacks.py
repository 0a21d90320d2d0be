"""Callbacks: one metrics.csv row per epoch, and timing (seconds per epoch, ms per training step).

Both keep their state in Lightning checkpoints, so a resumed run continues its clock and its rows.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L

from vislab.engine.run_dir import RunDir


class EpochRecorder(L.Callback):
    """Writes ``variant, stage, epoch, lr, train_*, val_*, epoch_s`` to ``metrics.csv`` after validation.

    It runs before ModelCheckpoint (Lightning runs checkpoint callbacks last), so a ``last.ckpt`` of
    epoch *e* always has its row; a resumed run re-writes rows by key, never duplicates them.
    """

    def __init__(self, run: RunDir, variant: str, stage: str) -> None:
        self.run = run
        self.variant = variant
        self.stage = stage
        self.epoch_s: list[float] = []
        self.step_ms_sum = 0.0
        self.steps = 0
        self._t_epoch = 0.0
        self._t_step = 0.0

    # timing
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t_epoch = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self._t_step = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.step_ms_sum += (time.perf_counter() - self._t_step) * 1000.0
        self.steps += 1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            pl_module.collect("val")
            return
        train = pl_module.collect("train")
        val = pl_module.collect("val")
        if not train:  # a validate() call outside fit
            return
        self.epoch_s.append(time.perf_counter() - self._t_epoch)
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        row: dict[str, Any] = {"variant": self.variant, "stage": self.stage, "epoch": trainer.current_epoch + 1,
                               "lr": lr}
        row.update({f"train_{k}": v for k, v in train.items()})
        row.update({f"val_{k}": v for k, v in val.items()})
        row["epoch_s"] = self.epoch_s[-1]
        if trainer.is_global_zero:
            self.run.upsert_metrics([row])

    def timing(self) -> dict[str, float]:
        return {
            "fit_s": float(sum(self.epoch_s)),
            "epoch_s_mean": float(sum(self.epoch_s) / len(self.epoch_s)) if self.epoch_s else 0.0,
            "step_ms_mean": self.step_ms_sum / self.steps if self.steps else 0.0,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_s": list(self.epoch_s), "step_ms_sum": self.step_ms_sum, "steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch_s = list(state_dict.get("epoch_s", []))
        self.step_ms_sum = float(state_dict.get("step_ms_sum", 0.0))
        self.steps = int(state_dict.get("steps", 0))


class KillAfterEpochs(L.Callback):
    """Kill the process (``os._exit``) at the end of epoch N, as a ``kill -9`` would: for resume tests.

    Enabled by the environment variable ``VISLAB_KILL_AFTER_EPOCHS=N``.
    """

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            import os
            import sys

            print(f"vislab: killed after epoch {self.epochs} (VISLAB_KILL_AFTER_EPOCHS)", file=sys.stderr)
            sys.stderr.flush()
            os._exit(75)
