"""The transfer experiment's figures: learning curves per kind of stage, and the test embeddings of each
regime projected on their first two principal components."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vislab.report import figures
from vislab.report.document import Report
from vislab.report.embedding_plot import EmbeddingPanel, plot_embeddings

__all__ = ["embeddings_figure", "stage_curves"]

_CURVES = (
    ("accuracy", ["loss", "accuracy"], "curves_ce.png",
     "Loss and accuracy per epoch of every stage with a classifier: train (solid) and validation (dashed). For "
     "`joint` (and a joint-schedule control) the loss is L_CE + λ·L_triplet; its parts are plotted below."),
    ("triplet_loss", ["triplet_loss", "active_fraction"], "curves_triplet.png",
     "Triplet loss and the fraction of active triplets (all valid triplets of a batch with a positive loss) per "
     "epoch: regime (b)'s triplet stage and the joint regimes."),
    ("ce_loss", ["ce_loss", "triplet_loss"], "curves_joint_parts.png",
     "The two parts of the joint loss, train (solid) and validation (dashed)."),
)


def stage_curves(rep: Report, rows: list[dict[str, Any]], figure: Callable[[str], Path], seed: int) -> None:
    """Three figures from ``metrics.csv`` rows (one seed): the stages with a classifier (loss, accuracy), the
    stages with a triplet loss (triplet loss, active fraction) and the joint loss's two parts; a figure whose
    stages are absent is left out. ``figure(name)`` gives the path of a figure file."""
    for key, metrics, name, caption in _CURVES:
        series = list(dict.fromkeys((r["variant"], r["stage"]) for r in rows if f"train_{key}" in r))
        if series:
            rep.figure(figures.plot_curves(rows, metrics, figure(name), series=series), f"Seed {seed}. {caption}")


def embeddings_figure(rep: Report, panels: Sequence[tuple[str, float, dict[str, Any]]],
                      class_names: Sequence[str], path: Path, seed: int) -> None:
    """One PCA panel per ``(variant, test accuracy, {"coords", "labels", "explained"})``."""
    shown = [EmbeddingPanel(f"{v} — acc {acc:.1%}", e["coords"], e["labels"], e["explained"]) for v, acc, e in panels]
    rep.figure(plot_embeddings(shown, class_names, path),
               f"Test-set embeddings of each regime's feature extractor (seed {seed}; L2-normalised, as the triplet "
               "loss sees them) projected on their first two principal components. `ce_fc` shows the pretrained "
               "features unchanged.")
