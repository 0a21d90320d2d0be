"""The run folder (SPEC "Interfaces"): config.yaml, metrics.csv, summary.json, figures/, report.md,
report.html, checkpoints/, env.json. Every file is written atomically (temp file + rename) so a run
killed at any moment leaves either the old or the new file, never half of one."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

# metrics.csv: identity columns first, then metric columns in the order first seen.
KEY_COLUMNS = ("variant", "stage", "epoch")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def is_rank_zero() -> bool:
    """True in the process that owns the run folder (rank 0 of a DDP job, or a single process)."""
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        v = os.environ.get(var)
        if v not in (None, "", "0"):
            return False
    return True


def _json_default(o: Any) -> Any:
    try:
        import numpy as np
        import torch

        if isinstance(o, torch.Tensor):
            return o.tolist()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.generic):
            return o.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n"


class RunDir:
    """One run's folder. Only rank 0 writes; other ranks get a read-only view."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # -- layout -----------------------------------------------------------------------------
    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint_dir(self, variant: str, stage: str = "train") -> Path:
        return self.checkpoints / (variant if stage == "train" else f"{variant}-{stage}")

    def figure(self, name: str) -> Path:
        self.figures.mkdir(parents=True, exist_ok=True)
        return self.figures / name

    # -- files ------------------------------------------------------------------------------
    def write_text(self, name: str, text: str) -> Path:
        p = self.path / name
        atomic_write_text(p, text)
        return p

    def write_json(self, name: str, obj: Any) -> Path:
        return self.write_text(name, to_json(obj))

    def read_json(self, name: str, default: Any = None) -> Any:
        p = self.path / name
        if not p.exists():
            return default
        return json.loads(p.read_text())

    def write_config(self, cfg: dict[str, Any]) -> None:
        self.write_text("config.yaml", yaml.safe_dump(cfg, sort_keys=False))

    def read_config(self) -> dict[str, Any] | None:
        p = self.path / "config.yaml"
        return yaml.safe_load(p.read_text()) if p.exists() else None

    # -- metrics.csv: one row per (variant, stage, epoch); re-writing a key replaces its row ---
    def read_metrics(self) -> list[dict[str, Any]]:
        p = self.path / "metrics.csv"
        if not p.exists():
            return []
        rows = []
        with p.open(newline="") as f:
            for row in csv.DictReader(f):
                out: dict[str, Any] = {}
                for k, v in row.items():
                    if v == "" or v is None:
                        continue
                    if k in ("variant", "stage"):
                        out[k] = v
                    elif k == "epoch":
                        out[k] = int(v)
                    else:
                        try:
                            out[k] = float(v)
                        except ValueError:
                            out[k] = v
                rows.append(out)
        return rows

    def upsert_metrics(self, new_rows: Iterable[dict[str, Any]]) -> None:
        rows = self.read_metrics()
        index = {tuple(r.get(k) for k in KEY_COLUMNS): i for i, r in enumerate(rows)}
        for r in new_rows:
            key = tuple(r.get(k) for k in KEY_COLUMNS)
            if key in index:
                rows[index[key]] = dict(r)
            else:
                index[key] = len(rows)
                rows.append(dict(r))
        self._write_metrics(rows)

    def drop_metrics(self, variant: str, stage: str, from_epoch: int = 0) -> None:
        """Forget rows of (variant, stage) with epoch >= from_epoch (used when a stage restarts)."""
        rows = [r for r in self.read_metrics()
                if not (r.get("variant") == variant and r.get("stage") == stage and r.get("epoch", 0) >= from_epoch)]
        self._write_metrics(rows)

    def _write_metrics(self, rows: list[dict[str, Any]]) -> None:
        cols: list[str] = list(KEY_COLUMNS)
        for r in rows:
            for k in r:
                if k not in cols:
                    cols.append(k)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(v) for k, v in r.items()})
        atomic_write_text(self.path / "metrics.csv", buf.getvalue())

    # -- resumable state: which (variant, stage) finished, with their results ----------------
    def state(self) -> dict[str, Any]:
        return self.read_json("state.json", default={}) or {}

    def stage_result(self, variant: str, stage: str) -> dict[str, Any] | None:
        return self.state().get(f"{variant}/{stage}")

    def save_stage_result(self, variant: str, stage: str, result: dict[str, Any]) -> None:
        st = self.state()
        st[f"{variant}/{stage}"] = result
        self.write_json("state.json", st)


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def environment_info(seed: int | None = None, device: str | None = None) -> dict[str, Any]:
    """Versions, device, seed and git commit, for env.json and the report."""
    import torch

    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "device": device,
        "seed": seed,
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    for mod in ("torchvision", "lightning", "timm", "numpy", "vislab"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - version info is best effort
            info[mod] = None
    info["git_commit"] = _git_commit()
    return info


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None
