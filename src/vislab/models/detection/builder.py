"""Building the two Faster R-CNN implementations the detection experiment compares, and reading them back.

* :func:`model_kwargs` — the JSON-able settings both are built with (saved in checkpoints);
* :func:`build_detector` — ours (``"vislab"``, :class:`~vislab.models.detection.FasterRCNN`) or torchvision's
  ``FasterRCNN`` around a fresh backbone, with the early backbone layers frozen;
* :func:`freeze_early_layers` — freeze the backbone layers up to an output stride;
* :func:`param_groups` — optimiser groups (trainable backbone layers at a smaller rate);
* :func:`load_detector_checkpoint` — a detector rebuilt from a checkpoint of the experiment (``vislab detect``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

IMPLEMENTATIONS = ("vislab", "torchvision")


def anchor_pixels(cfg: Any) -> tuple[float, ...]:
    """Anchor sides in pixels: ``cfg.anchor_sizes`` are fractions of ``cfg.image_size``."""
    return tuple(round(f * cfg.image_size, 2) for f in cfg.anchor_sizes)


def representation_size(cfg: Any) -> int:
    """Width of the head's two FC layers: ``cfg.representation_size``, or 4096 for VGG16 (the paper) and 1024
    otherwise when it is 0."""
    if cfg.representation_size > 0:
        return int(cfg.representation_size)
    return 4096 if cfg.backbone == "vgg16" else 1024


def model_kwargs(cfg: Any) -> dict[str, Any]:
    """The keyword arguments both implementations are built with (JSON-able; saved in checkpoints), from a
    config with the detection experiment's fields."""
    return {
        "anchor_sizes": list(anchor_pixels(cfg)), "aspect_ratios": list(cfg.aspect_ratios),
        "min_size": cfg.image_size, "max_size": cfg.image_size,
        "rpn_pre_nms_top_n_train": cfg.rpn_pre_nms_top_n_train,
        "rpn_post_nms_top_n_train": cfg.rpn_post_nms_top_n_train,
        "rpn_pre_nms_top_n_test": cfg.rpn_pre_nms_top_n_test, "rpn_post_nms_top_n_test": cfg.rpn_post_nms_top_n_test,
        "rpn_nms_thresh": cfg.rpn_nms_thresh, "rpn_batch_size_per_image": cfg.rpn_batch_size_per_image,
        "box_batch_size_per_image": cfg.box_batch_size_per_image, "roi_op": cfg.roi_op,
        "roi_output_size": cfg.roi_output_size, "representation_size": representation_size(cfg),
        "box_score_thresh": cfg.box_score_thresh,
    }


def freeze_early_layers(backbone: nn.Module, freeze_stride: int) -> list[str]:
    """Freeze (``requires_grad=False``) the backbone body's top-level layers whose output stride is
    ``<= freeze_stride``, and every layer before them; return their names. Strides are measured with a
    64×64 probe."""
    body = getattr(backbone, "body", backbone)
    children = list(body.named_children())
    if freeze_stride <= 0 or not children:
        return []
    strides: dict[str, int] = {}
    hooks = []
    for name, child in children:
        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            t = out[-1] if isinstance(out, (list, tuple)) else out
            if isinstance(t, Tensor) and t.dim() == 4:
                strides[name] = 64 // max(int(t.shape[-1]), 1)
        hooks.append(child.register_forward_hook(hook))
    was_training = backbone.training
    try:
        with torch.no_grad():
            backbone.eval()(torch.zeros(1, 3, 64, 64))
    finally:
        for h in hooks:
            h.remove()
        backbone.train(was_training)
    last = -1
    for k, (name, _) in enumerate(children):
        if strides.get(name, 1) <= freeze_stride:
            last = k
    frozen = [name for name, _ in children[:last + 1]]
    for _name, child in children[:last + 1]:
        for p in child.parameters():
            p.requires_grad_(False)
    return frozen


def build_detector(implementation: str, *, backbone: str, num_classes: int, model_kw: dict[str, Any],
                   pretrained: bool, weights: str | None = None, freeze_stride: int = 0) -> tuple[nn.Module, list[str]]:
    """``(model, frozen layer names)``: ours (``"vislab"``) or torchvision's FasterRCNN on a fresh backbone.

    ``num_classes`` counts the background. ``model_kw`` as :func:`model_kwargs` returns. An unknown
    ``implementation`` is a ``ValueError`` naming the valid ones.
    """
    from vislab.models.detection import FasterRCNN, build_backbone, build_torchvision_faster_rcnn

    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown variant {implementation!r}; valid variants: {', '.join(IMPLEMENTATIONS)}")
    trunk = build_backbone(backbone, pretrained=pretrained, weights=weights)
    frozen = freeze_early_layers(trunk, freeze_stride)
    kw = dict(model_kw)
    kw["anchor_sizes"], kw["aspect_ratios"] = tuple(kw["anchor_sizes"]), tuple(kw["aspect_ratios"])
    if implementation == "vislab":
        return FasterRCNN(trunk, num_classes, **kw), frozen
    return build_torchvision_faster_rcnn(trunk, num_classes, **kw), frozen


def param_groups(model: nn.Module, *, lr: float, backbone_lr_mult: float) -> list[dict[str, Any]]:
    """Optimiser groups: the trainable backbone parameters at ``lr × backbone_lr_mult``, the rest at ``lr``."""
    backbone = {id(p) for p in model.backbone.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) in backbone], "lr": lr * backbone_lr_mult},
              {"params": [p for p in trainable if id(p) not in backbone], "lr": lr}]
    return [g for g in groups if g["params"]]


def load_detector_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A detector rebuilt from a checkpoint of the detection experiment: ``(model in eval mode, meta)``.

    The model is rebuilt from the metadata saved under ``"vislab"`` (backbone, classes, settings) with a
    randomly initialised backbone, then every weight is loaded from the checkpoint. A missing, unreadable or
    foreign file is one :class:`vislab.errors.UserError` line.
    """
    from vislab.io.checkpoint import model_state, read_checkpoint

    ckpt, meta = read_checkpoint(path, "detection", what="the detection experiment")
    model, _ = build_detector(meta["variant"], backbone=meta["backbone"], num_classes=int(meta["num_classes"]),
                              model_kw=meta["model_kwargs"], pretrained=False)
    model.load_state_dict(model_state(ckpt))
    return model.eval(), meta


__all__ = ["IMPLEMENTATIONS", "anchor_pixels", "build_detector", "freeze_early_layers", "load_detector_checkpoint",
           "model_kwargs", "param_groups", "representation_size"]
