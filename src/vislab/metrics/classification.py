"""Single-label classification metrics: accuracy, per-class precision/recall/F1, confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


def confusion_matrix(preds: Tensor | np.ndarray, targets: Tensor | np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[i, j]`` = number of samples of true class i predicted as j."""
    p = np.asarray(torch.as_tensor(preds).cpu(), dtype=np.int64).ravel()
    t = np.asarray(torch.as_tensor(targets).cpu(), dtype=np.int64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"preds and targets must have the same length, got {p.shape[0]} and {t.shape[0]}")
    if p.size and (min(p.min(), t.min()) < 0 or max(p.max(), t.max()) >= num_classes):
        raise ValueError(f"class indices must lie in [0, {num_classes}), got range "
                         f"[{min(p.min(), t.min())}, {max(p.max(), t.max())}]")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_report(logits: Tensor, targets: Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, and per-class rows from logits ``Tensor[N, C]``."""
    n = len(class_names)
    preds = logits.argmax(1)
    cm = confusion_matrix(preds, targets, n)
    tp = np.diag(cm).astype(float)
    support = cm.sum(1).astype(float)
    predicted = cm.sum(0).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0)
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(class_names)},
        "confusion_matrix": cm.tolist(),
    }
