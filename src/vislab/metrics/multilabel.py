"""Multi-label classification metrics: exact match, per-label accuracy, P/R/F1 (micro, macro), mAP.

Every metric follows scikit-learn's definition (the tests compare with ``sklearn.metrics``):

- ``exact_match`` (= ``accuracy``): fraction of samples whose whole label vector is right
  (``accuracy_score`` on multi-label input, a.k.a. subset accuracy).
- ``label_accuracy``: mean over labels of the per-label accuracy (= fraction of right entries).
- ``precision/recall/f1_micro``: from the tp/fp/fn counts pooled over all labels;
  ``..._macro``: unweighted mean of the per-label values. A 0/0 ratio counts as 0
  (``precision_recall_fscore_support(..., zero_division=0)``).
- ``map``: mean over the labels that have at least one positive of the average precision
  ``AP = Σ_k (R_k − R_{k−1}) P_k`` over the distinct score thresholds
  (``average_precision_score``). Labels without positives have ``ap = nan`` in ``per_label``
  and are left out of the mean; with no positive at all ``map`` is ``nan``.

Decisions use ``probability >= threshold``; with ``from_logits=True`` the probability is
``sigmoid(logit)``. AP only needs a ranking, so it is computed on the scores as given (logits
rank like probabilities and do not saturate to ties the way ``sigmoid`` does in float32).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray


def _as_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    if isinstance(x, np.ndarray):
        return x.astype(np.float64, copy=False)
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _check_inputs(scores: ArrayLike, targets: ArrayLike, *, threshold: float,
                  from_logits: bool) -> tuple[np.ndarray, np.ndarray]:
    s = _as_numpy(scores, "scores")
    t = _as_numpy(targets, "targets")
    if s.ndim != 2:
        raise ValueError(f"scores must have shape [N, L], got shape {tuple(s.shape)}")
    if t.shape != s.shape:
        raise ValueError(f"targets must have the shape of scores {tuple(s.shape)}, got {tuple(t.shape)}")
    if s.shape[0] == 0:
        raise ValueError("scores must hold at least one sample, got N = 0")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite, got NaN or inf values")
    if not np.isin(t, (0.0, 1.0)).all():
        bad = np.unique(t[~np.isin(t, (0.0, 1.0))])[:5]
        raise ValueError(f"targets must be multi-hot (0 or 1), got values such as {bad.tolist()}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a probability and must lie in [0, 1], got {threshold}")
    if not from_logits and (s.min() < 0.0 or s.max() > 1.0):
        raise ValueError(
            f"with from_logits=False scores must be probabilities in [0, 1], got range "
            f"[{s.min():.4g}, {s.max():.4g}]; pass from_logits=True for logits")
    return s, t.astype(bool)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den == 0`` (scikit-learn's ``zero_division=0``)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Average precision of one label, scikit-learn's step-wise definition (no interpolation).

    Args:
        scores: ``[N]`` scores, higher means more likely positive (logits or probabilities).
        targets: ``[N]`` booleans.

    Returns:
        ``Σ_k (R_k − R_{k−1}) P_k`` over the distinct thresholds in decreasing order (tied scores
        form one threshold), or ``nan`` when ``targets`` has no positive.
    """
    targets = np.asarray(targets, bool)
    n_pos = int(targets.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    s, y = scores[order], targets[order]
    # last index of every run of tied scores: one threshold each
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def multilabel_metrics(scores: ArrayLike, targets: ArrayLike, *, threshold: float = 0.5,
                       from_logits: bool = True) -> dict:
    """All multi-label metrics of one evaluation, as plain Python floats.

    Args:
        scores: ``Tensor[N, L]`` or ``ndarray[N, L]`` logits (``from_logits=True``) or
            probabilities in ``[0, 1]``.
        targets: same shape, multi-hot 0/1 (bool, int or float).
        threshold: a label is predicted when its probability is ``>= threshold``.
        from_logits: apply ``sigmoid`` to ``scores`` before thresholding.

    Returns:
        ``{"exact_match", "accuracy" (same value), "label_accuracy", "precision_micro",
        "recall_micro", "f1_micro", "precision_macro", "recall_macro", "f1_macro", "map"}`` as
        floats, plus ``"per_label"``: a dict of ``ndarray[L]`` named ``ap`` (nan where a label
        has no positive), ``precision``, ``recall``, ``f1``, ``accuracy`` and ``support``
        (number of positives, int).
    """
    s, y = _check_inputs(scores, targets, threshold=threshold, from_logits=from_logits)
    prob = 1.0 / (1.0 + np.exp(-s)) if from_logits else s
    pred = prob >= threshold  # (N, L)

    tp = (pred & y).sum(0)  # (L,)
    fp = (pred & ~y).sum(0)
    fn = (~pred & y).sum(0)
    support = y.sum(0)

    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)  # = 2PR/(P+R), 0 when tp = 0
    p_micro = _safe_div(tp.sum(), tp.sum() + fp.sum())
    r_micro = _safe_div(tp.sum(), tp.sum() + fn.sum())
    f1_micro = _safe_div(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())

    correct = pred == y  # (N, L)
    ap = np.array([average_precision(s[:, j], y[:, j]) for j in range(s.shape[1])])
    has_pos = support > 0
    mean_ap = float(ap[has_pos].mean()) if has_pos.any() else float("nan")

    exact = float(correct.all(1).mean())
    return {
        "exact_match": exact,
        "accuracy": exact,
        "label_accuracy": float(correct.mean()),
        "precision_micro": float(p_micro),
        "recall_micro": float(r_micro),
        "f1_micro": float(f1_micro),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "map": mean_ap,
        "per_label": {
            "ap": ap,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "accuracy": correct.mean(0),
            "support": support.astype(np.int64),
        },
    }


class MultiLabelMeter:
    """Collects ``(scores, targets)`` batch by batch and computes :func:`multilabel_metrics` once.

    AP and the macro averages are not means of per-batch values, so an epoch's metrics need all
    its scores; this keeps them on the CPU (``N × L`` floats).

    Example::

        meter = MultiLabelMeter(threshold=0.5)
        for x, y in loader:
            meter.update(model(x), y)
        metrics = meter.compute()
    """

    def __init__(self, *, threshold: float = 0.5, from_logits: bool = True) -> None:
        self.threshold = threshold
        self.from_logits = from_logits
        self.reset()

    def reset(self) -> None:
        self._scores: list[Tensor] = []
        self._targets: list[Tensor] = []

    def update(self, scores: Tensor, targets: Tensor) -> None:
        """Add one batch: ``scores`` and ``targets`` are ``Tensor[B, L]``."""
        if scores.shape != targets.shape or scores.dim() != 2:
            raise ValueError(f"scores and targets must both be [B, L], got {tuple(scores.shape)} "
                             f"and {tuple(targets.shape)}")
        self._scores.append(scores.detach().float().cpu())
        self._targets.append(targets.detach().float().cpu())

    def __len__(self) -> int:
        return sum(s.shape[0] for s in self._scores)

    def compute(self) -> dict:
        if not self._scores:
            raise ValueError("MultiLabelMeter.compute() called before any update()")
        return multilabel_metrics(torch.cat(self._scores), torch.cat(self._targets),
                                  threshold=self.threshold, from_logits=self.from_logits)
