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
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from vislab.io.files import atomic_write_bytes, atomic_write_text  # noqa: F401 - re-exported

# metrics.csv: identity columns first, then metric columns in the order first seen.
KEY_COLUMNS = ("seed", "variant", "stage", "epoch")
LOCK_NAME = ".lock"


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

    def checkpoint_dir(self, variant: str, stage: str = "train", seed_dir: str = "") -> Path:
        base = self.checkpoints / seed_dir if seed_dir else self.checkpoints
        return base / (variant if stage == "train" else f"{variant}-{stage}")

    def relative(self, path: str | Path) -> str:
        """``path`` relative to the run folder (what the folder's own records store, so a moved or copied run
        finds its own files); a path outside the folder stays as it is."""
        p = Path(path)
        try:
            return p.resolve().relative_to(self.path.resolve()).as_posix()
        except ValueError:
            return str(p)

    def resolve(self, stored: str | Path) -> Path:
        """A path from the folder's records: relative ones are taken inside this folder."""
        p = Path(stored)
        return p if p.is_absolute() else self.path / p

    # -- one owner: a lock file with the owner's pid ------------------------------------------
    def acquire(self) -> None:
        """Take the folder for this process. A second live process on the same folder is refused with one
        line; a lock left by a process that no longer runs (killed) is taken over."""
        from vislab.errors import UserError

        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.path / LOCK_NAME
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _lock_owner(lock)
                if owner is not None and owner != os.getpid() and _alive(owner):
                    raise UserError(f"{self.path} is in use by another vislab run (process {owner}); wait for it "
                                    "or choose another --out") from None
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n{platform.node()}\n")
            return
        raise UserError(f"cannot take the lock {lock}")

    def release(self) -> None:
        lock = self.path / LOCK_NAME
        if _lock_owner(lock) == os.getpid():
            lock.unlink(missing_ok=True)

    def holds_run(self) -> bool:
        """True when the folder holds (part of) a vislab run."""
        return any((self.path / n).exists() for n in ("config.yaml", "summary.json", "state.json", "metrics.csv"))

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
        try:
            return json.loads(p.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _corrupt(p, "a JSON file", exc) from None

    def write_config(self, cfg: dict[str, Any]) -> None:
        self.write_text("config.yaml", yaml.safe_dump(cfg, sort_keys=False))

    def read_config(self) -> dict[str, Any] | None:
        p = self.path / "config.yaml"
        if not p.exists():
            return None
        try:
            cfg = yaml.safe_load(p.read_text())
        except (UnicodeDecodeError, yaml.YAMLError) as exc:
            raise _corrupt(p, "a vislab config.yaml", exc) from None
        if not isinstance(cfg, dict):
            raise _corrupt(p, "a vislab config.yaml", "not a mapping")
        return cfg

    # -- metrics.csv: one row per (variant, stage, epoch); re-writing a key replaces its row ---
    def read_metrics(self) -> list[dict[str, Any]]:
        p = self.path / "metrics.csv"
        if not p.exists():
            return []
        rows = []
        try:
            with p.open(newline="") as f:
                for row in csv.DictReader(f):
                    out: dict[str, Any] = {}
                    for k, v in row.items():
                        if k is None or v == "" or v is None:
                            continue
                        if k in ("variant", "stage"):
                            out[k] = v
                        elif k in ("epoch", "seed"):
                            out[k] = int(v)
                        else:
                            try:
                                out[k] = float(v)
                            except ValueError:
                                out[k] = v
                    if "variant" not in out or "epoch" not in out:
                        raise ValueError(f"row {len(rows) + 2} has no variant or epoch")
                    rows.append(out)
        except (UnicodeDecodeError, csv.Error, ValueError) as exc:
            raise _corrupt(p, "a vislab metrics.csv", exc) from None
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

    def drop_metrics(self, variant: str, stage: str, from_epoch: int = 0, seed: int | None = None) -> None:
        """Forget rows of (seed, variant, stage) with epoch >= from_epoch (used when a stage restarts)."""
        rows = [r for r in self.read_metrics()
                if not (r.get("variant") == variant and r.get("stage") == stage and r.get("epoch", 0) >= from_epoch
                        and (seed is None or r.get("seed") in (seed, None)))]
        self._write_metrics(rows)

    def stage_rows(self, variant: str, stage: str, seed: int | None = None) -> list[dict[str, Any]]:
        """The rows of one (seed, variant, stage), in epoch order."""
        rows = [r for r in self.read_metrics() if r.get("variant") == variant and r.get("stage") == stage
                and (seed is None or r.get("seed") in (seed, None))]
        return sorted(rows, key=lambda r: r["epoch"])

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

    @staticmethod
    def stage_key(variant: str, stage: str, seed_dir: str = "") -> str:
        return f"{seed_dir}/{variant}/{stage}" if seed_dir else f"{variant}/{stage}"

    def stage_result(self, variant: str, stage: str, seed_dir: str = "") -> dict[str, Any] | None:
        return self.state().get(self.stage_key(variant, stage, seed_dir))

    def save_stage_result(self, variant: str, stage: str, result: dict[str, Any], seed_dir: str = "") -> None:
        st = self.state()
        st[self.stage_key(variant, stage, seed_dir)] = result
        self.write_json("state.json", st)


def _corrupt(path: Path, what: str, exc: Any) -> Exception:
    from vislab.errors import UserError

    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(f"{path} is not {what} (it may be truncated or corrupt: {detail})")


def _lock_owner(lock: Path) -> int | None:
    try:
        return int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
