"""Claims: what an experiment says its numbers show, declared once and judged on every run.

A claim compares two rows of the run (variants or untrained baselines) on one test metric::

    Claim("deform-all", "regular", "map")                        # deform-all beats regular on mAP
    Claim("ours", "torchvision", "map50", kind="equals", tol=0.01)  # equal within 0.01 AP50

Judged on the paired differences ``a − b`` across seeds (Student-t interval); with one seed, on a paired
bootstrap over the test items when both rows carry per-item values (the interval then covers the test
set's sampling only, and the claim says that training variance was not measured). Verdicts: *holds* (the
interval lies on the claimed side), *not shown* (it contains 0, or leaves the tolerance of an equality),
*fails* (it lies on the wrong side).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vislab.protocol import stats

# metrics where lower is better (everything else: higher is better)
LOWER_IS_BETTER = ("loss", "error", "err", "_px", "_pct", "hd95", "ms", "noc", "drop", "deletion")


def lower_is_better(metric: str) -> bool:
    return metric == "loss" or any(metric.endswith(s) or metric.startswith(s) or f"_{s}" in metric
                                   for s in LOWER_IS_BETTER if s != "loss")


@dataclass(frozen=True)
class Claim:
    """``a`` beats (or equals, within ``tol``) ``b`` on test ``metric``. ``higher`` overrides the metric's
    direction (default: lower is better for losses, errors, times, NoC, drops; higher otherwise)."""

    a: str
    b: str
    metric: str
    kind: str = "beats"  # beats | equals
    tol: float = 0.0  # equals: the largest |a − b| that still counts as equal
    higher: bool | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("beats", "equals"):
            raise ValueError(f"claim kind must be 'beats' or 'equals', got {self.kind!r}")
        if self.kind == "equals" and not (self.tol > 0 and math.isfinite(self.tol)):
            raise ValueError(f"an 'equals' claim needs a finite tolerance tol > 0, got {self.tol}")

    @property
    def higher_is_better(self) -> bool:
        return (not lower_is_better(self.metric)) if self.higher is None else self.higher

    def sentence(self, label: str | None = None) -> str:
        if self.text:
            return self.text
        m = label or self.metric
        if self.kind == "equals":
            return f"{self.a} equals {self.b} on {m} within {self.tol:g}"
        return f"{self.a} beats {self.b} on {m}"


def judge(claim: Claim, rows: dict[str, dict[str, Any]], items: dict[str, dict[int, dict[str, np.ndarray]]],
          seeds: list[int], *, bootstrap_seed: int = 0) -> dict[str, Any]:
    """The claim's entry of ``summary.json``.

    ``rows``: ``{row: {"test": {metric: {"per_seed": [...]}}}}`` (variants and baselines; a baseline has one
    value, which pairs with every seed); ``items``: ``{row: {seed: {metric: per-item array}}}``.
    """
    from vislab.report.blocks import metric_label

    out: dict[str, Any] = {"text": claim.sentence(metric_label(claim.metric)), "metric": claim.metric,
                           "a": claim.a, "b": claim.b,
                           "kind": claim.kind, "tol": claim.tol if claim.kind == "equals" else None,
                           "higher_is_better": claim.higher_is_better, "n_seeds": len(seeds)}
    missing = [r for r in (claim.a, claim.b) if r not in rows or claim.metric not in rows[r].get("test", {})]
    if missing:
        out.update(diff=None, verdict="not shown", note=f"{missing[0]} has no test {claim.metric} in this run")
        return out
    a = _per_seed(rows[claim.a], claim.metric, len(seeds))
    b = _per_seed(rows[claim.b], claim.metric, len(seeds))
    if len(seeds) >= 2:
        diff = stats.paired_difference(a, b)
        note = f"paired over {diff['n']} seeds"
    else:
        ia = items.get(claim.a, {}).get(seeds[0], {}).get(claim.metric) if seeds else None
        ib = items.get(claim.b, {}).get(seeds[0], {}).get(claim.metric) if seeds else None
        if ia is None or ib is None or len(ia) != len(ib):
            ia = items.get(claim.a, {}).get(None, {}).get(claim.metric) if ia is None else ia
            ib = items.get(claim.b, {}).get(None, {}).get(claim.metric) if ib is None else ib
        if callable(ia) and callable(ib) and len(ia) == len(ib) and len(ia) > 1:  # Resampled metrics
            diff = stats.bootstrap_difference(None, None, statistic=lambda i, j: ia(i) - ib(j), n_items=len(ia),
                                              samples=1000, seed=bootstrap_seed)
            note = (f"one seed: paired bootstrap over {diff['n']} test items (test-set uncertainty only; "
                    "training variance was not measured)")
        elif ia is not None and ib is not None and len(ia) == len(ib) and len(ia) > 1:
            diff = stats.bootstrap_difference(np.asarray(ia), np.asarray(ib), seed=bootstrap_seed)
            diff["mean"] = (a[0] - b[0]) if a[0] is not None and b[0] is not None else diff["mean"]
            note = (f"one seed: paired bootstrap over {diff['n']} test items (test-set uncertainty only; "
                    "training variance was not measured)")
        else:
            d = (a[0] - b[0]) if a and b and a[0] is not None and b[0] is not None else None
            diff = {"mean": d, "ci95": None, "n": 1, "method": "one seed, no per-item values"}
            note = "one seed and no per-item values: no interval"
    if claim.kind == "beats" or diff["ci95"] is None:
        v = stats.verdict(diff["ci95"], kind=claim.kind, higher=claim.higher_is_better, tol=claim.tol)
    else:
        v = stats.verdict(diff["ci95"], kind="equals", tol=claim.tol)
    out.update(diff=diff, verdict=v, note=note)
    return out


def _per_seed(row: dict[str, Any], metric: str, n: int) -> list[float | None]:
    vals = row["test"][metric].get("per_seed") or [row["test"][metric].get("mean")]
    if len(vals) == 1 and n > 1:  # an untrained baseline: one value pairs with every seed
        vals = vals * n
    return [float(v) if v is not None else None for v in vals]


def verdict_sentence(claims: list[dict[str, Any]]) -> str:
    """The report's opening sentence: every claim with its verdict and difference."""
    if not claims:
        return "This experiment declares no claims."
    parts = []
    for c in claims:
        d = c.get("diff") or {}
        if d.get("mean") is not None:
            ci = d.get("ci95")
            num = f"{d['mean']:+.3g}" + (f", 95 % CI [{ci[0]:+.3g}, {ci[1]:+.3g}]" if ci else ", no interval")
        else:
            num = c.get("note", "no value")
        parts.append(f"{c['text']}: **{c['verdict']}** ({num})")
    n = claims[0]["n_seeds"]
    return f"Claims checked over {n} seed{'s' if n != 1 else ''}: " + "; ".join(parts) + "."
