"""The change-detection experiment's figures, drawn from
:func:`vislab.metrics.registration.registration_metrics` results and estimates of every method: error
against the size of the change, change-type confusion matrices, and grayscale mosaics (source images, pairs,
examples warped back). Written with :func:`save_plain` (one render, the layout set by hand)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from vislab.data.pairs import CHANGE_TYPES
from vislab.metrics.change_summary import moved_medians
from vislab.report.blocks import comparison_bullets
from vislab.report.document import Report

__all__ = ["ERROR_FLOOR", "binned", "change_text", "confusion_figure", "dataset_pairs_figure", "error_figure",
           "examples_figure", "mosaic", "per_type_bullets", "save_plain", "sources_figure",
           "target_bullets", "thumb"]

ERROR_FLOOR = 1e-3  # log-axis floor of the error-vs-change figure


def change_text(dx: float, dy: float, log_s: float) -> str:
    """``t=(+1.0, -2.0) s=1.050``."""
    return f"t=({dx:+.1f}, {dy:+.1f}) s={math.exp(log_s):.3f}"


def thumb(img: np.ndarray, side: int = 160) -> np.ndarray:
    """A grayscale image scaled so its longer side is ``side`` px (anti-aliased)."""
    from skimage.transform import resize

    h, w = img.shape
    f = side / max(h, w)
    return resize(img, (max(1, round(h * f)), max(1, round(w * f))), anti_aliasing=True)


def binned(x: np.ndarray, y: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bin centres and the median of ``y`` in each bin of ``x`` (``edges``) holding at least 3 points."""
    centres, meds = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (x >= lo) & (x < hi)
        if sel.sum() >= 3:
            centres.append((lo + hi) / 2)
            meds.append(np.median(y[sel]))
    return np.array(centres), np.array(meds)


def error_figure(per_method: dict[str, dict[str, Any]], truth: dict[str, Tensor], path: Path) -> Path:
    """Median error per bin of the true change, one line per method (``per_method``: ``registration_metrics``
    results): translation error against |t| (shifted pairs) and against s, scale error against s. Log axes; a
    median below :data:`ERROR_FLOOR` is drawn at the floor."""
    import matplotlib.pyplot as plt

    from vislab.report.figures import _COLORS

    mag = np.hypot(truth["dx"].numpy(), truth["dy"].numpy())
    s = np.exp(truth["log_s"].numpy())
    shifted = mag > 0
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    panels = [(axes[0], mag[shifted], "translation_errors", shifted, "true |t| (px)", "translation error (px)"),
              (axes[1], s, "translation_errors", None, "true scale s", "translation error (px)"),
              (axes[2], s, "scale_errors", None, "true scale s", "scale error (%)")]
    for ax, x, key, sel, xlabel, ylabel in panels:
        edges = np.linspace(x.min(), x.max() + 1e-9, 9) if len(x) else np.array([0, 1])
        for j, m in enumerate(per_method):
            y = per_method[m][key] if sel is None else per_method[m][key][sel]
            c, med = binned(x, y, edges)
            ax.plot(c, np.maximum(med, ERROR_FLOOR), "o-", color=_COLORS[j % 10], label=m, ms=4)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"median {ylabel}")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.14, top=0.97, wspace=0.25)
    return save_plain(fig, path)


def confusion_figure(per_method: dict[str, dict[str, Any]], path: Path) -> Path:
    """One change-type confusion matrix per method (rows: true, columns: predicted)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(per_method), figsize=(3.6 * len(per_method), 3.6))
    n = len(CHANGE_TYPES)
    for ax, m in zip(np.atleast_1d(axes), per_method):
        cm = per_method[m]["confusion"]
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(n), CHANGE_TYPES, fontsize=8)
        ax.set_yticks(range(n), CHANGE_TYPES, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{m} (acc {per_method[m]['type_accuracy']:.3f})", fontsize=9)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.16, top=0.92, wspace=0.35)
    return save_plain(fig, path)


def save_plain(fig: Any, path: Path, dpi: int = 100) -> Path:
    """PNG without the tight bounding box pass (one render instead of two; the layout is set by hand)."""
    import io

    import matplotlib.pyplot as plt

    from vislab.io.files import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def mosaic(images: list[np.ndarray], path: Path, *, titles: list[str], ncols: int, cell: int = 128,
           title_colors: list[str] | None = None) -> Path:
    """Grayscale images (``[H, W]`` in [0, 1]) tiled into one picture, each fitted into a ``cell × cell``
    square (aspect kept, bilinear), with a title above each: one axes, so it renders in a fraction of the
    time of a grid of subplots."""
    import matplotlib.pyplot as plt
    from skimage.transform import resize

    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    gap, top = 10, 16  # pixels between cells, and above each cell for its title
    W = ncols * (cell + gap) + gap
    H = nrows * (cell + gap + top) + gap
    canvas = np.ones((H, W))
    for k, img in enumerate(images):
        img = np.asarray(img, dtype=np.float64)
        h, w = img.shape
        f = cell / max(h, w)
        small = resize(img, (max(1, round(h * f)), max(1, round(w * f))), order=1, anti_aliasing=f < 1)
        r, c = divmod(k, ncols)
        y0 = gap + r * (cell + gap + top) + top + (cell - small.shape[0]) // 2
        x0 = gap + c * (cell + gap) + (cell - small.shape[1]) // 2
        canvas[y0:y0 + small.shape[0], x0:x0 + small.shape[1]] = np.clip(small, 0, 1)
    dpi = 100
    fig = plt.figure(figsize=(W / dpi, H / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    for k, t in enumerate(titles):
        r, c = divmod(k, ncols)
        ax.text(gap + c * (cell + gap) + cell / 2, gap + r * (cell + gap + top) + top - 3, t, ha="center",
                va="bottom", fontsize=6.5, color=(title_colors[k] if title_colors else "black"), clip_on=True)
    return save_plain(fig, path, dpi=dpi)


def sources_figure(rep: Report, run: Any, thumbnails: dict[str, np.ndarray], sources: dict[str, list[str]]) -> None:
    """The source images of each split (``sources``: ``{split: [name]}``), titled and coloured by split."""
    names = [(split, n) for split in ("train", "val", "test") for n in sources[split]]
    colors = {"train": "black", "val": "tab:blue", "test": "tab:red"}
    rep.figure(mosaic([thumb(thumbnails[n]) for _, n in names], run.figure("dataset_sources.png"),
                      titles=[f"{split}: {n}" for split, n in names], ncols=8, cell=120,
                      title_colors=[colors[split] for split, _ in names]),
               "The source images and the split they belong to.")


def dataset_pairs_figure(rep: Report, run: Any, train: Any) -> None:
    """Training pairs, two of each change type, titled with the change that made img2."""
    p = train.pairs
    images, titles = [], []
    for k, name in enumerate(CHANGE_TYPES):
        idx = (p.type == k).nonzero().flatten()[:2].tolist()
        for i in idx:
            images += [p.images[i, 0].numpy(), p.images[i, 1].numpy()]
            titles += [f"{name}: img1 ({p.source_names[int(p.source[i])][:14]})",
                       f"img2: {change_text(float(p.dx[i]), float(p.dy[i]), float(p.log_s[i]))}"]
    rep.figure(mosaic(images, run.figure("dataset_pairs.png"), titles=titles, ncols=4, cell=150),
               "Training pairs, two of each change type, with the change that made img2 (after the "
               "photometric noise).")


def examples_figure(rep: Report, run: Any, test: Any, estimates: dict[str, dict[str, Any]], n_examples: int) -> None:
    """Test pairs (``both`` first): img1, img2 with the network's estimate, img2 mapped back with the hybrid's
    estimate, and the absolute differences before and after."""
    from vislab.ops.registration import Registration, warp_back

    p = test.pairs
    n_per = max(1, math.ceil(n_examples / len(CHANGE_TYPES)))
    chosen = []
    for k in (3, 2, 1, 0):
        chosen += (p.type == k).nonzero().flatten()[:n_per].tolist()
    chosen = chosen[:n_examples]
    images, titles = [], []
    for i in chosen:
        a, b = p.images[i, 0].numpy(), p.images[i, 1].numpy()
        h = estimates["hybrid"]
        reg = Registration(float(h["dx"][i]), float(h["dy"][i]), float(math.exp(h["log_s"][i])))
        back, valid = warp_back(b, reg)
        diff0 = np.abs(b - a)
        diff = np.where(valid, np.abs(back - a), 0.0)
        nt = estimates["net"]
        images += [a, b, np.where(valid, back, 0.0), diff0, diff]
        titles += [f"img1 · true {change_text(float(p.dx[i]), float(p.dy[i]), float(p.log_s[i]))}",
                   f"img2 · net {change_text(float(nt['dx'][i]), float(nt['dy'][i]), float(nt['log_s'][i]))}",
                   f"back · hybrid {change_text(reg.dx, reg.dy, math.log(reg.scale))}",
                   f"|img2 − img1|, mean {diff0.mean():.3f}",
                   f"|back − img1|, mean {diff[valid].mean() if valid.any() else 0:.3f}"]
    rep.figure(mosaic(images, run.figure("examples.png"), titles=titles, ncols=5, cell=200),
               "Test pairs: img1 (with the true change), img2 (with the network's estimate), img2 mapped back "
               "into img1's frame with the hybrid's estimate (\"back\"; black: outside img2), and the absolute "
               "differences before and after.")


def per_type_bullets(per_method: dict[str, dict[str, Any]]) -> list[str]:
    """Per change type, the lowest median translation and scale errors, through the shared tie-aware
    comparison (an exact tie, e.g. two methods at 0.00 % on unchanged pairs, is called a tie)."""
    out = []
    for name in CHANGE_TYPES:
        split = f"**{name}** pairs:"
        per_type = {m: per_method[m]["per_type"][name] for m in per_method}
        runs = {m: {split: {"median translation error in px": v["translation_error_median"],
                            "median scale error in %": v["scale_error_median"]}} for m, v in per_type.items()}
        out.append(" ".join(comparison_bullets(runs, {"median translation error in px": False,
                                                      "median scale error in %": False},
                                               split=split, digits=3)))
    return out


def target_bullets(per_method: dict[str, dict[str, Any]], true_type: Tensor) -> list[str]:
    """The issue's targets for the default run, checked on this run's numbers (whatever its settings). The
    network's error targets are checked on the pairs that carry that change (all pairs given beside them).
    ``per_method`` holds ``net``, ``phase``, ``fourier_mellin`` and ``hybrid``."""
    pt = {m: per_method[m]["per_type"] for m in per_method}
    net = per_method["net"]
    t_moved, s_moved = moved_medians(net, true_type)
    checks = [
        ("phase correlation, median translation error on pure shifts", pt["phase"]["shift"]["translation_error_median"],
         "≤ 0.5 px", pt["phase"]["shift"]["translation_error_median"] <= 0.5),
        ("Fourier–Mellin, median scale error on pure scalings", pt["fourier_mellin"]["scale"]["scale_error_median"],
         "≤ 5 %", pt["fourier_mellin"]["scale"]["scale_error_median"] <= 5),
        ("network, type accuracy", net["type_accuracy"], "≥ 0.95", net["type_accuracy"] >= 0.95),
        (f"network, median translation error on shifted pairs (all pairs: {net['translation_error_median']:.3f})",
         t_moved, "≤ 2 px", t_moved <= 2),
        (f"network, median scale error on scaled pairs (all pairs: {net['scale_error_median']:.3f})", s_moved,
         "≤ 3 %", s_moved <= 3),
    ]
    out = [f"Target — {label}: {value:.3f} (target {target}): **{'met' if ok else 'missed'}**."
           for label, value, target, ok in checks]
    both = {m: pt[m]["both"]["translation_error_median"] for m in per_method}
    for m in ("net", "hybrid"):
        ok = both[m] < both["phase"]
        out.append(f"Target — {m} beats phase correlation on translation error of shift+scale pairs: {both[m]:.3f} vs "
                   f"{both['phase']:.3f} px: **{'met' if ok else 'missed'}**.")
    worse = []
    for name in CHANGE_TYPES:
        for key in ("translation_error_median", "scale_error_median"):
            best_other = min(pt[m][name][key] for m in per_method if m != "hybrid")
            if pt["hybrid"][name][key] > best_other * 1.005 + 1e-3:
                worse.append(f"{name} {key.replace('_', ' ')} ({pt['hybrid'][name][key]:.3f} vs {best_other:.3f})")
    out.append("Target — the hybrid at least as good as the best other method on every change type (median "
               "translation and scale error): " + ("**met**." if not worse else "**missed** on " + "; ".join(worse)
                                                   + "."))
    return out
