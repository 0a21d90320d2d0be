"""Figures of the ``sam-finetune`` report: test prompts with their box, each row's mask side by side.

Images are ``uint8 Tensor[3, S, S]``, boxes continuous XYXY, masks bool ``[S, S]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from vislab.report import figures

__all__ = ["cache_table", "draw_box", "heat", "pick_prompts", "rows_compared_figure", "test_predictions_figure"]


def draw_box(image: Tensor, box: Tensor) -> np.ndarray:
    """``uint8[H, W, 3]`` of ``image`` with the box outlined in yellow."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(image.permute(1, 2, 0).numpy().copy())
    x0, y0, x1, y1 = (float(v) for v in box)
    ImageDraw.Draw(im).rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=(255, 230, 0),
                                 width=max(1, round(image.shape[-1] / 128)))
    return np.asarray(im)


def heat(prob: Tensor) -> np.ndarray:
    """``float[H, W, 3]``: a probability map in the magma colour map."""
    import matplotlib

    return matplotlib.colormaps["magma"](prob.numpy())[..., :3]


def pick_prompts(kinds: Sequence[str], n: int) -> list[int]:
    """Up to ``n`` prompt indices, round-robin over the shape labels ``kinds`` (the first prompts of each)."""
    by_kind: dict[str, list[int]] = {}
    for j, k in enumerate(kinds):
        by_kind.setdefault(k, []).append(j)
    picks: list[int] = []
    depth = 0
    while len(picks) < min(n, len(kinds)):
        for js in by_kind.values():
            if depth < len(js) and len(picks) < n:
                picks.append(js[depth])
        depth += 1
    return picks


def test_predictions_figure(images: Sequence[Tensor], boxes: Tensor, prob: Tensor, gts: Sequence[Tensor],
                            labels: Sequence[str], scores: Sequence[float], path: str | Path) -> Path:
    """One row per prompt: the input with its box, the predicted mask (probability > 0.5) with its IoU, the
    probability map (``prob`` ``Tensor[P, S, S]``) and the ground truth."""
    grid: list[Any] = []
    titles: list[str] = []
    for n, (img, gt) in enumerate(zip(images, gts)):
        grid += [draw_box(img, boxes[n]), (prob[n] > 0.5).numpy(), heat(prob[n]), gt.numpy()]
        titles += [f"{labels[n]}: input + box", f"predicted (IoU {scores[n]:.2f})", "probability", "ground truth"]
    return figures.image_grid(grid, path, titles=titles, ncols=4)


def rows_compared_figure(images: Sequence[Tensor], boxes: Tensor, masks: dict[str, Tensor],
                         scores: dict[str, Sequence[float]], gts: Sequence[Tensor], labels: Sequence[str],
                         path: str | Path) -> Path:
    """One row per prompt: the input with its box, each row's mask (``masks[row]`` bool ``Tensor[P, S, S]``)
    titled with its IoU, the ground truth."""
    grid: list[Any] = []
    titles: list[str] = []
    for n, (img, gt) in enumerate(zip(images, gts)):
        grid.append(draw_box(img, boxes[n]))
        titles.append(labels[n])
        for r, m in masks.items():
            grid.append(m[n].numpy())
            titles.append(f"{r} {scores[r][n]:.2f}")
        grid.append(gt.numpy())
        titles.append("ground truth")
    return figures.image_grid(grid, path, titles=titles, ncols=len(masks) + 2)


def cache_table(rep: Any, c: dict[str, Any]) -> None:
    """The report's "Embedding cache" section from :func:`vislab.engine.tasks.sam_decoder.cache_summary`."""
    from vislab.protocol.report import sig

    rep.heading("Embedding cache")
    rows = [["cache build (augment + encode all views once)", sig(c["cache_build_s"])],
            ["first training epoch incl. the cache build (Lightning)", sig(c["first_epoch_s"])],
            ["later training epochs, cached (Lightning, mean; incl. checkpointing)", sig(c["lightning_epoch_s"])]]
    if "uncached_epoch_s" in c:
        rows += [["one epoch on cached features (bare loop)", sig(c["cached_epoch_s"])],
                 ["one epoch re-augmenting and re-encoding every image (bare loop, no cache)",
                  sig(c["uncached_epoch_s"])],
                 ["… of which encoding", sig(c["uncached_encode_s"])],
                 ["… of which decoding, loss and update", sig(c["uncached_decode_s"])]]
    rep.table(["epoch", "seconds"], rows,
              caption=f"{c['train_views']} training views ({c['views_per_train_image']} per image), features "
              f"{'×'.join(map(str, c['feature_shape']))} stored as float16; first seed, this process (a resumed "
              "stage has no epoch times). An epoch = a training pass over every prompt + a validation pass. The two "
              "bare-loop epochs run the same steps on a copy of the decoder, one on cached features, one encoding "
              "every image again (its prompts decoded together, the cheapest way without a cache)"
              + (f"; timed on {c['timed_fraction']:.0%} of the training images and scaled to a full epoch"
                 if c.get("timed_fraction", 1) < 1 else "") + ".")
    if "speedup" in c:
        why = "" if c["target_10x_met"] else (
            " The decoder's own cost bounds the gain: with a light encoder, re-encoding is a small part of an epoch; "
            "the gain grows with the encoder's cost (SAM's ViT at 1024 px costs far more per image than the decoder).")
        rep.text(f"Cached epochs are **{c['speedup']:.1f}×** faster than re-encoding; this "
                 f"{'meets' if c['target_10x_met'] else '**misses**'} the 10× target.{why}")
