"""Figures of the detection experiment: predicted and ground-truth boxes side by side, per-class AP50 bars, and
the pipeline a student needs to see (the anchors of one feature-map cell and those sampled for the RPN loss,
RPN proposals before and after NMS, the RoIs sampled as foreground/background for the head).

Images are ``(H, W, 3)`` float arrays in [0, 1]; boxes ``(N, 4)`` xyxy in pixels. Each function writes a PNG
and returns its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

NEG_SHOWN = 40  # negative anchors drawn in the anchors figure (all are counted)


def class_colors(n: int) -> list[tuple[float, ...]]:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(max(n, 1))]


def draw_boxes(ax: Any, boxes: Tensor | np.ndarray, *, color: Any, lw: float = 1.2, alpha: float = 1.0,
                labels: list[str] | None = None, ls: str = "-") -> None:
    from matplotlib.patches import Rectangle

    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        c = color[k] if isinstance(color, list) else color
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=c, lw=lw, alpha=alpha, ls=ls))
        if labels is not None:
            ax.text(x0 + 1, y0 + 1, labels[k], color="black", fontsize=6, va="top",
                    bbox={"facecolor": c, "alpha": 0.8, "pad": 0.5, "lw": 0})


def show_image(ax: Any, img: np.ndarray, title: str = "") -> None:
    ax.imshow(np.clip(img, 0, 1))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlim(0, img.shape[1])
    ax.set_ylim(img.shape[0], 0)
    if title:
        ax.set_title(title, fontsize=8)


def detections_figure(predictions: dict[str, tuple[list[Any], list[Any]]], test: Any, names: list[str], n: int,
                      score: float, path: Path) -> Path:
    """Ground truth (top row) and each variant's detections with score >= ``score`` (one row each) on the first
    ``n`` images of the dataset ``test``. ``predictions``: ``{variant: (outputs, targets)}`` of the evaluation,
    matched to the images by the targets' ``"id"``; ``names[c - 1]`` names label ``c``."""
    import matplotlib.pyplot as plt

    from vislab.report.figures import save_figure

    colors = class_colors(len(names))
    variants = list(predictions)
    fig, axes = plt.subplots(1 + len(variants), n, figsize=(2.3 * n, 2.4 * (1 + len(variants))), squeeze=False)
    for j in range(n):
        image, target = test[j]
        img = image.permute(1, 2, 0).numpy()  # (H, W, 3)
        lab = target["labels"].tolist()
        crowd = target["iscrowd"].tolist()
        ax = axes[0][j]
        show_image(ax, img, f"ground truth ({len(lab)})")
        draw_boxes(ax, target["boxes"], color=[colors[c - 1] for c in lab],
                   labels=[names[c - 1] + (" (crowd)" if k else "") for c, k in zip(lab, crowd)])
        tid = target["id"]
        for r, v in enumerate(variants):
            pred = next((p for p, t in zip(*predictions[v]) if t["id"] == tid), None)
            ax = axes[r + 1][j]
            if pred is None:
                show_image(ax, img, f"{v}: (not evaluated)")
                continue
            keep = pred["scores"] >= score
            pl, ps = pred["labels"][keep].tolist(), pred["scores"][keep].tolist()
            show_image(ax, img, f"{v} ({len(pl)} ≥ {score:g})")
            draw_boxes(ax, pred["boxes"][keep], color=[colors[(c - 1) % len(colors)] for c in pl],
                       labels=[f"{names[c - 1] if 0 < c <= len(names) else c} {s:.2f}" for c, s in zip(pl, ps)])
    fig.tight_layout()
    return save_figure(fig, path)


def per_class_figure(runs: dict[str, Any], names: list[str], path: Path) -> Path:
    """Grouped bars of test AP50 per class, one colour per variant (``runs[v]["ap50_per_class"]``; -1 drawn as 0)."""
    import matplotlib.pyplot as plt

    from vislab.report.figures import _COLORS, save_figure

    x = np.arange(len(names))
    w = 0.8 / max(len(runs), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(names) + 1.5), 3.2))
    for k, (v, r) in enumerate(runs.items()):
        vals = [max(r["ap50_per_class"].get(n, -1.0), 0.0) for n in names]
        ax.bar(x + (k - (len(runs) - 1) / 2) * w, vals, w, label=v, color=_COLORS[k % 10])
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center",
                       fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test AP50")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def anchors_figure(img: np.ndarray, info: dict[str, Any], target: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from vislab.report.figures import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.9))
    Hf, Wf = info["feature_size"]
    sy, sx = info["stride"]
    scale_y, scale_x = info["scale"]
    ax = axes[0]
    show_image(ax, img, f"anchors at cell {info['location']} ({len(info['anchors'])})")
    cy = (np.arange(Hf) * sy) / scale_y
    cx = (np.arange(Wf) * sx) / scale_x
    gx, gy = np.meshgrid(cx, cy)
    ax.plot(gx.ravel(), gy.ravel(), ".", color="yellow", ms=2.5, alpha=0.8)
    anchors = info["anchors"].numpy()
    colors = class_colors(len(anchors))
    draw_boxes(ax, anchors, color=colors, lw=1.3)
    r, c = info["location"]
    ax.plot([c * sx / scale_x], [r * sy / scale_y], "o", color="red", ms=4)
    ax.set_xlim(min(0, anchors[:, 0].min()) - 2, max(img.shape[1], anchors[:, 2].max()) + 2)
    ax.set_ylim(max(img.shape[0], anchors[:, 3].max()) + 2, min(0, anchors[:, 1].min()) - 2)
    ax = axes[1]
    show_image(ax, img, "anchors sampled for the RPN loss")
    neg = info["anchors_negative"]
    draw_boxes(ax, neg[::max(1, len(neg) // NEG_SHOWN)][:NEG_SHOWN], color="red", lw=0.6, alpha=0.6)
    draw_boxes(ax, info["anchors_positive"], color="lime", lw=1.2)
    draw_boxes(ax, target["boxes"], color="white", lw=1.6, ls="--")
    fig.tight_layout()
    return save_figure(fig, path)


def proposals_figure(img: np.ndarray, info: dict[str, Any], target: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from vislab.report.figures import save_figure

    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.9))
    for ax, boxes, scores, top, title in (
            (axes[0], info["proposals_pre_nms"], info["scores_pre_nms"], 150,
             f"before NMS ({len(info['proposals_pre_nms'])})"),
            (axes[1], info["proposals"], info["scores"], 25, f"after NMS ({len(info['proposals'])})")):
        show_image(ax, img, title)
        b, s = boxes[:top].numpy(), scores[:top].numpy()
        order = np.argsort(s)  # draw the best last (on top)
        draw_boxes(ax, b[order], color=[cmap(float(v)) for v in s[order]], lw=0.8, alpha=0.8)
        draw_boxes(ax, target["boxes"], color="white", lw=1.6, ls="--")
    fig.tight_layout()
    return save_figure(fig, path)


def rois_figure(img: np.ndarray, info: dict[str, Any], target: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from vislab.report.figures import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.9))
    show_image(axes[0], img, f"foreground RoIs ({len(info['rois_fg'])})")
    draw_boxes(axes[0], info["rois_fg"], color="lime", lw=0.9, alpha=0.8)
    draw_boxes(axes[0], target["boxes"], color="white", lw=1.6, ls="--")
    show_image(axes[1], img, f"background RoIs ({len(info['rois_bg'])})")
    draw_boxes(axes[1], info["rois_bg"], color="red", lw=0.6, alpha=0.5)
    draw_boxes(axes[1], target["boxes"], color="white", lw=1.6, ls="--")
    fig.tight_layout()
    return save_figure(fig, path)
