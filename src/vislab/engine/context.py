"""What an experiment gets to run with: its config, run folder, data options and devices."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any

from vislab.engine.run_dir import RunDir, is_rank_zero
from vislab.errors import UserError


@dataclass
class RunContext:
    cfg: Any  # the experiment's config dataclass, fully resolved
    run: RunDir
    data: str | None = None  # --data: a folder or a dataset name
    root: str | None = None  # --root for named datasets
    download: bool = False  # --download allowed
    resume: bool = False
    devices: int | str = 1
    num_nodes: int = 1
    accelerator: str = "auto"  # auto | cpu | gpu | cuda | mps
    quick: bool = False  # demo --quick
    notes: list[str] = field(default_factory=list)  # lines the report shows under "Notes"
    headline: str | None = None  # the experiment's headline metric (shown in the per-epoch log lines)
    seed_dir: str = ""  # multi-seed runs: "s<seed>", the sub-folder of checkpoints/ of the current seed
    logger: str = "none"  # tensorboard | none
    precision: str = "32-true"  # Lightning precision: 32-true | bf16-mixed | 16-mixed

    def for_seed(self, seed: int, *, multi: bool) -> RunContext:
        """This context for one seed of a run: the config's ``seed`` replaced and, when the run has several
        seeds, checkpoints and stage records kept apart under ``s<seed>``."""
        return dataclasses.replace(self, cfg=dataclasses.replace(self.cfg, seed=int(seed)),
                                   seed_dir=f"s{seed}" if multi else "")

    @property
    def seed(self) -> int:
        return int(getattr(self.cfg, "seed", 0))

    @property
    def is_main(self) -> bool:
        return is_rank_zero()

    def resolved_accelerator(self) -> str:
        import torch

        acc = self.accelerator
        if acc in ("gpu", "cuda"):
            if not torch.cuda.is_available():
                raise UserError("--accelerator gpu was asked but no CUDA GPU is available "
                                "(torch.cuda.is_available() is False); use --accelerator cpu")
            return "gpu"
        if acc == "mps":
            if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
                raise UserError("--accelerator mps was asked but MPS is not available")
            return "mps"
        if acc == "cpu":
            return "cpu"
        return "gpu" if torch.cuda.is_available() else "cpu"

    def device(self):  # noqa: ANN201 - torch.device
        import torch

        acc = self.resolved_accelerator()
        return torch.device({"gpu": "cuda", "cpu": "cpu", "mps": "mps"}[acc])

    def log(self, msg: str) -> None:
        if self.is_main:
            print(msg, file=sys.stderr, flush=True)
