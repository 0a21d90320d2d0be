"""Figures and sections of the ``vit`` experiment's report: shuffled test images, the attention / Grad-CAM grid,
the positional-embedding similarity summary, the cost of global vs window attention against the token count, and
the explanation method × measure table with the same images under every method.

The figure functions take plain tensors or rows and a path, draw with matplotlib's Agg backend and return the
path; the ``*_section`` functions add a heading, text, tables and figures to a report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from vislab.report import figures

__all__ = ["attention_grid", "attention_section", "cost_section", "explanation_summary", "explanations_section",
           "plot_attention_cost", "position_similarity_stats", "positions_section", "shuffle_section",
           "shuffled_examples"]


def _rgb(x: Tensor) -> np.ndarray:
    from vislab.data.transforms import denormalize

    return denormalize(x).permute(1, 2, 0).numpy()  # (H, W, 3) in [0, 1]


def shuffled_examples(intact: Tensor, shuffled: Mapping[int, Tensor], path: str | Path, *, n: int = 4) -> Path:
    """Up to ``n`` normalised test images (``Tensor[N, 3, H, W]``), each beside its ``g×g``-shuffled versions
    (``{g: Tensor[N, 3, H, W]}``), one row per image."""
    imgs, titles = [], []
    for i in range(min(n, len(intact))):
        imgs.append(_rgb(intact[i]))
        titles.append("intact")
        for g, xs in shuffled.items():
            imgs.append(_rgb(xs[i]))
            titles.append(f"{g}×{g} shuffled")
    return figures.image_grid(imgs, path, titles=titles, ncols=1 + len(shuffled))


def attention_grid(images: Tensor, true: Sequence[int], pred: Sequence[int], classes: Sequence[str],
                   per_head: Tensor, mean: Tensor, rollout: Tensor, path: str | Path, *,
                   cams: Tensor | None = None, cnn_pred: Sequence[int] | None = None) -> Path:
    """One row per image: the input (title ``true → predicted``, red when wrong), the last block's class-token
    attention of each head (``per_head`` ``Tensor[N, heads, gh, gw]``) and their mean (``Tensor[N, gh, gw]``),
    the rollout (``Tensor[N, gh, gw]``) and, with ``cams`` (``Tensor[N, H, W]``), the CNN's Grad-CAM."""
    from vislab.explain.attention import attention_overlay
    from vislab.explain.gradcam import overlay

    imgs, titles, colors = [], [], []
    heads = per_head.shape[1]
    for k in range(len(images)):
        img = _rgb(images[k])
        t, p = int(true[k]), int(pred[k])
        maps = [*(per_head[k, h] for h in range(heads)), mean[k], rollout[k]]
        names = [*(f"head {h + 1}" for h in range(heads)), "head mean", "rollout"]
        imgs += [img, *(attention_overlay(img, m, mode="nearest") for m in maps)]
        titles += [f"{classes[t]} → {classes[p]}", *names]
        colors += ["black" if t == p else "red", *["black"] * len(maps)]
        if cams is not None and cnn_pred is not None:
            cp = int(cnn_pred[k])
            imgs.append(overlay(img, cams[k]))
            titles.append(f"CNN Grad-CAM → {classes[cp]}")
            colors.append("black" if cp == t else "red")
    ncols = 3 + heads + (1 if cams is not None else 0)
    return figures.image_grid(imgs, path, titles=titles, title_colors=colors, ncols=ncols, cell=1.5)


def position_similarity_stats(sim: Tensor) -> tuple[float, float]:
    """``(near, far)`` from a position-embedding similarity ``Tensor[gh, gw, gh, gw]``: the mean cosine similarity
    of grid neighbours (distance 1) and of positions at least half the grid apart (NaN when none are)."""
    gh, gw = sim.shape[:2]
    off = sim.reshape(gh * gw, gh * gw).numpy()
    ys, xs = np.divmod(np.arange(gh * gw), gw)
    dist = np.hypot(ys[:, None] - ys[None], xs[:, None] - xs[None])
    near = float(off[(dist > 0) & (dist <= 1.01)].mean())
    far_mask = dist >= max(gh, gw) / 2
    return near, float(off[far_mask].mean()) if far_mask.any() else float("nan")


def plot_attention_cost(rows: Sequence[Mapping[str, Any]], path: str | Path, *, dim: int, heads: int,
                        window: int) -> Path:
    """Left: FLOPs per forward of MSA, W-MSA and SW-MSA against the token count, formulas (lines, 2 × MACs) and
    counted (markers); right: measured CPU milliseconds when the rows carry them."""
    import matplotlib.pyplot as plt

    tokens = [r["tokens"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ax = axes[0]
    ax.plot(tokens, [2 * r["msa_macs"] for r in rows], "-", color="C0", label="2·Ω(MSA)")
    ax.plot(tokens, [2 * r["wmsa_macs"] for r in rows], "-", color="C1", label="2·Ω(W-MSA)")
    ax.plot(tokens, [r["msa_flops"] for r in rows], "o", color="C0", label="MSA measured")
    ax.plot(tokens, [r["wmsa_flops"] for r in rows], "s", color="C1", mfc="none", label="W-MSA measured")
    ax.plot(tokens, [r["swmsa_flops"] for r in rows], "x", color="C2", label="SW-MSA measured")
    ax.set_ylabel("FLOPs per forward")
    ax.legend(fontsize=8)
    ax = axes[1]
    if rows and "msa_ms" in rows[0]:
        for key, style, color, label in (("msa_ms", "o-", "C0", "MSA"), ("wmsa_ms", "s-", "C1", "W-MSA"),
                                         ("swmsa_ms", "x-", "C2", "SW-MSA")):
            ax.plot(tokens, [r[key] for r in rows], style, color=color, label=label)
        ax.legend(fontsize=8)
    ax.set_ylabel("CPU ms per forward (batch 1)")
    for ax in axes:
        if ax.lines:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel("tokens hw")
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"C = {dim}, {heads} heads, window M = {window}", fontsize=10)
    fig.tight_layout()
    return figures.save_figure(fig, path)


# -- the report's sections ---------------------------------------------------------------------------------


def _cell(run: Mapping[str, Any], key: str) -> str:
    from vislab.protocol.results import format_interval

    m = run.get("test", {}).get(key)
    return format_interval(m) if isinstance(m, Mapping) else "—"


def shuffle_section(rep: Any, runs: Mapping[str, Any], grids: Sequence[int], n_classes: int) -> None:
    """"Displaced parts": test accuracy intact and under each ``g×g`` shuffle, the drop, and what it means."""
    from vislab.report.blocks import metric_value

    rep.heading("Displaced parts: patch shuffling")
    header = ["variant", "intact"] + [h for g in grids for h in (f"{g}×{g} shuffled", f"drop {g}×{g}")]
    rows = [[v, _cell(r, "accuracy"), *[c for g in grids for c in (_cell(r, f"shuffle_{g}x{g}_accuracy"),
                                                                     _cell(r, f"shuffle_{g}x{g}_drop"))]]
            for v, r in runs.items()]
    rep.table(header, rows, caption=f"Test accuracy (mean ± 95 % interval over seeds when there are several); drop = "
              f"intact − shuffled accuracy. Chance is {1 / n_classes:.1%}. Each image gets one random permutation of "
              "its cells per seed, the same for every model.")
    g = grids[-1]
    drops = {v: metric_value(r, "test", f"shuffle_{g}x{g}_drop") for v, r in runs.items()}
    rep.text(f"The seed asks what happens to a face whose parts are displaced. A CNN's convolutions are local and "
             "translation-equivariant, and its pooled features keep little of *where* a part was; a ViT mixes all "
             "patches from the first block and learns where each patch is only through its positional embedding. "
             f"Measured here, shuffling a {g}×{g} grid changes test accuracy by "
             + ", ".join(f"{0.0 - d:+.1%} for `{v}`" for v, d in drops.items() if d is not None)
             + " (percentage points); whether the ViT keeps more is the claims table's verdict.")


def attention_section(rep: Any, runs: Mapping[str, Any], states: Mapping[str, Any], classes: Sequence[str],
                      labels: Tensor, *, chance: float | None, fusion: str, discard: float,
                      path: Any) -> None:
    """"Where the models look": pointing games of attention, rollout and Grad-CAM, per-head pointing games and
    the attention grid of each ViT variant (``path(name)`` gives a figure's path)."""
    rep.heading("Where the models look")
    rep.text("ViT: the class token's attention to each patch in the last block, per head and averaged over the "
             f"heads, and the attention rollout ({fusion} fusion" + (f", {discard:g} discarded" if discard else "")
             + ") through all blocks (Abnar & Zuidema 2020). CNN: Grad-CAM of the predicted class. The pointing game "
             "counts a hit when a map's peak lies inside the object's box (correct predictions only)"
             + (f"; a peak at a random place would hit in {chance:.1%} of the images (the mean box area)."
                if chance is not None else "; this data set has no object boxes, so it is not measured."))
    rep.table(["variant", "last-layer attention (head mean)", "rollout", "Grad-CAM", "n"],
              [[v, *(_cell(r, k) for k in ("attention_pointing_game", "rollout_pointing_game",
                                            "gradcam_pointing_game", "pointing_game_n"))] for v, r in runs.items()])
    cnn = states.get("small_cnn")
    for v, st in states.items():
        if "per_head" not in st["explain"]:
            continue
        ex = st["explain"]
        heads_pg = runs[v]["test"].get("attention_pointing_game_per_head")
        if heads_pg:
            rep.text(f"`{v}` pointing game per head (last block, first seed): "
                     + ", ".join(f"head {k + 1} {p:.1%}" for k, p in enumerate(heads_pg)) + ".")
        show = ex["show"]
        fig = attention_grid(st["test_images"][show], labels[show].tolist(), st["pred"][show].tolist(), classes,
                             ex["per_head"], ex["mean"], ex["rollout"], path(f"attention_{v}.png"),
                             cams=cnn["explain"]["cams"] if cnn else None,
                             cnn_pred=cnn["pred"][show].tolist() if cnn else None)
        rep.figure(fig, f"`{v}` on test images: input (true → predicted, red when wrong), last-block attention of "
                   "each head and their mean, rollout"
                   + (f", and the CNN's Grad-CAM at `{cnn['explain']['cam_layer']}`" if cnn else "")
                   + ". Maps are min-max scaled per image; ViT maps are shown per patch.")


def positions_section(rep: Any, sims: Mapping[str, Tensor], path: Any) -> None:
    """"Learned positional embeddings": the similarity figure of each ViT variant with its near/far summary."""
    from vislab.explain.attention import plot_position_similarity

    if not sims:
        return
    rep.heading("Learned positional embeddings")
    rep.text("Cosine similarity between the positional embedding of each patch position (tile at row i, column j) "
             "and those of all positions (inside the tile), as in Fig. 7 of the ViT paper. Nearby positions having "
             "similar embeddings (and rows/columns sharing structure) is what the model learned of 2-D layout; "
             "nothing in the architecture imposes it.")
    for v, sim in sims.items():
        near, far = position_similarity_stats(sim)
        fig = plot_position_similarity(sim, path(f"pos_similarity_{v}.png"),
                                       title=f"{v}: position embedding similarity")
        rep.figure(fig, f"`{v}`: mean similarity of neighbouring positions {near:.2f}, of positions at least half the "
                   f"grid apart {far:.2f}.")


def cost_section(rep: Any, cost: Mapping[str, Any], path: str | Path) -> None:
    """"Cost: global MSA vs window attention": the formulas, the counted FLOPs and measured times."""
    from vislab.protocol.report import sig

    rows = cost["rows"]
    c, heads, m = cost["dim"], cost["heads"], cost["window"]
    rep.heading("Cost: global MSA vs window attention (Swin)")
    rep.text(f"Self-attention on an h×w map of C = {c} channels ({heads} heads), in multiply-accumulates: "
             f"Ω(MSA) = 4hwC² + 2(hw)²C, Ω(W-MSA) = 4hwC² + 2M²hwC with M = {m}. Measured: FLOPs that "
             "`torch.utils.flop_counter.FlopCounterMode` counts in one forward of our modules "
             "(`vislab.models.vit.MultiHeadSelfAttention` on all tokens; `vislab.layers.swin.WindowAttention` on the "
             "windows, also shifted with the SW-MSA mask), and CPU milliseconds (batch 1, median). FLOPs = 2 × MACs; "
             + ("every measured count equals twice the formula." if cost["measured_equals_formula"]
                else "**some measured counts differ from the formulas** (see the table)."))
    rep.table(["map", "tokens", "Ω(MSA) MACs", "MSA FLOPs measured", "Ω(W-MSA) MACs", "W-MSA FLOPs measured",
               "SW-MSA FLOPs measured", "MSA / W-MSA", "MSA ms", "W-MSA ms", "SW-MSA ms"],
              [[f"{r['h']}×{r['w']}", r["tokens"], r["msa_macs"], r["msa_flops"], r["wmsa_macs"], r["wmsa_flops"],
                r["swmsa_flops"], sig(r["msa_flops"] / r["wmsa_flops"]), sig(r.get("msa_ms")), sig(r.get("wmsa_ms")),
                sig(r.get("swmsa_ms"))] for r in rows])
    rep.figure(plot_attention_cost(rows, path, dim=c, heads=heads, window=m),
               "Lines: the formulas (×2 for FLOPs); markers: counted on our modules. Right: measured time.")


def explanation_summary(tables: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The summary's ``explanations`` block from ``{model: explanation_table(...)}``: per model and method, each
    measure's mean, 95 % Student-t interval and per-image values
    (:func:`~vislab.explain.evaluate.summarise_intervals`; ``ms_per_image``: one number)."""
    from vislab.explain.evaluate import summarise_intervals

    rows = {v: summarise_intervals(table) for v, table in tables.items()}
    first = next(iter(tables.values()), {})
    return {"n_images": first.get("n_images"), "layers": {v: t["layer"] for v, t in tables.items()}, "rows": rows}


def explanations_section(rep: Any, expl: Mapping[str, Any], tables: Mapping[str, Any], images: Tensor,
                         labels: Tensor, classes: Sequence[str], path: Any, *, figure_images: int = 4) -> None:
    """"Explanations": one method × measure table for every model (the ViT's attributions and the CNN's CAMs in
    the same units) and, per model, the same test images under every method. ``images``/``labels``: the whole
    test split (normalised); ``expl["images"]`` the indices the table used."""
    from vislab.data.transforms import denormalize
    from vislab.explain.evaluate import methods_figure
    from vislab.protocol.report import sig
    from vislab.protocol.results import format_interval

    rep.heading("Explanations: localisation and faithfulness")
    rep.text(f"Every CAM method (and, for a ViT, attention rollout and gradient-weighted attention) on the same "
             f"{expl['n_images']} test images, explaining each model's predicted class, from `vislab.explain.evaluate`"
             ". Pointing game: the map's peak in the object's box (every image, right or wrong). Deletion / insertion "
             "AUC: the class probability as the most relevant pixels are blurred away / blurred ones restored. ROAD: "
             "(LeRF − MoRF)/2 in logits under noisy linear imputation. Sanity ρ: Spearman correlation with the map of "
             "the model re-initialised from the head down to the explained layer (rollout and gradient-weighted "
             "attention, which read every block: down to the input; lower: the map depends on the "
             f"weights); passed: ρ < 0.5. Mean ± 95 % interval over the images. Added time: {expl['seconds']:.3g} s.")
    cols = ("pointing_game", "deletion_auc", "insertion_auc", "road", "sanity_correlation", "sanity_passed")
    rows = [[v, f"{name} ({expl['layers'][v]})" if name not in ("rollout", "gradattention") else name,
             *(format_interval(m[k]) if k in m else "—" for k in cols), sig(m["ms_per_image"])]
            for v, methods in expl["rows"].items() for name, m in methods.items()]
    rep.table(["model", "method (layer)", "pointing game ↑", "deletion AUC ↓", "insertion AUC ↑", "ROAD ↑",
               "sanity ρ ↓", "sanity passed ↑", "ms/image ↓"], rows,
              caption="ms/image: the method's own call on this run's machine (not the measures).")
    idx = list(expl["images"])[:figure_images]
    k = len(idx)
    for v, table in tables.items():
        cams = {name: c[:k] for name, c in table["cams"].items()}
        fig = methods_figure(denormalize(images[idx]), cams, path(f"methods_{v}.jpg"),
                             row_titles=[classes[int(labels[i])] for i in idx])
        rep.figure(fig, f"`{v}`: the first {k} of these test images under every method (true class over the image).")
