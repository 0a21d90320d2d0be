"""2-D views of embeddings: a PCA projection written out in a few lines, and a scatter with one panel
per model (e.g. one per training regime), coloured by class.

``pca_2d`` is the textbook projection (centre, SVD, keep the two leading right singular vectors); it
agrees with ``sklearn.decomposition.PCA(n_components=2)`` up to the sign of each axis, which is fixed
here so that the largest-magnitude loading of each component is positive (stable across runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vislab.report.figures import _COLORS, _save, plt

__all__ = ["EmbeddingPanel", "pca_2d", "plot_embeddings"]

_MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*")


def pca_2d(x: object) -> tuple[np.ndarray, np.ndarray]:
    """Project rows onto their first two principal components.

    Args:
        x: ``[N, D]`` array-like (NumPy array or torch tensor), N >= 2 samples, D >= 1 features.

    Returns:
        ``(coords, explained)``: ``coords`` ``float64[N, 2]`` (centred scores; the second column is 0
        when D == 1 or all points lie on a line), ``explained`` ``float64[2]`` the fraction of the
        total variance along each axis (0 for a set of identical points).

    Raises:
        ValueError: ``x`` is not 2-D, has fewer than 2 rows, or holds NaN/inf.
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()  # type: ignore[union-attr]
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2 or a.shape[1] < 1:
        raise ValueError(f"pca_2d expects an array of shape [N, D] with N >= 2 and D >= 1, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("pca_2d: the embeddings contain NaN or inf")
    centred = a - a.mean(axis=0, keepdims=True)  # (N, D)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)  # s: (min(N, D),), vt: (min(N, D), D)
    k = min(2, vt.shape[0])
    comps = vt[:k]  # (k, D)
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])  # (k,)
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    coords = np.zeros((a.shape[0], 2))
    coords[:, :k] = centred @ comps.T  # (N, k)
    var = s**2
    total = var.sum()
    explained = np.zeros(2)
    if total > 0:
        explained[:k] = var[:k] / total
    return coords, explained


class EmbeddingPanel:
    """One panel: a title, ``coords`` ``[N, 2]`` and integer ``labels`` ``[N]`` (optional axis fractions)."""

    def __init__(self, title: str, coords: np.ndarray, labels: Sequence[int] | np.ndarray,
                 explained: Sequence[float] | None = None) -> None:
        self.title = title
        self.coords = np.asarray(coords, dtype=np.float64)
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.coords.ndim != 2 or self.coords.shape[1] != 2:
            raise ValueError(f"coords must have shape [N, 2], got {self.coords.shape}")
        if self.labels.shape != (self.coords.shape[0],):
            raise ValueError(f"labels must have shape [N] = [{self.coords.shape[0]}], got {self.labels.shape}")
        self.explained = None if explained is None else tuple(float(v) for v in explained)


def plot_embeddings(panels: Sequence[EmbeddingPanel], class_names: Sequence[str], path: str | Path, *,
                    title: str = "", ncols: int = 4) -> Path:
    """A scatter per panel, points coloured (and marked) by class, axes labelled with explained variance."""
    if not panels:
        raise ValueError("plot_embeddings needs at least one panel")
    n = len(panels)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.4 * nrows + (0.4 if title else 0)),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, panel in zip(axes.flat, panels):
        for c, name in enumerate(class_names):
            pts = panel.coords[panel.labels == c]
            ax.scatter(pts[:, 0], pts[:, 1], s=12, alpha=0.75, color=_COLORS[c % 10],
                       marker=_MARKERS[c % len(_MARKERS)], label=name, linewidths=0)
        ax.set_title(panel.title, fontsize=9)
        if panel.explained is not None:
            ax.set_xlabel(f"PC1 ({panel.explained[0]:.0%} of variance)", fontsize=8)
            ax.set_ylabel(f"PC2 ({panel.explained[1]:.0%})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8,
                   bbox_to_anchor=(0.5, -0.01))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
    return _save(fig, path)
