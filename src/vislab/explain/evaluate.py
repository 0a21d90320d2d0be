"""One table, method × measure, for the explanations of one model: localisation and faithfulness side by side.

:func:`explanation_table` runs every method on the same images and targets and measures, per image:

=====================  =========  ==================================================================
measure                better     what
=====================  =========  ==================================================================
``pointing_game``      higher     the map's peak lies in the object's box or mask (only with boxes/masks)
``deletion_auc``       lower      :func:`~vislab.explain.faithfulness.deletion_curve`'s AUC (probability)
``insertion_auc``      higher     :func:`~vislab.explain.faithfulness.insertion_curve`'s AUC (probability)
``road``               higher     :func:`~vislab.explain.faithfulness.road` combined, (LeRF - MoRF) / 2 logits
``sanity_correlation`` lower      Spearman correlation with the map after cascading randomisation
``ms_per_image``       lower      wall time of the method's call (one number per method, not per image)
=====================  =========  ==================================================================

:func:`methods_figure` draws the same images under every method.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vislab.explain._cam_base import ReshapeTransform, resolve_layer
from vislab.explain.cams import CAM_METHODS, default_cam_layer, get_method
from vislab.explain.faithfulness import (
    ROAD_PERCENTILES,
    cascade_stages,
    deletion_curve,
    insertion_curve,
    model_randomisation,
    road,
)
from vislab.explain.gradcam import cam_peak, pointing_game

__all__ = ["BETTER", "DEFAULT_CNN_METHODS", "DEFAULT_VIT_METHODS", "MEASURES", "explanation_table", "methods_figure",
           "summarise", "summarise_intervals"]

MEASURES = ("pointing_game", "deletion_auc", "insertion_auc", "road", "sanity_correlation", "ms_per_image")
BETTER = {"pointing_game": "higher", "deletion_auc": "lower", "insertion_auc": "higher", "road": "higher",
          "sanity_correlation": "lower", "ms_per_image": "lower"}
DEFAULT_CNN_METHODS = tuple(CAM_METHODS)
DEFAULT_VIT_METHODS = (*CAM_METHODS, "rollout", "gradattention")


def _pointing(cams: Tensor, boxes_or_masks: Any) -> list[bool]:
    if isinstance(boxes_or_masks, (Tensor, np.ndarray)) and np.ndim(boxes_or_masks) == 3:
        masks = torch.as_tensor(np.asarray(boxes_or_masks) if isinstance(boxes_or_masks, np.ndarray)
                                else boxes_or_masks.cpu()).bool()
        if masks.shape != cams.shape:
            raise ValueError(f"masks must be Tensor[B, H, W] = {list(cams.shape)}, got {list(masks.shape)}")
        hits = []
        for cam, mask in zip(cams, masks):
            x, y = cam_peak(cam)
            hits.append(bool(mask[y, x]))
        return hits
    boxes = [list(map(float, b)) for b in boxes_or_masks]
    if len(boxes) != len(cams) or any(len(b) != 4 for b in boxes):
        raise ValueError(f"boxes must be one [x0, y0, x1, y1] per image ({len(cams)}), got {boxes_or_masks!r}")
    return pointing_game(cams, boxes)


def explanation_table(model: nn.Module, layer: str | nn.Module | None, images: Tensor,
                      targets: Tensor | Sequence[int] | None = None, boxes_or_masks: Any = None, *,
                      methods: Sequence[str] | None = None, reshape_transform: ReshapeTransform | None = None,
                      method_kwargs: dict[str, dict[str, Any]] | None = None, perturbation: str = "blur",
                      step: int | None = None, road_percentiles: Sequence[float] = ROAD_PERCENTILES,
                      sanity: bool = True, sanity_groups: int = 3, batch_size: int = 64,
                      seed: int = 0) -> dict[str, Any]:
    """Every explanation method on the same images, with localisation and faithfulness measured per image.

    Args:
        model: a classifier ``Tensor[B, 3, H, W] → Tensor[B, classes]`` (the trained model; it is not
            changed: the sanity check randomises a copy).
        layer: the layer the CAM methods explain (name or module); None: :func:`default_cam_layer` (the last
            conv, or the last block's first LayerNorm of a vislab ViT with its token reshape).
        images: ``Tensor[B, 3, H, W]``, normalised as the model takes them (e.g. the test images).
        targets: the class explained per image; default the model's prediction (the same for every method).
        boxes_or_masks: for the pointing game, one ``[x0, y0, x1, y1]`` box per image in pixels of
            ``images``, or object masks ``Tensor[B, H, W]`` (bool); None leaves ``pointing_game`` out.
        methods: names from :func:`vislab.explain.cams.get_method` (default all CAM methods, plus
            ``rollout`` and ``gradattention`` when the model is a ViT returning its attentions).
        reshape_transform: for a token ``layer`` (with ``layer=None`` a ViT's is chosen for you).
        method_kwargs: extra constructor arguments per method, e.g. ``{"scorecam": {"batch_size": 128},
            "rollout": {"head_fusion": "max", "discard_ratio": 0.9}}``.
        perturbation, step: of the deletion and insertion curves (blur or mean; pixels per step).
        road_percentiles: ROAD's thresholds (combined LeRF/MoRF).
        sanity: run the cascading randomisation check (its cost is ``sanity_groups`` more calls per method);
            for the CAM methods the stages run from the head down to ``layer`` in ``sanity_groups`` groups,
            for the attention methods (which read every block) down to the input: a rollout that survives
            only the last block's randomisation would otherwise pass as "independent of the weights".
        batch_size: forward passes per batch in the faithfulness measures.
        seed: seeds ROAD's imputation noise and the randomised weights.

    Returns:
        ``{"layer": str, "targets": [int], "n_images": int, "measures": MEASURES, "better": BETTER,
        "methods": {name: {"pointing_game": [bool] | None, "deletion_auc": [float], "insertion_auc":
        [float], "road": [float], "sanity_correlation": [float] | None, "sanity_passed": [bool] | None,
        "ms_per_image": float}}, "cams": {name: Tensor[B, H, W]}}``: per-image values (lists of length B,
        in the order of ``images``) for intervals over images, and the maps for :func:`methods_figure`.
        ``sanity_passed`` is the correlation after the last stage below 0.5.
    """
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise ValueError(f"images must be Tensor[B, 3, H, W], got {getattr(images, 'shape', type(images).__name__)}")
    if images.shape[0] == 0:
        raise ValueError("images is empty")
    is_vit = _returns_attention(model)
    methods = list(methods if methods is not None else (DEFAULT_VIT_METHODS if is_vit else DEFAULT_CNN_METHODS))
    if not methods:
        raise ValueError("methods is empty")
    classes = {m: get_method(m) for m in methods}  # unknown names fail before any work
    for m, cls in classes.items():
        if cls not in CAM_METHODS.values() and not is_vit:
            raise ValueError(f"method {m!r} explains a ViT's attention; {type(model).__name__} is not a vislab "
                             "VisionTransformer")
    method_kwargs = dict(method_kwargs or {})
    if layer is None:
        layer, default_rt = default_cam_layer(model)
        reshape_transform = reshape_transform or default_rt
    layer_name = resolve_layer(model, layer)[0]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    t = (logits.argmax(1) if targets is None else torch.as_tensor(targets, device=logits.device).long().view(-1))
    if t.numel() != len(images):
        raise ValueError(f"targets must have one class per image ({len(images)}), got {t.numel()}")
    stages = cascade_stages(model, layer_name, groups=sanity_groups) if sanity else None
    whole = cascade_stages(model, None, groups=sanity_groups) if sanity else None  # attention methods

    def build(name: str, m: nn.Module) -> Any:
        return classes[name](m, layer, reshape_transform=reshape_transform, **method_kwargs.get(name, {}))

    rows: dict[str, dict[str, Any]] = {}
    cams_by_method: dict[str, Tensor] = {}
    try:
        for name in methods:
            explainer = build(name, model)
            start = time.perf_counter()
            cams, _ = explainer(images, t)
            ms = (time.perf_counter() - start) * 1000 / len(images)
            cams = cams.detach()
            cams_by_method[name] = cams.cpu()
            gen = torch.Generator().manual_seed(seed)
            row: dict[str, Any] = {
                "pointing_game": None if boxes_or_masks is None else _pointing(cams.cpu(), boxes_or_masks),
                "deletion_auc": deletion_curve(model, images, cams, t, perturbation=perturbation, step=step,
                                               batch_size=batch_size).auc.tolist(),
                "insertion_auc": insertion_curve(model, images, cams, t, perturbation=perturbation, step=step,
                                                 batch_size=batch_size).auc.tolist(),
                "road": road(model, images, cams, t, percentiles=road_percentiles, generator=gen,
                             batch_size=batch_size).tolist(),
                "sanity_correlation": None, "sanity_passed": None, "ms_per_image": ms,
            }
            if stages is not None:
                check = model_randomisation(lambda m, n=name: build(n, m), model, images, t, seed=seed,
                                            stages=stages if classes[name] in CAM_METHODS.values() else whole)
                row["sanity_correlation"] = check.correlation[-1].tolist()
                row["sanity_passed"] = check.passed.tolist()
            rows[name] = row
    finally:
        model.train(was_training)
    return {"layer": layer_name, "targets": t.tolist(), "n_images": len(images), "measures": MEASURES,
            "better": BETTER, "methods": rows, "cams": cams_by_method}


def _returns_attention(model: nn.Module) -> bool:
    from vislab.models.vit import VisionTransformer

    return any(isinstance(m, VisionTransformer) for m in model.modules())


def summarise(table: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """The mean of each measure per method (``pointing_game`` and ``sanity_passed`` as fractions), for a
    quick look; intervals over the images come from the per-image lists."""
    out = {}
    for name, row in table["methods"].items():
        out[name] = {}
        for k in (*MEASURES, "sanity_passed"):
            v = row[k]
            out[name][k] = None if v is None else (float(v) if np.isscalar(v) else float(np.mean(v)))
    return out


def summarise_intervals(table: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each method's row of :func:`explanation_table` as the run summaries keep it: per measure (and
    ``sanity_passed`` as a 0/1 rate) the mean, the 95 % Student-t interval over the images and the per-image
    values (``{"mean", "ci95", "per_image"}``; a measure the table could not compute is left out), and
    ``ms_per_image`` as one number. The per-image values let two methods be compared pairwise over the same
    images (:func:`vislab.protocol.stats.paired`)."""
    from vislab.protocol import stats

    out: dict[str, dict[str, Any]] = {}
    for name, row in table["methods"].items():
        entry: dict[str, Any] = {"ms_per_image": float(row["ms_per_image"])}
        for k in (*MEASURES, "sanity_passed"):
            if k != "ms_per_image" and row.get(k) is not None:
                s = stats.summarize([float(x) for x in row[k]])
                entry[k] = {"mean": s["mean"], "ci95": s["ci95"], "per_image": s["per_seed"]}
        out[name] = entry
    return out


def methods_figure(images: Tensor | Sequence[np.ndarray], cams_by_method: dict[str, Tensor], path: str | Path, *,
                   row_titles: Sequence[str] | None = None, alpha: float = 0.45, cell: float = 1.6) -> Path:
    """The same images under every method: one row per image, the image then one overlay per method.

    Args:
        images: the images to draw, ``Tensor[B, 3, H, W]`` or ``H×W×3`` arrays, in [0, 1] (denormalised).
        cams_by_method: ``{method name: Tensor[B, H, W]}`` in [0, 1] (``explanation_table(...)["cams"]``).
        path: the PNG to write (written whole, atomically).
        row_titles: a caption per image (e.g. its class), shown over the image column.
    """
    from vislab.explain.gradcam import overlay
    from vislab.report.figures import image_grid

    if not cams_by_method:
        raise ValueError("cams_by_method is empty")
    imgs = [img.detach().cpu().permute(1, 2, 0).numpy() if isinstance(img, Tensor) else np.asarray(img)
            for img in images]
    for name, cams in cams_by_method.items():
        if len(cams) != len(imgs):
            raise ValueError(f"{name}: {len(cams)} maps for {len(imgs)} images")
    if row_titles is not None and len(row_titles) != len(imgs):
        raise ValueError(f"row_titles: {len(row_titles)} for {len(imgs)} images")
    tiles, titles = [], []
    for i, img in enumerate(imgs):
        tiles.append(np.clip(img, 0, 1))
        titles.append(row_titles[i] if row_titles is not None else "image")
        for name, cams in cams_by_method.items():
            tiles.append(overlay(img, cams[i], alpha=alpha))
            titles.append(name)
    return image_grid(tiles, path, titles=titles, ncols=1 + len(cams_by_method), cell=cell)
