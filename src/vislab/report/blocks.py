"""Report blocks every experiment shares, built from ``summary.json``-shaped runs and ``metrics.csv`` rows.

* :func:`variants_table` — the side-by-side table: variant, parameters, epochs, chosen metrics, time;
* :func:`curves_figure` — per-variant train/validation curves from ``metrics.csv``;
* :func:`compare_sentence` / :func:`comparison_bullets` — who wins on each metric, with the numbers,
  ties called ties;
* :func:`headline_sentence` — the one-line summary on the experiment's headline metric;
* :func:`image_grid_figure` — a qualitative grid of images with titles.

An experiment module keeps only what is its own (its data description, its special figures).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vislab.report import figures
from vislab.report.document import Report, fmt

# Display names of common metric keys (anything else is shown as its key).
METRIC_LABELS = {
    "loss": "loss", "accuracy": "accuracy", "map": "mAP", "map50": "AP50", "map75": "AP75", "mar100": "AR@100",
    "f1": "F1", "f1_micro": "F1 micro", "f1_macro": "F1 macro", "precision": "precision", "recall": "recall",
    "iou": "mIoU", "dice": "Dice", "label_accuracy": "label accuracy", "precision_micro": "P micro",
    "recall_micro": "R micro", "pointing_game": "pointing game",
}


def metric_label(key: str) -> str:
    return METRIC_LABELS.get(key, key.replace("_", " "))


def _value(run: Mapping[str, Any], split: str, key: str) -> float | None:
    """A metric of a run entry: a plain number, or the mean of a schema-2 ``{"mean", "ci95", ...}`` entry."""
    v = run.get(split, {}).get(key)
    if isinstance(v, Mapping):
        v = v.get("mean")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


metric_value = _value  # public name: a run entry's metric, plain or schema 2


def variants_table(rep: Report, runs: Mapping[str, Mapping[str, Any]], metrics: Sequence[str], *,
                   split: str = "test", caption: str | None = None,
                   extra: Mapping[str, Callable[[Mapping[str, Any]], Any]] | None = None,
                   time: bool = True) -> Report:
    """Add the side-by-side table of ``runs`` (``summary["runs"]``): variant, params, epochs, each of
    ``metrics`` on ``split``, the ``extra`` columns (``{header: fn(run) -> value}``), fit seconds and
    ms per training step. A value a run does not have is shown as "—"."""
    if not runs:
        raise ValueError("variants_table needs at least one run")
    header = ["variant", "params", "epochs", *[f"{split} {metric_label(m)}" for m in metrics], *(extra or {})]
    if time:
        header += ["fit s", "ms/step"]
    rows = []
    for name, r in runs.items():
        epochs = r.get("epochs", "—")
        row: list[Any] = [name, r.get("params", "—"),
                          "/".join(map(str, epochs)) if isinstance(epochs, (list, tuple)) else epochs]
        row += [_value(r, split, m) if _value(r, split, m) is not None else "—" for m in metrics]
        row += [fn(r) for fn in (extra or {}).values()]
        if time:
            t = r.get("time", {})
            row += [t.get("fit_s", "—"), t.get("step_ms_mean", "—")]
        rows.append(row)
    return rep.table(header, rows, caption=caption)


def curves_figure(rep: Report, rows: list[dict[str, Any]], metrics: Sequence[str], path: str | Path,
                  caption: str | None = None, **kwargs: Any) -> Report:
    """Add per-variant curves of ``metrics`` per epoch (train solid, validation dashed) from metrics.csv rows."""
    present = [m for m in metrics if any(f"train_{m}" in r or f"val_{m}" in r for r in rows)]
    if not rows or not present:
        return rep.text("No per-epoch rows to plot.")
    return rep.figure(figures.plot_curves(rows, present, path, **kwargs),
                      caption or "Per epoch: " + ", ".join(metric_label(m) for m in present)
                      + "; train solid, validation dashed.")


def _is_tie(a: float, b: float, rel: float, abs_tol: float) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_tol)


def _winner(runs: Mapping[str, Mapping[str, Any]], key: str, higher: bool, split: str, rel: float,
            abs_tol: float) -> tuple[list[str], dict[str, float]]:
    vals = {v: x for v in runs if (x := _value(runs[v], split, key)) is not None and math.isfinite(x)}
    if not vals:
        return [], vals
    best = (max if higher else min)(vals.values())
    return [v for v, x in vals.items() if _is_tie(x, best, rel, abs_tol)], vals


def compare_sentence(runs: Mapping[str, Mapping[str, Any]], metrics: Mapping[str, bool], *, split: str = "test",
                     rel: float = 0.005, abs_tol: float = 1e-3, digits: int = 4) -> str:
    """One sentence per metric (``{key: higher_is_better}``) naming the winner with the numbers; variants
    within ``rel`` (relative) or ``abs_tol`` of the best tie with it. Metrics no run has are skipped."""
    return " ".join(comparison_bullets(runs, metrics, split=split, rel=rel, abs_tol=abs_tol, digits=digits))


def comparison_bullets(runs: Mapping[str, Mapping[str, Any]], metrics: Mapping[str, bool], *, split: str = "test",
                       rel: float = 0.005, abs_tol: float = 1e-3, digits: int = 4) -> list[str]:
    out = []
    for key, higher in metrics.items():
        winners, vals = _winner(runs, key, higher, split, rel, abs_tol)
        if not winners:
            continue
        label = f"{split} {metric_label(key)} ({'higher' if higher else 'lower'} is better)"

        def show(v: str, vals: dict[str, float] = vals) -> str:
            return f"{v} {fmt(vals[v], digits)}"

        losers = [v for v in vals if v not in winners]
        if len(vals) == 1:
            out.append(f"On {label} only **{winners[0]}** has a value: {fmt(vals[winners[0]], digits)}.")
        elif not losers:
            out.append(f"On {label} all variants tie ({', '.join(show(v) for v in winners)}).")
        elif len(winners) > 1:
            out.append(f"On {label} " + " and ".join(f"**{v}**" for v in winners) + " tie for best ("
                       + ", ".join(show(v) for v in winners) + f"; {', '.join(show(v) for v in losers)}).")
        else:
            rest = ", ".join(show(v) for v in losers)
            out.append(f"On {label} **{winners[0]}** wins ({show(winners[0])} vs {rest}).")
    return out


def headline_sentence(runs: Mapping[str, Mapping[str, Any]], headline: tuple[str, bool], *, split: str = "test",
                      rel: float = 0.005, abs_tol: float = 1e-3) -> str:
    """The report's summary sentence on the experiment's headline metric."""
    key, higher = headline
    s = compare_sentence(runs, {key: higher}, split=split, rel=rel, abs_tol=abs_tol)
    return s or f"No run has a {split} {metric_label(key)}."


def headline_values(summary: Mapping[str, Any], headline: tuple[str, bool], split: str = "test") -> dict[str, float]:
    """``{variant: value}`` of the headline metric, for the demo index."""
    key, _ = headline
    return {v: x for v, r in summary.get("runs", {}).items() if (x := _value(r, split, key)) is not None}


def image_grid_figure(rep: Report, images: Sequence[Any], path: str | Path, *, titles: Sequence[str] | None = None,
                      caption: str = "", ncols: int = 6, title: str = "",
                      title_colors: Sequence[str] | None = None) -> Report:
    """Add a grid of images (H×W×3 floats in [0, 1] or uint8, or H×W) with per-image titles."""
    if not images:
        return rep.text("No images to show.")
    return rep.figure(figures.image_grid(images, path, titles=titles, ncols=ncols, title=title,
                                         title_colors=title_colors), caption)


def run_footer(rep: Report, run: Any, seed: int) -> Report:
    """The "Run" section: seed, device, versions, git commit, where the config and metrics are."""
    env = run.read_json("env.json", {})
    rep.heading("Run")
    seeds = env.get("seeds") or [seed]
    return rep.text(f"Seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}; device {env.get('device')}; "
                    f"precision {env.get('precision', '32-true')}; torch {env.get('torch')}; git "
                    f"{env.get('git_commit')}. Config: `config.yaml`; per-epoch metrics: `metrics.csv`; "
                    "all numbers in this report were computed by this run.")
