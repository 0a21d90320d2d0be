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

__all__ = ["cache_table", "draw_box", "heat", "pick_prompts", "prediction_figures", "prompt_section",
           "rows_compared_figure", "test_predictions_figure"]


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


def prompt_section(rep: Any, ev: dict[str, Any], *, figure: Any, sequences: tuple[list, list, list, list] | None,
                   curves: dict[str, Any] | None) -> None:
    """The report's section on prompts (issue 24): the table rows × prompt kinds (IoU, Dice, NSD, boundary IoU),
    NoC@85/90 for clicks alone and box + clicks, the IoU-vs-clicks figure (``curves``: ``{row: (clicks,
    box_clicks)}`` ClickEvaluations) and test objects with their click sequences (``sequences``: images, runs,
    masks, titles). ``ev``: the ``"prompts"`` entry of the summary; ``figure(name)`` gives a figure's path."""
    from vislab.models.sam_clicks import plot_click_sequences, plot_iou_vs_clicks

    rows = ev["rows"]
    rep.heading("Prompts: points, clicks and boundaries")
    n = ev["max_clicks"]
    rep.text(f"{ev['objects']} objects of the first {ev['images']} test images, prompted the ways SAM is used "
             "(`vislab.models.sam_clicks`): the test box; 1 or 3 positive points placed at once (the deepest pixel, "
             "then farthest-point sampling of the object's core); 5 simulated clicks (RITM's protocol: each click at "
             "the centre of the largest error, positive in a miss, negative in a false alarm, the previous "
             "low-resolution logits passed as the mask prompt). The classical row answers points and clicks with "
             "scikit-image's random walker seeded by the same clicks, a lone box with GrabCut, and a box with "
             "only negative clicks with GrabCut started from the box and the clicks; it has no mask "
             f"prompt. Evaluating all rows took {sum(r['seconds'] for r in rows.values()):.1f} s.")
    table = [[row, kind, *(f"{m[k]:.3f}" for k in ("iou", "dice", "nsd", "boundary_iou"))]
             for row, d in rows.items() for kind, m in d["table"].items()]
    rep.table(["row", "prompt", "mIoU", "Dice", f"NSD (τ = {ev['tau']:g} px)", "boundary IoU"], table,
              caption="Means over the objects. NSD: the share of both surfaces within τ px of the other (MedSAM); "
              f"boundary IoU: IoU of the bands within {ev['dilation_ratio']:.0%} of the diagonal of the contours "
              "(Cheng et al. 2021).")
    noc = []
    for row, d in rows.items():
        for what, c in (("clicks", d["clicks"]), ("box + clicks", d["box_clicks"])):
            if c is None:
                continue
            noc.append([row, what, f"{c['noc@85']:.2f}", c["nof@85"], f"{c['noc@90']:.2f}", c["nof@90"],
                        f"{c['miou'][0]:.3f}", f"{c['miou'][-1]:.3f}"])
    rep.table(["row", "prompts", "NoC@85", "NoF@85", "NoC@90", "NoF@90", "first mIoU", f"mIoU after {n} clicks"],
              noc, caption=f"NoC@τ: mean number of clicks to reach IoU τ, an object never reaching it within {n} "
              "clicks counted as "
              f"{n} (RITM's cap); NoF: how many never reached it. With a box, the box alone counts 0 clicks and the "
              "first mIoU is the box's.")
    if curves:
        lines = {}
        for row, (alone, boxed) in curves.items():
            lines[row] = alone
            if boxed is not None:
                lines[f"{row}, box + clicks"] = boxed
        rep.figure(plot_iou_vs_clicks(lines, figure("iou_vs_clicks.png")),
                   "Mean IoU against the number of clicks (0 = the box alone), NoC in the legend.")
    if sequences and sequences[1]:
        rep.figure(plot_click_sequences(*sequences[:3], figure("click_sequences.png"), titles=sequences[3]),
                   f"The fine-tuned model's {n} simulated clicks on test objects: green positive, red negative "
                   "(numbered), ground truth outlined in white, the final mask in blue.")


def prediction_figures(rep: Any, figure: Any, ts: Any, model: Any, init_decoder: Any, baseline_masks: dict[str, Tensor],
                       per_prompt: dict[str, Tensor], n: int) -> None:
    """The "Test prompts" section: ``n`` test prompts of ``ts`` (``vislab.data.sam_prompts.FixedPrompts``), the
    fine-tuned ``model``'s masks and probabilities, then every row side by side (the baselines' masks
    ``Tensor[N, S, S]`` for all prompts; ``init_decoder``: the zero_shot row's decoder, or ``None``), titled with
    their IoU (``per_prompt[row]`` ``Tensor[N, 2]``). ``figure(name)`` gives a figure's path."""
    import torch

    picks = pick_prompts(ts.pv.kinds, n)
    if not picks:
        return
    rep.heading("Test prompts")
    feats = torch.stack([ts[j][0] for j in picks])
    boxes = ts.boxes[picks]
    with torch.no_grad():
        prob = torch.sigmoid(model.decoder.cpu().eval()(feats, boxes))[:, 0]  # (P, S, S)
        zero = {"zero_shot": init_decoder.cpu().eval()(feats, boxes)[:, 0] > 0} if init_decoder is not None else {}
    images, gts, kinds = [ts.image(j) for j in picks], [ts.mask(j) for j in picks], [ts.pv.kinds[j] for j in picks]
    rep.figure(test_predictions_figure(images, boxes, prob, gts, kinds, [float(per_prompt["finetuned"][j, 0])
                                                                          for j in picks],
                                       figure("test_predictions.png")),
               "Test prompts: the input with its box prompt, the fine-tuned model's mask (probability > 0.5), its "
               "probability map and the ground truth.")
    masks = {**{k: m[picks] for k, m in baseline_masks.items()}, **zero, "finetuned": prob > 0.5}
    scores = {r: [float(per_prompt[r][j, 0]) for j in picks] for r in masks}
    rep.figure(rows_compared_figure(images, boxes, masks, scores, gts, kinds, figure("rows_compared.png")),
               "The same prompts for every row, with each row's IoU.")
