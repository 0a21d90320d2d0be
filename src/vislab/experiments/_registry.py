"""The experiment registry read by `vislab list`, `vislab show` and `vislab run`."""

from __future__ import annotations

import importlib
from typing import Any

from vislab.errors import UserError

# name -> "module:Class". Lazy, so `vislab list` does not import torch.
_EXPERIMENTS: dict[str, tuple[str, str]] = {
    "folder-classifier": ("vislab.experiments.folder_classifier:FolderClassifier",
                          "small CNN vs pretrained fine-tune on an image folder, with Grad-CAM (SPEC §1)"),
    "deform-vs-conv": ("vislab.experiments.deform_vs_conv:DeformVsConv",
                       "deformable vs regular convolution, multi-label digits or COCO (SPEC §4)"),
    "transfer": ("vislab.experiments.transfer:Transfer", "pretrained CNN, new FC: CE vs triplet+CE vs joint (SPEC §5)"),
    "change-detection": ("vislab.experiments.change_detection:ChangeDetection",
                         "displacement and scaling between two images: network vs phase correlation, Fourier-Mellin, "
                         "hybrid (SPEC §6)"),
    "detection": ("vislab.experiments.detection:Detection",
                  "Faster R-CNN from its pieces vs torchvision's FasterRCNN on the same backbone (SPEC §7)"),
    "sam-finetune": ("vislab.experiments.sam_finetune:SamFinetune",
                     "SAM's prompt encoder and mask decoder fine-tuned with box prompts vs box and GrabCut baselines "
                     "(SPEC §8)"),
    "vit": ("vislab.experiments.vit:VitExperiment",
            "Vision Transformer from scratch vs a small CNN: attention maps, rollout, patch shuffling (SPEC §9)"),
}


def list_experiments() -> list[tuple[str, str]]:
    return [(name, summary) for name, (_, summary) in _EXPERIMENTS.items()]


def get_experiment(name: str) -> Any:
    if name not in _EXPERIMENTS:
        raise UserError(f"unknown experiment {name!r}; registered: {', '.join(_EXPERIMENTS)}")
    path, _ = _EXPERIMENTS[name]
    mod, cls = path.split(":")
    return getattr(importlib.import_module(mod), cls)()


def describe_experiment(name: str) -> str:
    from vislab.engine.config import describe_config

    exp = get_experiment(name)
    lines = [f"{exp.name}: {exp.summary}", "", "data:", f"  {exp.data_help}", "", "config (--set KEY=VALUE):"]
    for fname, tname, default, comment in describe_config(exp.Config):
        lines.append(f"  {fname:<16} {tname:<14} {default!s:<14} {comment}")
    return "\n".join(lines)
