"""Figures a report needs, as PNG files: learning curves, confusion matrices, bar charts, image grids.

All functions take plain data (lists, arrays) and a path, draw with matplotlib's Agg backend and
return the path. Colours are consistent per variant across figures of one run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

if "inline" not in str(matplotlib.rcParams.get("backend", "")).lower():  # Jupyter keeps its inline figures
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_COLORS = plt.get_cmap("tab10").colors


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write a matplotlib figure atomically, close it, return the path: a PNG, or a JPEG (quality 90) when the
    path ends in ``.jpg``/``.jpeg`` -- for large grids of photographs under heat maps, which PNG stores at
    megabytes (the folder report's every-method figure: 5.5 MB as PNG at 12 images)."""
    import io

    from vislab.io.files import atomic_write_bytes

    buf = io.BytesIO()
    if Path(path).suffix.lower() in (".jpg", ".jpeg"):
        fig.savefig(buf, format="jpeg", dpi=110, bbox_inches="tight", pil_kwargs={"quality": 90})
    else:
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


_save = save_figure  # the old private name, still imported by a few modules


def plot_curves(rows: list[dict[str, Any]], metrics: Sequence[str], path: str | Path, *,
                series: Sequence[tuple[str, str]] | None = None, title: str | None = None,
                splits: Sequence[str] = ("train", "val")) -> Path:
    """One panel per metric; a line per (variant, stage) and split (train solid, val dashed).

    ``rows`` are metrics.csv rows with ``variant``, ``stage``, ``epoch`` and ``{split}_{metric}`` keys.
    """
    if series is None:
        series = list(dict.fromkeys((r["variant"], r["stage"]) for r in rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, (variant, stage) in enumerate(series):
            rs = sorted((r for r in rows if r["variant"] == variant and r["stage"] == stage), key=lambda r: r["epoch"])
            label = variant if stage == "train" else f"{variant} ({stage})"
            for split, style in zip(splits, ("-", "--", ":")):
                key = f"{split}_{metric}"
                pts = [(r["epoch"], r[key]) for r in rs if key in r]
                if pts:
                    x, y = zip(*pts)
                    ax.plot(x, y, style, marker="o", ms=3, color=_COLORS[i % 10], label=f"{label} {split}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.set_title(metric)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8,
                   bbox_to_anchor=(0.5, -0.02 - 0.04 * ((len(labels) - 1) // 4)))
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08 + 0.04 * ((len(labels) - 1) // 4) if handles else 0, 1, 1))
    return _save(fig, path)


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    """Confusion matrix (rows: true class, columns: predicted), counts and row-normalised shading."""
    cm = np.asarray(cm)
    n = len(class_names)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = max(3.5, 0.55 * n + 1.8)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_bars(values: dict[str, float], path: str | Path, *, ylabel: str, title: str = "",
              fmt: str = "{:.3g}") -> Path:
    """A labelled bar per key (e.g. ms per step per variant)."""
    fig, ax = plt.subplots(figsize=(max(3.5, 1.1 * len(values) + 1.5), 3.4))
    names = list(values)
    bars = ax.bar(names, [values[k] for k in names], color=[_COLORS[i % 10] for i in range(len(names))])
    for b, k in zip(bars, names):
        ax.annotate(fmt.format(values[k]), (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    return _save(fig, path)


def image_grid(images: Sequence[np.ndarray], path: str | Path, *, titles: Sequence[str] | None = None,
               ncols: int = 6, title: str = "", cell: float = 1.9,
               title_colors: Sequence[str] | None = None) -> Path:
    """Images (H×W×3 floats in [0, 1] or uint8, or H×W) in a grid with optional per-image titles."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, (n + ncols - 1) // ncols)
    row_h = cell + (0.25 if titles else 0.0)  # room for the per-image titles above square images
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, row_h * nrows + (0.4 if title else 0)),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            img = images[k]
            ax.imshow(img, cmap="gray" if np.ndim(img) == 2 else None)
            if titles:
                ax.set_title(titles[k], fontsize=7,
                             color=(title_colors[k] if title_colors else "black"))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
