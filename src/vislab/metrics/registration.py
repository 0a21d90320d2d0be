"""Metrics of change detection / registration: translation error (px), scale error (%), change-type
accuracy, each overall and per true change type, and the change-type confusion matrix.

Estimates and truths follow the project's convention (``vislab.ops.registration``): ``(dx, dy)`` the
shift in pixels, ``log_s`` the natural log of the scale. Definitions:

* translation error: ``‖t̂ − t‖₂`` in pixels; reported as mean, median and 90th percentile;
* scale error: ``|ŝ / s − 1| · 100`` in percent; mean and median;
* change type of an estimate (unless a method gives its own, e.g. the network's type head): a shift
  when ``‖t̂‖ >= shift_threshold``, a scaling when ``|log ŝ| >= scale_threshold``
  (:func:`types_from_estimates`); type accuracy is the fraction of pairs whose type is right.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

CHANGE_TYPES = ("none", "shift", "scale", "both")
METRIC_KEYS = ("translation_error_mean", "translation_error_median", "translation_error_p90", "scale_error_mean",
               "scale_error_median", "type_accuracy")


def _vec(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64).reshape(-1)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    return a


def translation_errors(dx: Any, dy: Any, true_dx: Any, true_dy: Any) -> np.ndarray:
    """``‖(dx, dy) − (true_dx, true_dy)‖₂`` per pair, ``float64[N]`` pixels."""
    a, b, c, d = (_vec(v, n) for v, n in ((dx, "dx"), (dy, "dy"), (true_dx, "true_dx"), (true_dy, "true_dy")))
    if not len(a) == len(b) == len(c) == len(d):
        raise ValueError(f"dx, dy, true_dx, true_dy must have one length, got {len(a)}, {len(b)}, {len(c)}, {len(d)}")
    return np.hypot(a - c, b - d)


def scale_errors(log_s: Any, true_log_s: Any) -> np.ndarray:
    """``|ŝ / s − 1| · 100`` per pair, ``float64[N]`` percent."""
    a, b = _vec(log_s, "log_s"), _vec(true_log_s, "true_log_s")
    if len(a) != len(b):
        raise ValueError(f"log_s and true_log_s must have one length, got {len(a)} and {len(b)}")
    return np.abs(np.expm1(a - b)) * 100.0


def types_from_estimates(dx: Any, dy: Any, log_s: Any, *, shift_threshold: float,
                         scale_threshold: float) -> np.ndarray:
    """Change-type indices (``none 0, shift 1, scale 2, both 3``) from thresholds on the estimates."""
    if shift_threshold <= 0 or scale_threshold <= 0:
        raise ValueError(f"thresholds must be > 0, got shift {shift_threshold}, scale {scale_threshold}")
    shifted = np.hypot(_vec(dx, "dx"), _vec(dy, "dy")) >= shift_threshold
    scaled = np.abs(_vec(log_s, "log_s")) >= scale_threshold
    return shifted.astype(np.int64) + 2 * scaled.astype(np.int64)


def confusion_matrix(true_types: Any, pred_types: Any, n: int = len(CHANGE_TYPES)) -> np.ndarray:
    """``int64[n, n]``: rows the true type, columns the predicted one."""
    t = np.asarray(true_types, dtype=np.int64).reshape(-1)
    p = np.asarray(pred_types, dtype=np.int64).reshape(-1)
    if len(t) != len(p):
        raise ValueError(f"true_types and pred_types must have one length, got {len(t)} and {len(p)}")
    for name, v in (("true_types", t), ("pred_types", p)):
        if len(v) and (v.min() < 0 or v.max() >= n):
            raise ValueError(f"{name} must be indices in [0, {n}), got values in [{v.min()}, {v.max()}]")
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def _summary(te: np.ndarray, se: np.ndarray, ok: np.ndarray) -> dict[str, float]:
    if len(te) == 0:
        return {k: float("nan") for k in METRIC_KEYS}
    return {"translation_error_mean": float(te.mean()), "translation_error_median": float(np.median(te)),
            "translation_error_p90": float(np.percentile(te, 90)), "scale_error_mean": float(se.mean()),
            "scale_error_median": float(np.median(se)), "type_accuracy": float(ok.mean())}


def registration_metrics(pred: dict[str, Any], true: dict[str, Any], *, shift_threshold: float,
                         scale_threshold: float, pred_types: Any = None,
                         type_names: Sequence[str] = CHANGE_TYPES) -> dict[str, Any]:
    """All metrics of one method on one set of pairs.

    Args:
        pred: estimates ``{"dx", "dy", "log_s"}`` (arrays or tensors of length N).
        true: truths ``{"dx", "dy", "log_s", "type"}``.
        shift_threshold, scale_threshold: for the estimates' change types (module docstring).
        pred_types: the method's own type indices (e.g. the network's type head) instead of thresholds.
    Returns:
        ``{"n", METRIC_KEYS..., "per_type": {name: {"n", METRIC_KEYS...}}, "confusion": int64[4, 4],
        "translation_errors", "scale_errors" (float64[N]), "pred_types" (int64[N])}``.
    """
    te = translation_errors(pred["dx"], pred["dy"], true["dx"], true["dy"])
    se = scale_errors(pred["log_s"], true["log_s"])
    if len(te) != len(se):
        raise ValueError(f"shift and scale estimates must have one length, got {len(te)} and {len(se)}")
    t_true = np.asarray(true["type"], dtype=np.int64).reshape(-1)
    if len(t_true) != len(te):
        raise ValueError(f"true['type'] must have length {len(te)}, got {len(t_true)}")
    if pred_types is None:
        t_pred = types_from_estimates(pred["dx"], pred["dy"], pred["log_s"], shift_threshold=shift_threshold,
                                      scale_threshold=scale_threshold)
    else:
        t_pred = np.asarray(pred_types.detach().cpu() if hasattr(pred_types, "detach") else pred_types,
                            dtype=np.int64).reshape(-1)
        if len(t_pred) != len(te):
            raise ValueError(f"pred_types must have length {len(te)}, got {len(t_pred)}")
    ok = t_pred == t_true
    out: dict[str, Any] = {"n": int(len(te)), **_summary(te, se, ok)}
    out["per_type"] = {name: {"n": int((t_true == k).sum()), **_summary(te[t_true == k], se[t_true == k],
                                                                           ok[t_true == k])}
                       for k, name in enumerate(type_names)}
    out["confusion"] = confusion_matrix(t_true, t_pred, len(type_names))
    out["translation_errors"], out["scale_errors"], out["pred_types"] = te, se, t_pred
    return out


def flat_metrics(m: dict[str, Any]) -> dict[str, float]:
    """The numbers of :func:`registration_metrics` as one flat dict for ``summary.json``:
    ``METRIC_KEYS`` overall and ``<key>_<type>`` per change type (e.g. ``translation_error_median_both``)."""
    out = {k: float(m[k]) for k in METRIC_KEYS}
    for name, sub in m["per_type"].items():
        out.update({f"{k}_{name}": float(sub[k]) for k in METRIC_KEYS})
    return out
