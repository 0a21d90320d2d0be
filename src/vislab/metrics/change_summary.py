"""Summaries of change-detection estimates beyond :func:`vislab.metrics.registration.registration_metrics`."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from vislab.data.pairs import CHANGE_TYPES

__all__ = ["moved_medians"]


def moved_medians(metrics: dict[str, Any], true_type: Tensor) -> tuple[float, float]:
    """Median translation error (px) over the pairs that were shifted (``shift``, ``both``) and median scale
    error (%) over the pairs that were scaled (``scale``, ``both``): over all pairs the unchanged half makes
    a method that never regresses a change look accurate."""
    t = true_type.numpy()
    shifted = np.isin(t, [CHANGE_TYPES.index("shift"), CHANGE_TYPES.index("both")])
    scaled = np.isin(t, [CHANGE_TYPES.index("scale"), CHANGE_TYPES.index("both")])
    te, se = metrics["translation_errors"], metrics["scale_errors"]
    return (float(np.median(te[shifted])) if shifted.any() else float("nan"),
            float(np.median(se[scaled])) if scaled.any() else float("nan"))
