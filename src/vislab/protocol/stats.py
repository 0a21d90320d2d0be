"""The statistics behind every number with an interval and every claim verdict.

* :func:`summarize` — per-seed values of one metric → mean, sample std, a 95 % Student-t interval;
* :func:`t_interval` — the interval alone (equal to ``scipy.stats.t.interval(conf, n - 1, mean, sem)``);
* :func:`paired_difference` — a claim over seeds: the mean of the paired differences ``a − b`` with its
  Student-t interval (the paired t-test's interval);
* :func:`bootstrap_difference` — a claim with one seed: a paired bootstrap over test items (resampling
  items, the same resample for both sides) gives the test-set part of the uncertainty only;
* :func:`verdict` — *holds* / *not shown* / *fails* from an interval, the claim's kind and direction.

Pure NumPy and ``math``; ``scipy.stats.t.ppf`` when SciPy is there (it is a dependency of scikit-image),
tested equal to SciPy (``tests/protocol/test_stats.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 2000


def _t_quantile(p: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(p, df))


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The two-sided Student-t interval of the mean of ``values`` (``None`` for fewer than two values)."""
    x = np.asarray(_finite(values), dtype=np.float64)
    n = len(x)
    if n < 2:
        return None
    mean = float(x.mean())
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    if sem == 0.0:
        return (mean, mean)
    h = _t_quantile(0.5 + confidence / 2, n - 1) * sem
    return (mean - h, mean + h)


def summarize(values: Sequence[float | None], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """``{"mean", "std", "ci95", "per_seed"}`` of one metric over seeds. Non-finite values are kept as
    ``None`` in ``per_seed`` and left out of the statistics; one value gives ``std`` and ``ci95`` ``None``."""
    per_seed = [float(v) if v is not None and math.isfinite(float(v)) else None for v in values]
    x = _finite(values)
    ci = t_interval(x, confidence)
    return {"mean": float(np.mean(x)) if x else None,
            "std": float(np.std(x, ddof=1)) if len(x) > 1 else None,
            "ci95": list(ci) if ci is not None else None,
            "per_seed": per_seed}


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Mean and Student-t interval of the paired differences ``a[i] − b[i]`` (one pair per seed)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b) if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    ci = t_interval(d, confidence)
    return {"mean": float(np.mean(d)) if d else None, "ci95": list(ci) if ci else None, "n": len(d),
            "method": "paired t over seeds"}


def bootstrap_difference(a_items: np.ndarray | None, b_items: np.ndarray | None, *,
                         statistic: Callable[[np.ndarray, np.ndarray], float] | None = None,
                         n_items: int | None = None, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                         confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Paired bootstrap over test items of ``stat(a) − stat(b)`` (percentile interval).

    Either per-item values ``a_items``/``b_items`` (Tensor-likes of equal length; the statistic is their mean),
    or a ``statistic(idx_a, idx_b)`` callable with ``n_items`` that recomputes the difference on the resampled
    item indices (for metrics that are not means over items, such as mAP). Both sides see the same resample.
    """
    rng = np.random.default_rng(seed)
    if statistic is None:
        a = np.asarray(a_items, dtype=np.float64)
        b = np.asarray(b_items, dtype=np.float64)
        if a.shape != b.shape or a.ndim != 1:
            raise ValueError(f"per-item values must be two 1-D arrays of equal length, got {a.shape} and {b.shape}")
        d = a - b
        n = len(d)
        if n == 0:
            return {"mean": None, "ci95": None, "n": 0, "method": "paired bootstrap over test items"}
        idx = rng.integers(0, n, size=(samples, n))
        boots = d[idx].mean(axis=1)
        point = float(d.mean())
    else:
        if not n_items:
            raise ValueError("bootstrap_difference with a statistic needs n_items >= 1")
        n = int(n_items)
        full = np.arange(n)
        point = float(statistic(full, full))
        boots = np.array([statistic(i, i) for i in rng.integers(0, n, size=(samples, n))], dtype=np.float64)
    lo, hi = np.quantile(boots, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"mean": point, "ci95": [float(lo), float(hi)], "n": n, "method": "paired bootstrap over test items"}


def verdict(ci: Sequence[float] | None, *, kind: str, higher: bool = True, tol: float = 0.0) -> str:
    """The verdict of a claim on the interval ``ci`` of ``a − b``.

    * ``beats`` (``a`` better than ``b``; ``higher`` says which direction is better): *holds* when the whole
      interval lies on the better side of 0, *fails* when it lies wholly on the worse side, else *not shown*.
    * ``equals`` (within ``tol``): *holds* when the interval lies inside ``[-tol, tol]``, *fails* when it lies
      wholly outside it, else *not shown*.
    No interval (one seed and nothing to bootstrap) is *not shown*.
    """
    if ci is None or any(v is None or not math.isfinite(v) for v in ci):
        return "not shown"
    lo, hi = float(ci[0]), float(ci[1])
    if kind == "beats":
        if not higher:
            lo, hi = -hi, -lo
        return "holds" if lo > 0 else "fails" if hi < 0 else "not shown"
    if kind == "equals":
        if -tol <= lo and hi <= tol:
            return "holds"
        return "fails" if lo > tol or hi < -tol else "not shown"
    raise ValueError(f"claim kind must be 'beats' or 'equals', got {kind!r}")


def significant_digits(value: float, ci: Sequence[float] | None, *, default: int = 3) -> str:
    """``value`` to the precision its interval supports: two significant digits of the half-width decide the
    last decimal shown (0.8613 ± 0.0123 → ``0.861``); without an interval, ``default`` significant digits."""
    if value is None or not math.isfinite(value):
        return "—"
    if ci is None or ci[0] is None or ci[1] is None:
        return f"{value:.{default}g}" if abs(value) < 1000 else f"{value:,.0f}"
    half = abs(float(ci[1]) - float(ci[0])) / 2
    if half == 0 or not math.isfinite(half):
        return f"{value:.{default}g}"
    decimals = max(0, 1 - int(math.floor(math.log10(half))))
    return f"{value:.{decimals}f}"
