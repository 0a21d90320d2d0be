"""The one experiment registry, read by `vislab list`, `vislab show`, `vislab run`, `vislab demo` and
``vislab.run()``. Each entry declares once, without importing torch, an experiment's name, where its class
lives, its one-line summary, its headline test metric (and whether higher is better) and its share of the
demo's time budget."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from vislab.errors import UserError


@dataclass(frozen=True)
class ExperimentInfo:
    name: str
    target: str  # "module:Class"
    summary: str
    headline: str  # the test metric that says whether the experiment made its point
    higher_is_better: bool
    demo_budget_s: float  # seconds in `vislab demo` on 2 idle CPU cores (all experiments share 12 minutes)


_EXPERIMENTS: dict[str, ExperimentInfo] = {}


def register(info: ExperimentInfo) -> ExperimentInfo:
    """Add an experiment (a duplicate name raises)."""
    if info.name in _EXPERIMENTS:
        raise ValueError(f"experiment {info.name!r} is already registered")
    _EXPERIMENTS[info.name] = info
    return info


for _info in (
    ExperimentInfo("folder-classifier", "vislab.experiments.folder_classifier:FolderClassifier",
                   "small CNN vs pretrained fine-tune on an image folder, with Grad-CAM (SPEC §1)", "accuracy", True,
                   120.0),
    ExperimentInfo("deform-vs-conv", "vislab.experiments.deform_vs_conv:DeformVsConv",
                   "deformable vs regular convolution, multi-label digits or COCO (SPEC §4)", "map", True, 115.0),
    ExperimentInfo("transfer", "vislab.experiments.transfer:Transfer",
                   "pretrained CNN, new FC: CE vs triplet+CE vs joint (SPEC §5)", "accuracy", True, 50.0),
    ExperimentInfo("change-detection", "vislab.experiments.change_detection:ChangeDetection",
                   "displacement and scaling between two images: network vs phase correlation, Fourier-Mellin, "
                   "hybrid (SPEC §6)", "type_accuracy", True, 50.0),
    ExperimentInfo("detection", "vislab.experiments.detection:Detection",
                   "Faster R-CNN from its pieces vs torchvision's FasterRCNN on the same backbone (SPEC §7)", "map50",
                   True, 65.0),
    ExperimentInfo("sam-finetune", "vislab.experiments.sam_finetune:SamFinetune",
                   "SAM's prompt encoder and mask decoder fine-tuned with box prompts vs box and GrabCut baselines "
                   "(SPEC §8)", "iou", True, 120.0),
    ExperimentInfo("vit", "vislab.experiments.vit:VitExperiment",
                   "Vision Transformer from scratch vs a small CNN: attention maps, rollout, patch shuffling (SPEC §9)",
                   "accuracy", True, 150.0),
):
    register(_info)


def list_experiments() -> list[tuple[str, str]]:
    return [(name, info.summary) for name, info in _EXPERIMENTS.items()]


def experiment_info(name: str) -> ExperimentInfo:
    if name not in _EXPERIMENTS:
        raise UserError(f"unknown experiment {name!r}; registered: {', '.join(_EXPERIMENTS)}")
    return _EXPERIMENTS[name]


def get_experiment(name: str) -> Any:
    info = experiment_info(name)
    mod, cls = info.target.split(":")
    exp = getattr(importlib.import_module(mod), cls)()
    exp.name = info.name
    exp.info = info
    return exp


def _source_fingerprint() -> str:
    """A digest of the installed vislab sources (path, size, mtime of every ``.py`` file) and its version: what
    an experiment's description is computed from. ~2 ms for the whole package."""
    import hashlib
    import os

    import vislab

    root = os.path.dirname(vislab.__file__)
    h = hashlib.sha1(vislab.__version__.encode())
    for d, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for f in sorted(files):
            if f.endswith(".py"):
                st = os.stat(os.path.join(d, f))
                h.update(f"{os.path.relpath(os.path.join(d, f), root)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def describe_experiment(name: str) -> str:
    """What `vislab show NAME` prints: summary, headline, data options, claims and the config fields with their
    defaults, constraints and comments. Computing it imports the experiment (torch, Lightning: seconds), so the
    text is kept in ``$VISLAB_CACHE/show/`` (default ``~/.cache/vislab``) under a fingerprint of the sources:
    any change to them computes it again; a cache that cannot be written only costs the time."""
    import os
    from pathlib import Path

    experiment_info(name)  # an unknown name: the UserError, before any import
    cache = Path(os.environ.get("VISLAB_CACHE") or Path.home() / ".cache" / "vislab") / "show"
    path = cache / f"{name}-{_source_fingerprint()}.txt"
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    text = _describe_live(name)
    try:
        from vislab.io.files import atomic_write_text

        atomic_write_text(path, text)
        for old in cache.glob(f"{name}-*.txt"):  # descriptions of earlier sources
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        pass
    return text


def _describe_live(name: str) -> str:
    from vislab.engine.config import describe_config

    exp = get_experiment(name)
    key, higher = exp.headline
    lines = [f"{exp.name}: {exp.summary}", "", f"headline: test {key} ({'higher' if higher else 'lower'} is better); "
             f"demo budget {exp.demo_budget_s:.0f} s", "", "data:", f"  {exp.data_help}", ""]
    if exp.claims:
        lines.append("claims (judged on every run, over seeds with --seeds N):")
        lines += [f"  {c.sentence()}" for c in exp.claims] + [""]
    lines.append("config (--set KEY=VALUE):")
    for fname, tname, default, constraint, comment in describe_config(exp.Config):
        lines.append(f"  {fname:<16} {tname:<14} {default!s:<14} {constraint:<18} {comment}")
    return "\n".join(lines)
