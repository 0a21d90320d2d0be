"""Typed results of a run: one :class:`VariantResult` per (variant, seed), and the :class:`RunResult` that
``vislab.run()`` returns and ``vislab.load_run()`` reads back from a run folder.

``summary.json`` (schema 2, SPEC §10) is written from them::

    {"schema": 2, "experiment", "data": {"name", "train", "val", "test", ...}, "seeds": [0, 1, 2],
     "runs": {VARIANT: {"params", "epochs", "train", "val", "test": {METRIC: {"mean", "std", "ci95": [lo, hi],
                                                                      "per_seed": [...]}}, "time", ...}},
     "baselines": {NAME: {"test": {METRIC: {...}}, ...}},
     "claims": [{"text", "metric", "a", "b", "kind", "diff": {"mean", "ci95"}, "verdict", "n_seeds"}],
     "status": "complete" | "diverged" | "interrupted"}

Strict JSON: non-finite numbers are written as ``null`` and listed under ``"notes"``.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vislab.protocol import stats

SCHEMA = 2


@dataclass
class Resampled:
    """A test metric that is not a mean over items (mAP, a median): ``fn(idx)`` recomputes it on the items
    ``idx`` (an int array of length ``n``, with repeats), for the one-seed bootstrap of claims."""

    fn: Any
    n: int

    def __call__(self, idx: np.ndarray) -> float:
        return float(self.fn(idx))

    def __len__(self) -> int:
        return self.n


@dataclass
class VariantResult:
    """One variant (or untrained baseline) trained and evaluated with one seed.

    ``train``/``val`` hold the best epoch's rows (from :class:`vislab.engine.fit.StageResult`), ``test`` the
    test metrics of the best weights; ``items`` per-test-item values of some metrics (for the one-seed
    bootstrap of claims; not saved); ``extra`` any other JSON-able keys the summary keeps for the variant
    (from the first seed); ``state`` objects the experiment's report needs (models, predictions; not saved).
    """

    variant: str
    seed: int | None
    test: dict[str, Any]
    val: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    params: int | None = None
    epochs: int | None = None
    time: dict[str, float] = field(default_factory=dict)
    items: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    state: dict[str, Any] = field(default_factory=dict)


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def aggregate_split(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """``[{metric: value}, ...]`` (one dict per seed) → ``{metric: {"mean", "std", "ci95", "per_seed"}}`` for
    numeric metrics; other values (lists, dicts) are kept from the first seed."""
    out: dict[str, Any] = {}
    keys: list[str] = []
    for d in per_seed:
        keys += [k for k in d if k not in keys]
    for k in keys:
        vals = [d.get(k) for d in per_seed]
        if all(v is None or _numeric(v) for v in vals) and any(_numeric(v) for v in vals):
            out[k] = stats.summarize([float(v) if v is not None else None for v in vals])
        else:
            out[k] = next((v for v in vals if v is not None), None)
    return out


def aggregate_variant(results: list[VariantResult]) -> dict[str, Any]:
    """The schema-2 entry of one variant from its per-seed results (seed order)."""
    first = results[0]
    time_keys = [k for k in first.time if _numeric(first.time[k])]
    entry: dict[str, Any] = {
        "params": first.params, "epochs": first.epochs if len(results) == 1 else [r.epochs for r in results],
        "train": aggregate_split([r.train for r in results]),
        "val": aggregate_split([r.val for r in results]),
        "test": aggregate_split([r.test for r in results]),
        "time": {k: float(np.mean([r.time.get(k, float("nan")) for r in results])) for k in time_keys},
    }
    if any(r.checkpoint for r in results):
        entry["checkpoints"] = [r.checkpoint for r in results]
    for k, v in first.extra.items():
        entry.setdefault(k, v)
    return entry


def strict_json(obj: Any, notes: list[str], path: str = "") -> Any:
    """``obj`` with non-finite floats replaced by ``None`` (each recorded in ``notes``), NumPy/torch scalars
    and arrays converted, tuples as lists."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v, notes, f"{path}.{k}" if path else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v, notes, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return strict_json(obj.tolist(), notes, path)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if not math.isfinite(f):
            notes.append(f"{path} was {f} (written as null)")
            return None
        return f
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def to_strict_json(summary: dict[str, Any]) -> str:
    notes: list[str] = []
    clean = strict_json(summary, notes)
    if notes:
        clean["notes"] = list(clean.get("notes") or []) + notes
    return json.dumps(clean, indent=2, allow_nan=False) + "\n"


class RunResult:
    """A finished (or interrupted) run: its summary, folder and, on demand, its trained models.

    * ``result.summary`` — ``summary.json`` as a dict (schema 2);
    * ``result.test(variant)`` — ``{metric: mean}`` of a variant's test metrics (``result.test()``: all);
    * ``result.claims`` — the claims with their verdicts;
    * ``result.report_html`` — the path of ``report.html``;
    * ``result.model(variant, seed=None)`` — the trained model, loaded from its best checkpoint;
    * in Jupyter, the headline table and the verdicts render as HTML.
    """

    def __init__(self, path: str | Path, summary: dict[str, Any], *, experiment: Any = None,
                 variants: dict[int, dict[str, VariantResult]] | None = None) -> None:
        self.path = Path(path)
        self.summary = summary
        self._experiment = experiment
        self.variants = variants or {}  # {seed: {variant: VariantResult}} of this process (not from disk)

    @property
    def name(self) -> str:
        return self.summary.get("experiment", "")

    def __getitem__(self, key: str) -> Any:  # result["runs"]: the summary's keys
        return self.summary[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.summary.get(key, default)

    @property
    def seeds(self) -> list[int]:
        return list(self.summary.get("seeds", []))

    @property
    def status(self) -> str:
        return self.summary.get("status", "complete")

    @property
    def claims(self) -> list[dict[str, Any]]:
        return list(self.summary.get("claims", []))

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    def test(self, variant: str | None = None) -> dict[str, Any]:
        runs = self.summary.get("runs", {})
        if variant is None:
            return {v: self.test(v) for v in runs}
        if variant not in runs:
            raise KeyError(f"no variant {variant!r} in this run; variants: {', '.join(runs)}")
        return {k: (m["mean"] if isinstance(m, dict) and "mean" in m else m) for k, m in runs[variant]["test"].items()}

    def model(self, variant: str, seed: int | None = None) -> Any:
        """The trained model of ``variant`` (first seed by default), loaded from its best checkpoint."""
        entry = self.summary.get("runs", {}).get(variant)
        if entry is None:
            raise KeyError(f"no variant {variant!r} in this run; variants: {', '.join(self.summary.get('runs', {}))}")
        cks = entry.get("checkpoints") or []
        i = 0 if seed is None else self.seeds.index(seed)
        if i >= len(cks) or not cks[i]:
            raise ValueError(f"{variant} has no saved checkpoint in {self.path}")
        from vislab.experiments._registry import get_experiment

        exp = self._experiment or get_experiment(self.name)
        return exp.load_model(self.path / cks[i])

    def headline_rows(self) -> tuple[str, list[tuple[str, str]]]:
        """(metric, [(row, "mean ± half-width")]) of the headline metric for variants and baselines."""
        metric = self.summary.get("headline", {}).get("metric", "")
        rows = []
        for group in ("runs", "baselines"):
            for name, entry in (self.summary.get(group) or {}).items():
                m = entry.get("test", {}).get(metric)
                if isinstance(m, dict) and m.get("mean") is not None:
                    rows.append((name, format_interval(m)))
        return metric, rows

    def _repr_html_(self) -> str:
        metric, rows = self.headline_rows()
        n = len(self.seeds)
        body = "".join(f"<tr><td>{html.escape(r)}</td><td>{html.escape(v)}</td></tr>" for r, v in rows)
        claims = "".join(f"<li>{html.escape(c['text'])}: <b>{html.escape(c['verdict'])}</b></li>" for c in self.claims)
        return (f"<div><b>{html.escape(self.name)}</b> — {self.status}, {n} seed{'s' if n != 1 else ''}, "
                f"<code>{html.escape(str(self.path))}</code><table><tr><th>row</th><th>test "
                f"{html.escape(metric)} (mean ± 95 % CI)</th></tr>{body}</table><ul>{claims}</ul>"
                f"<a href='{html.escape(self.report_html.as_posix())}'>report.html</a></div>")

    def __repr__(self) -> str:
        return f"RunResult({self.name!r}, path={str(self.path)!r}, seeds={self.seeds}, status={self.status!r})"


def format_interval(m: dict[str, Any]) -> str:
    """``"0.861 ± 0.012"`` (mean ± half-width of the 95 % interval, to the precision the interval supports),
    or the mean alone when there is no interval."""
    mean, ci = m.get("mean"), m.get("ci95")
    if mean is None:
        return "—"
    if not ci:
        return stats.significant_digits(mean, None)
    half = (ci[1] - ci[0]) / 2
    text = stats.significant_digits(mean, ci)
    decimals = len(text.split(".")[1]) if "." in text else 0
    return f"{text} ± {half:.{decimals}f}"


def load_run(path: str | Path, *, experiment: Any = None) -> RunResult:
    """Read a run folder back: ``vislab.load_run("runs/vit-...")``. Raises ``ValueError`` naming the file when
    the folder holds no (valid) ``summary.json``. ``experiment``: the Experiment instance of an unregistered
    experiment (for ``model()``)."""
    p = Path(path)
    f = p / "summary.json"
    if not p.is_dir():
        raise ValueError(f"{p} is not a run folder (not a folder)")
    if not f.is_file():
        raise ValueError(f"{p} is not a finished run folder: no summary.json")
    try:
        summary = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{f} is not a valid summary.json ({exc})") from None
    if not isinstance(summary, dict) or "runs" not in summary and summary.get("status") == "complete":
        raise ValueError(f"{f} is not a vislab summary (no 'runs')")
    return RunResult(p, summary, experiment=experiment)
