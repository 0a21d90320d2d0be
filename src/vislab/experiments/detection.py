"""Experiment ``detection`` (SPEC §7): Faster R-CNN built from its pieces (``vislab.models.detection``) against
torchvision's ``FasterRCNN`` assembled around the same backbone, with the same anchors, RoI pooling, proposal
numbers, samplers, data, seed and schedule.

Data: by default the embedded scenes (:func:`vislab.data.detection.write_detection_scenes`: 0–6 objects of five
shape classes on crops of real scikit-image photographs, test scenes on held-out photographs), written as a
COCO-format folder; ``--data coco --root DIR`` (MS COCO 2017 layout), ``--data voc --root DIR`` (Pascal VOC
2007) or ``--data DIR`` (any COCO-format folder) go through the same loader. Metrics: COCO mAP, AP50, AP75,
AR@100 and per-class AP50 with pycocotools (:func:`vislab.metrics.detection.coco_map`).

Besides the comparison, the report shows the pipeline a student needs to see: the anchors of one feature-map
location, the RPN proposals before and after NMS, and the RoIs sampled as foreground/background for the head.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from vislab.engine.config import CommonConfig
from vislab.engine.context import RunContext
from vislab.engine.fit import fit_stage, seed_everything
from vislab.engine.module import StructuredTaskModule, evaluate
from vislab.errors import UserError
from vislab.experiments.base import Experiment
from vislab.metrics.detection import coco_map
from vislab.report import figures
from vislab.report.blocks import comparison_bullets, headline_sentence, run_footer, variants_table
from vislab.report.document import Report

VARIANTS = ("vislab", "torchvision")
ROI_OPS = ("roi_pool", "roi_align")
_NEG_SHOWN = 40  # negative anchors drawn in the pipeline figure (all are counted)
_METRICS = ("map", "map50", "map75", "mar100")
_LOSSES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")


@dataclass
class DetectionConfig(CommonConfig):
    epochs: int = 8  # maximum epochs per variant (early stopping on val map50 may end sooner)
    batch_size: int = 8  # images per optimisation step
    lr: float = 1e-3  # AdamW learning rate (ReduceLROnPlateau on val map50 lowers it)
    image_size: int = 160  # images (and their boxes) are resized to this square side, pixels (10×10 features)
    patience: int = 4  # early stopping: epochs without a better val map50
    variants: tuple[str, ...] = VARIANTS  # vislab (ours, from the pieces) and torchvision (its FasterRCNN)
    backbone: str = "efficientnet_lite0"  # stride-16 trunk: efficientnet_lite0 (offline weights), vgg16, a timm CNN
    pretrained: bool = True  # ImageNet weights for the backbone (an error if missing; false = random init)
    weights: str | None = None  # backbone weights file instead of the default source
    freeze_stride: int = 16  # freeze backbone layers of output stride <= this (16: all; 8: train the stride-16 stages)
    backbone_lr_mult: float = 0.1  # the trainable backbone layers learn at lr × this (the new layers at lr)
    anchor_sizes: tuple[float, ...] = (0.125, 0.25, 0.5)  # anchor sides / image_size (paper: 128, 256, 512 of ~600 px)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # anchor aspect ratios h/w (paper: 0.5, 1, 2)
    rpn_pre_nms_top_n_train: int = 12000  # proposals kept before NMS in training (paper 12000)
    rpn_post_nms_top_n_train: int = 2000  # proposals kept after NMS in training (paper 2000)
    rpn_pre_nms_top_n_test: int = 6000  # proposals kept before NMS at test time (paper 6000)
    rpn_post_nms_top_n_test: int = 300  # proposals kept after NMS at test time (paper 300)
    rpn_nms_thresh: float = 0.7  # NMS IoU of the proposal layer (paper 0.7)
    rpn_batch_size_per_image: int = 256  # anchors sampled per image for the RPN loss, at most half positive
    box_batch_size_per_image: int = 128  # RoIs sampled per image for the head, 25% foreground (paper 128)
    roi_op: str = "roi_align"  # roi_align, or roi_pool (the paper's; rounds RoIs to whole 16-px cells)
    roi_output_size: int = 7  # RoI pooling grid side (paper 7)
    representation_size: int = 256  # width of the two FC layers (0 = 4096 for vgg16 as in the paper, 1024 otherwise)
    box_score_thresh: float = 0.05  # detections below this score are dropped (evaluation keeps the rest, max 100)
    hflip: bool = True  # random horizontal flips of the training images (boxes flipped with them)
    n_train: int = 1200  # embedded data: training scenes
    n_val: int = 200  # embedded data: validation scenes
    n_test: int = 300  # embedded data: test scenes (on held-out photographs)
    max_objects: int = 6  # embedded data: at most this many objects per scene (0..6)
    val_fraction: float = 0.1  # COCO/VOC without a test list: share of train held out for validation
    show_images: int = 6  # test images drawn with predicted and ground-truth boxes
    show_score: float = 0.5  # score threshold for the drawn predictions


def _anchor_pixels(cfg: DetectionConfig) -> tuple[float, ...]:
    return tuple(round(f * cfg.image_size, 2) for f in cfg.anchor_sizes)


def _representation_size(cfg: DetectionConfig) -> int:
    if cfg.representation_size > 0:
        return int(cfg.representation_size)
    return 4096 if cfg.backbone == "vgg16" else 1024


def model_kwargs(cfg: DetectionConfig) -> dict[str, Any]:
    """The keyword arguments both implementations are built with (JSON-able; saved in checkpoints)."""
    return {
        "anchor_sizes": list(_anchor_pixels(cfg)), "aspect_ratios": list(cfg.aspect_ratios),
        "min_size": cfg.image_size, "max_size": cfg.image_size,
        "rpn_pre_nms_top_n_train": cfg.rpn_pre_nms_top_n_train,
        "rpn_post_nms_top_n_train": cfg.rpn_post_nms_top_n_train,
        "rpn_pre_nms_top_n_test": cfg.rpn_pre_nms_top_n_test, "rpn_post_nms_top_n_test": cfg.rpn_post_nms_top_n_test,
        "rpn_nms_thresh": cfg.rpn_nms_thresh, "rpn_batch_size_per_image": cfg.rpn_batch_size_per_image,
        "box_batch_size_per_image": cfg.box_batch_size_per_image, "roi_op": cfg.roi_op,
        "roi_output_size": cfg.roi_output_size, "representation_size": _representation_size(cfg),
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

    ``num_classes`` counts the background. ``model_kw`` as :func:`model_kwargs` returns.
    """
    from vislab.models.detection import FasterRCNN, build_backbone, build_torchvision_faster_rcnn

    if implementation not in VARIANTS:
        raise UserError(f"unknown variant {implementation!r}; valid variants: {', '.join(VARIANTS)}")
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


def _train_target(t: dict[str, Any]) -> dict[str, Tensor]:
    """The target the detector trains on: crowd (and VOC difficult) boxes dropped."""
    keep = t["iscrowd"] == 0 if "iscrowd" in t else torch.ones(len(t["labels"]), dtype=torch.bool)
    return {"boxes": t["boxes"][keep], "labels": t["labels"][keep]}


class DetectionModule(StructuredTaskModule):
    """Faster R-CNN training and evaluation: ``batch = (list of images, list of targets)``.

    Training: the detector's four losses; ``"loss"`` is their sum (the optimised total), outputs ``None``.
    Evaluation: one ``{"boxes", "labels", "scores"}`` per image as outputs, no loss; ``metrics`` is COCO
    mAP / AP50 / AP75 / AR@100 over the split. The time of the evaluation forward passes is accumulated in
    ``infer_s`` / ``infer_images``.
    """

    def __init__(self, model: nn.Module, *, class_names: list[str], **kwargs: Any) -> None:
        kwargs.setdefault("monitor", "val/map50")
        kwargs.setdefault("monitor_mode", "max")
        super().__init__(model, **kwargs)
        self.class_names = list(class_names)
        self.infer_s = 0.0
        self.infer_images = 0
        self.last_coco: dict[str, Any] = {}

    def compute_loss(self, batch: Any) -> tuple[Any, Any, Any]:
        images, targets = list(batch[0]), list(batch[1])
        if self.training:
            losses = self.model(images, [_train_target(t) for t in targets])
            total = sum(losses.values())
            return {"loss": total, **losses}, None, targets
        t0 = time.perf_counter()
        preds = self.model(images)
        self.infer_s += time.perf_counter() - t0
        self.infer_images += len(images)
        return None, preds, targets

    def metrics(self, outputs: list[Any], targets: list[Any]) -> dict[str, float]:
        m = coco_map(outputs, targets, class_names=self.class_names)
        self.last_coco = m  # the full result (per-class AP50, ...) of the latest split evaluated
        return {k: float(m[k]) for k in _METRICS}


class Detection(Experiment):
    name = "detection"
    data_help = ("default: generated scenes (0-6 objects of 5 shape classes on scikit-image photographs, COCO-format "
                 "JSON in the cache); --data coco --root DIR: annotations/instances_{train,val}2017.json + "
                 "train2017/ val2017/ (val2017 = test, a seeded part of train2017 = val); --data voc --root DIR: "
                 "VOCdevkit/VOC2007 (difficult objects ignored); --data DIR: a folder with COCO-format JSON")
    Config = DetectionConfig

    def demo_overrides(self, quick: bool) -> dict[str, Any]:
        # Demo: fewer proposals and sampled RoIs, a 128-wide head, 2 epochs of 320 scenes. Fresh-clone demo (seed 0,
        # 2 cores): test AP50 0.601 for both variants (identical runs), 51 s for the whole run including scene
        # generation and the report; --quick 4 s.
        # The default (8 epochs of 1200 scenes): test AP50 0.857 for both (identical runs); ~37 s an epoch on 2 idle
        # cores.
        small = {"rpn_pre_nms_top_n_train": 1000, "rpn_post_nms_top_n_train": 300,
                 "rpn_pre_nms_top_n_test": 500, "rpn_post_nms_top_n_test": 100, "box_batch_size_per_image": 64,
                 "representation_size": 128, "show_images": 4}
        if quick:
            return {**small, "image_size": 96, "epochs": 1, "n_train": 24, "n_val": 8, "n_test": 8,
                    "rpn_batch_size_per_image": 64, "box_batch_size_per_image": 32, "representation_size": 64,
                    "show_images": 2}
        return {**small, "epochs": 2, "n_train": 320, "n_val": 48, "n_test": 128}

    # ------------------------------------------------------------------------------------------
    def validate(self, cfg: DetectionConfig, data: str | None, root: str | None) -> None:
        from vislab.data.detection import check_detection_source

        for v in cfg.variants:
            if v not in VARIANTS:
                raise UserError(f"unknown variant {v!r}; valid variants: {', '.join(VARIANTS)}")
        if not cfg.variants:
            raise UserError(f"variants is empty; choose from {', '.join(VARIANTS)}")
        if cfg.backbone not in ("efficientnet_lite0", "vgg16"):
            import timm

            if cfg.backbone not in timm.list_models():
                raise UserError(f"unknown backbone {cfg.backbone!r}; use efficientnet_lite0, vgg16 or a timm CNN name")
        if cfg.roi_op not in ROI_OPS:
            raise UserError(f"roi_op must be one of {', '.join(ROI_OPS)}, got {cfg.roi_op!r}")
        if cfg.image_size < 32:
            raise UserError(f"image_size must be >= 32 (two cells of the stride-16 feature map), got {cfg.image_size}")
        if not cfg.anchor_sizes or any(not 0 < f <= 4 for f in cfg.anchor_sizes):
            raise UserError(f"anchor_sizes are fractions of image_size in (0, 4], got {cfg.anchor_sizes}")
        if not cfg.aspect_ratios or any(r <= 0 for r in cfg.aspect_ratios):
            raise UserError(f"aspect_ratios must be positive, got {cfg.aspect_ratios}")
        for key in ("rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
                    "rpn_post_nms_top_n_test", "rpn_batch_size_per_image", "box_batch_size_per_image",
                    "roi_output_size", "n_train", "n_val", "n_test"):
            if getattr(cfg, key) < 1:
                raise UserError(f"{key} must be >= 1, got {getattr(cfg, key)}")
        if cfg.representation_size < 0:
            raise UserError(f"representation_size must be >= 0 (0 = the backbone's default), got "
                            f"{cfg.representation_size}")
        if not 0 <= cfg.max_objects <= 6:
            raise UserError(f"max_objects must be in 0..6, got {cfg.max_objects}")
        if not 0 < cfg.val_fraction < 1:
            raise UserError(f"val_fraction must be in (0, 1), got {cfg.val_fraction}")
        if not 0 <= cfg.rpn_nms_thresh <= 1 or not 0 <= cfg.box_score_thresh < 1:
            raise UserError("rpn_nms_thresh must be in [0, 1] and box_score_thresh in [0, 1)")
        if cfg.freeze_stride > 0 and not cfg.pretrained:
            raise UserError(f"freeze_stride={cfg.freeze_stride} would freeze randomly initialised layers "
                            "(pretrained=false); set freeze_stride=0")
        if cfg.weights and not Path(cfg.weights).is_file():
            raise UserError(f"weights file {cfg.weights!r} does not exist")
        check_detection_source(data, root)

    # ------------------------------------------------------------------------------------------
    def run(self, ctx: RunContext) -> dict[str, Any]:
        from vislab.data.detection import load_detection_data

        cfg: DetectionConfig = ctx.cfg
        self.validate(cfg, ctx.data, ctx.root)
        data = load_detection_data(ctx.data, ctx.root, image_size=cfg.image_size, seed=cfg.seed,
                                   val_fraction=cfg.val_fraction, hflip=cfg.hflip,
                                   limits={"train": cfg.limit_train, "val": cfg.limit_val, "test": cfg.limit_test},
                                   scenes={"n_train": cfg.n_train, "n_val": cfg.n_val, "n_test": cfg.n_test,
                                           "max_objects": cfg.max_objects})
        counts = data.counts()
        ctx.log(f"data: {data.name}: {len(data.label_names)} classes; " + ", ".join(
            f"{k} {c['images']} images / {c['boxes']} boxes" for k, c in counts.items()))
        results = {v: self._run_variant(ctx, v, data) for v in cfg.variants}
        summary = {
            "experiment": self.name,
            "data": {"name": data.name, "train": len(data.train), "val": len(data.val), "test": len(data.test),
                     "classes": data.label_names, "category_ids": list(data.train.category_ids),
                     "split_rule": data.split_rule, "counts": counts,
                     "dropped_degenerate": {k: c["dropped_degenerate"] for k, c in counts.items()}},
            "settings": {"backbone": cfg.backbone, "anchor_sizes_px": list(_anchor_pixels(cfg)),
                         "model_kwargs": model_kwargs(cfg), "freeze_stride": cfg.freeze_stride},
            "runs": {v: r["summary"] for v, r in results.items()},
        }
        if ctx.is_main:
            self._report(ctx, summary, results, data)
        return summary

    def _run_variant(self, ctx: RunContext, variant: str, data: Any) -> dict[str, Any]:
        from vislab.data.detection import collate_fn

        cfg: DetectionConfig = ctx.cfg
        seed_everything(cfg.seed)
        num_classes = len(data.label_names) + 1
        kw = model_kwargs(cfg)
        model, frozen = build_detector(variant, backbone=cfg.backbone, num_classes=num_classes, model_kw=kw,
                                       pretrained=cfg.pretrained, weights=cfg.weights, freeze_stride=cfg.freeze_stride)
        meta = {"task": "detection", "experiment": self.name, "variant": variant, "backbone": cfg.backbone,
                "num_classes": num_classes, "label_names": data.label_names,
                "category_ids": list(data.train.category_ids), "image_size": cfg.image_size, "model_kwargs": kw,
                "freeze_stride": cfg.freeze_stride}
        module = DetectionModule(model, class_names=data.label_names, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 lr_patience=cfg.lr_patience, lr_factor=cfg.lr_factor, meta=meta,
                                 param_groups=lambda m: param_groups(m, lr=cfg.lr,
                                                                     backbone_lr_mult=cfg.backbone_lr_mult))
        gen = torch.Generator().manual_seed(cfg.seed)
        loaders = {k: DataLoader(ds, batch_size=cfg.batch_size, shuffle=(k == "train"), generator=gen,
                                 collate_fn=collate_fn, num_workers=cfg.num_workers,
                                 persistent_workers=cfg.num_workers > 0) for k, ds in data.splits.items()}
        stage = fit_stage(ctx, module, loaders["train"], loaders["val"], variant=variant)
        device = ctx.device() if ctx.resolved_accelerator() != "cpu" else "cpu"
        evals = {}
        for split in ("val", "test"):
            module.infer_s, module.infer_images, module.last_coco = 0.0, 0, {}
            res = evaluate(module, loaders[split], device=device, desc=f"{variant}: {split}")
            full = module.last_coco  # computed by evaluate() from exactly res.outputs / res.targets
            evals[split] = {"metrics": {k: float(full[k]) for k in _METRICS}, "full": full, "outputs": res.outputs,
                            "targets": res.targets,
                            "infer_ms": 1000 * module.infer_s / max(module.infer_images, 1)}
        model = module.model.cpu().eval()
        rows = [r for r in ctx.run.read_metrics() if r.get("variant") == variant and r.get("stage") == "train"]
        best = next((r for r in rows if r["epoch"] == stage.best_epoch), rows[-1] if rows else {})
        train = {k: best[f"train_{k}"] for k in ("loss", *_LOSSES) if f"train_{k}" in best}
        time_info = dict(stage.time)
        step_s = time_info.get("step_ms_mean", 0.0) / 1000
        time_info["train_images_per_s"] = cfg.batch_size / step_s if step_s > 0 else float("nan")
        time_info["infer_ms_per_image"] = evals["test"]["infer_ms"]
        summary = {
            "params": int(sum(p.numel() for p in model.parameters())),
            "trainable_params": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
            "epochs": stage.epochs, "best_epoch": stage.best_epoch, "train": train,
            "val": evals["val"]["metrics"], "test": evals["test"]["metrics"],
            "ap50_per_class": evals["test"]["full"]["ap50_per_class"],
            "time": time_info, "frozen_backbone_layers": frozen, "best_checkpoint": stage.best_checkpoint,
        }
        return {"summary": summary, "model": model, "test_outputs": evals["test"]["outputs"],
                "test_targets": evals["test"]["targets"]}

    # ------------------------------------------------------------------------------------------
    def _report(self, ctx: RunContext, summary: dict[str, Any], results: dict[str, Any], data: Any) -> None:
        cfg: DetectionConfig = ctx.cfg
        run = ctx.run
        runs = summary["runs"]
        rows = run.read_metrics()
        d = summary["data"]
        rep = Report(f"detection — Faster R-CNN on {data.name}")
        kw = model_kwargs(cfg)
        rep.text(f"{data.description}. Splits: {data.split_rule}. Train {d['train']}, val {d['val']}, test "
                 f"{d['test']} images; {len(d['classes'])} classes ({', '.join(d['classes'])}).")
        counts = d["counts"]
        rep.table(["split", "images", "boxes", "crowd / difficult boxes", "images without boxes",
                   "degenerate boxes dropped"],
                  [[k, c["images"], c["boxes"], c["crowd"], c["empty"], c["dropped_degenerate"]]
                   for k, c in counts.items()],
                  caption="Crowd (COCO iscrowd, VOC difficult) boxes are not trained on and are ignored by the "
                          "evaluation; degenerate boxes (width or height below 1 px after clipping to the image) are "
                          "dropped when loading: torchvision's detectors raise on them.")
        frozen = next(iter(runs.values()))["frozen_backbone_layers"] if runs else []
        init = "ImageNet weights" if cfg.pretrained else "random init"
        rep.text(f"Both variants: backbone **{cfg.backbone}** ({init}, stride 16, frozen batch norms; layers "
                 f"frozen up to stride {cfg.freeze_stride}: "
                 f"{', '.join(frozen) or 'none'}); images resized to {cfg.image_size}×{cfg.image_size} (boxes with "
                 f"them); anchors {list(kw['anchor_sizes'])} px × ratios {list(cfg.aspect_ratios)} "
                 f"({len(kw['anchor_sizes']) * len(cfg.aspect_ratios)} per location); RPN proposals "
                 f"{cfg.rpn_pre_nms_top_n_train}/{cfg.rpn_post_nms_top_n_train} (train, before/after NMS "
                 f"{cfg.rpn_nms_thresh}) and {cfg.rpn_pre_nms_top_n_test}/{cfg.rpn_post_nms_top_n_test} (test); "
                 f"{cfg.rpn_batch_size_per_image} anchors and {cfg.box_batch_size_per_image} RoIs sampled per image; "
                 f"{cfg.roi_op} {cfg.roi_output_size}×{cfg.roi_output_size}; two FC layers of "
                 f"{kw['representation_size']}. Same seed ({cfg.seed}), data order and schedule: AdamW lr {cfg.lr} "
                 f"(trainable backbone layers ×{cfg.backbone_lr_mult:g}), "
                 f"batch {cfg.batch_size}, up to {cfg.epochs} epochs, early stopping on val AP50 (patience "
                 f"{cfg.patience}), horizontal flips {'on' if cfg.hflip else 'off'}. The best epoch's weights "
                 "(val AP50) are evaluated.")
        rep.heading("Side by side (test)")
        rep.text(headline_sentence(runs, self.headline))
        variants_table(rep, runs, list(_METRICS), extra={
            "trainable params": lambda r: r["trainable_params"], "best epoch": lambda r: r["best_epoch"],
            "train img/s": lambda r: r["time"]["train_images_per_s"],
            "infer ms/img": lambda r: r["time"]["infer_ms_per_image"]},
            caption="COCO metrics (pycocotools): mAP over IoU 0.5:0.95, AP at IoU 0.5 and 0.75, recall with 100 "
                    "detections per image. Train images/s from the mean training step; inference ms/image from the "
                    f"batched test forward passes (batch {cfg.batch_size}, {ctx.resolved_accelerator()}).")
        rep.bullets(comparison_bullets(runs, {"map50": True, "map": True, "map75": True, "mar100": True})
                    + speed_sentences(runs) + identical_sentence(runs)
                    + ["A single seed on a small test split: differences of a few AP points can be within "
                       "seed-to-seed variation."])
        rep.heading("Per-class AP50 (test)")
        names = list(d["classes"])
        rep.table(["class", *runs], [[n, *[runs[v]["ap50_per_class"].get(n, -1.0) for v in runs]] for n in names],
                  caption="-1: no ground-truth box of that class in the test split.")
        if len(names) <= 40:
            rep.figure(_per_class_figure(runs, names, run.figure("ap50_per_class.png")), "Test AP50 per class.")
        rep.heading("Curves")
        rep.figure(figures.plot_curves(rows, [*_LOSSES, "map50"], run.figure("curves.png")),
                   "Per epoch: the four loss components, averaged over the training batches (solid): RPN objectness "
                   "(BCE over the sampled anchors), RPN box regression (smooth L1, β = 1/9), head classification "
                   "(CE over the sampled RoIs), head box regression (smooth L1 on the foreground RoIs); and the "
                   "validation AP50 (dashed), which early stopping and the best checkpoint follow. Where the variants "
                   "agree exactly, the later line hides the earlier.")
        rep.heading("Test images")
        show = min(cfg.show_images, len(data.test))
        if show:
            rep.figure(_detections_figure(results, data, show, cfg.show_score, run.figure("test_detections.png")),
                       f"Ground truth (top row) and the detections with score ≥ {cfg.show_score:g} of each variant "
                       "on the first test images.")
        if "vislab" in results:
            rep.heading("Inside the pipeline (ours, one test image)")
            self._pipeline_figures(ctx, rep, results["vislab"]["model"], data)
        rep.text("Checkpoints (`vislab detect --checkpoint CKPT IMAGE...`): " + ", ".join(
            f"`{v}`: `{_relative(r['best_checkpoint'], run.path)}`" for v, r in runs.items()) + ".")
        run_footer(rep, run, cfg.seed)
        rep.write(run.path)

    def _pipeline_figures(self, ctx: RunContext, rep: Report, model: nn.Module, data: Any) -> None:
        test = data.test
        idx = next((i for i in range(len(test)) if len(test.target(i)["labels"]) >= 3), 0)
        image, target = test[idx]
        info = model.explain(image, _train_target(target), seed=ctx.cfg.seed)
        img = image.permute(1, 2, 0).numpy()  # (H, W, 3)
        path = _anchors_figure(img, info, target, ctx.run.figure("pipeline_anchors.png"))
        rep.figure(path, f"Left: the {len(info['anchors'])} anchors of feature-map cell {info['location']} (of "
                         f"{info['feature_size'][0]}×{info['feature_size'][1]}, stride {info['stride'][0]}), centred "
                         f"on that cell; dots are the anchor centres of all cells. Right: the anchors the RPN loss "
                         f"samples for this image ({len(info['anchors_positive'])} positive, IoU ≥ 0.7 or the best for "
                         f"a box; {len(info['anchors_negative'])} negative, IoU < 0.3, {_NEG_SHOWN} of them drawn in "
                         "red).")
        path = _proposals_figure(img, info, target, ctx.run.figure("pipeline_proposals.png"))
        rep.figure(path, f"RPN proposals of the trained model: the {len(info['proposals_pre_nms'])} candidates "
                         f"entering NMS (left; top 150 drawn, brighter = higher objectness) and the "
                         f"{len(info['proposals'])} left after NMS at IoU {ctx.cfg.rpn_nms_thresh} and the top-n cut "
                         "(right; top 25 drawn). Ground truth in white.")
        path = _rois_figure(img, info, target, ctx.run.figure("pipeline_rois.png"))
        rep.figure(path, f"The RoIs a training step samples for the head from these proposals (ground-truth boxes "
                         f"added): {len(info['rois_fg'])} foreground (IoU ≥ 0.5 with a box, green) and "
                         f"{len(info['rois_bg'])} background (IoU < 0.5, red); the ground-truth boxes dashed white.")


def identical_sentence(runs: dict[str, Any]) -> list[str]:
    """A sentence when every variant has exactly the same test metrics (the implementations trained identically)."""
    tests = [tuple(r["test"].get(k) for k in _METRICS) for r in runs.values()]
    if len(tests) < 2 or len(set(tests)) > 1:
        return []
    return ["All variants give exactly the same test numbers: with one seed, ours draws its anchor and RoI samples "
            "in torchvision's order and computes the same losses, so the two train step for step alike (the pieces "
            "are tested equal to torchvision's one by one)."]


def speed_sentences(runs: dict[str, Any]) -> list[str]:
    """Who trains and infers faster, with the numbers (the first two variants)."""
    names = list(runs)
    if len(names) < 2:
        return []
    a, b = names[0], names[1]
    out = [_verdict(label, a, runs[a]["time"][key], b, runs[b]["time"][key], higher, form)
           for key, label, higher, form in (("train_images_per_s", "training speed (images/s)", True, "{:.1f}"),
                                            ("infer_ms_per_image", "inference (ms/image)", False, "{:.1f}"))]
    out[-1] += (" (wall-clock times of this run, one variant after the other: on a machine shared with other jobs "
                "they vary with its load; benchmarks/detection.py times both at equal settings)")
    return out


def _relative(path: str, base: Path) -> str:
    p = Path(path)
    return str(p.relative_to(base)) if p.is_relative_to(base) else str(p)


def _verdict(label: str, a: str, va: float, b: str, vb: float, higher: bool, fmt: str) -> str:
    if any(isinstance(v, float) and math.isnan(v) for v in (va, vb)):
        return f"{label}: {a} {va}, {b} {vb}"
    tie = abs(va - vb) <= max(1e-3, 0.005 * max(abs(va), abs(vb)))
    if tie:
        return f"{label}: tie ({a} {fmt.format(va)}, {b} {fmt.format(vb)})"
    win, lose = (a, b) if (va > vb) == higher else (b, a)
    vw, vl = (va, vb) if win == a else (vb, va)
    return f"{label}: **{win}** {fmt.format(vw)} vs {lose} {fmt.format(vl)}"


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
def _class_colors(n: int) -> list[tuple[float, ...]]:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(max(n, 1))]


def _draw_boxes(ax: Any, boxes: Tensor | np.ndarray, *, color: Any, lw: float = 1.2, alpha: float = 1.0,
                labels: list[str] | None = None, ls: str = "-") -> None:
    from matplotlib.patches import Rectangle

    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        c = color[k] if isinstance(color, list) else color
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=c, lw=lw, alpha=alpha, ls=ls))
        if labels is not None:
            ax.text(x0 + 1, y0 + 1, labels[k], color="black", fontsize=6, va="top",
                    bbox={"facecolor": c, "alpha": 0.8, "pad": 0.5, "lw": 0})


def _show(ax: Any, img: np.ndarray, title: str = "") -> None:
    ax.imshow(np.clip(img, 0, 1))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlim(0, img.shape[1])
    ax.set_ylim(img.shape[0], 0)
    if title:
        ax.set_title(title, fontsize=8)


def _detections_figure(results: dict[str, Any], data: Any, n: int, score: float, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from vislab.report.figures import _save

    names = data.label_names
    colors = _class_colors(len(names))
    variants = list(results)
    fig, axes = plt.subplots(1 + len(variants), n, figsize=(2.3 * n, 2.4 * (1 + len(variants))), squeeze=False)
    for j in range(n):
        image, target = data.test[j]
        img = image.permute(1, 2, 0).numpy()  # (H, W, 3)
        lab = target["labels"].tolist()
        crowd = target["iscrowd"].tolist()
        ax = axes[0][j]
        _show(ax, img, f"ground truth ({len(lab)})")
        _draw_boxes(ax, target["boxes"], color=[colors[c - 1] for c in lab],
                    labels=[names[c - 1] + (" (crowd)" if k else "") for c, k in zip(lab, crowd)])
        tid = target["id"]
        for r, v in enumerate(variants):
            pred = next((p for p, t in zip(results[v]["test_outputs"], results[v]["test_targets"]) if t["id"] == tid),
                        None)
            ax = axes[r + 1][j]
            if pred is None:
                _show(ax, img, f"{v}: (not evaluated)")
                continue
            keep = pred["scores"] >= score
            pl, ps = pred["labels"][keep].tolist(), pred["scores"][keep].tolist()
            _show(ax, img, f"{v} ({len(pl)} ≥ {score:g})")
            _draw_boxes(ax, pred["boxes"][keep], color=[colors[(c - 1) % len(colors)] for c in pl],
                        labels=[f"{names[c - 1] if 0 < c <= len(names) else c} {s:.2f}" for c, s in zip(pl, ps)])
    fig.tight_layout()
    return _save(fig, path)


def _per_class_figure(runs: dict[str, Any], names: list[str], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from vislab.report.figures import _COLORS, _save

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
    return _save(fig, path)


def _anchors_figure(img: np.ndarray, info: dict[str, Any], target: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from vislab.report.figures import _save

    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.9))
    Hf, Wf = info["feature_size"]
    sy, sx = info["stride"]
    scale_y, scale_x = info["scale"]
    ax = axes[0]
    _show(ax, img, f"anchors at cell {info['location']} ({len(info['anchors'])})")
    cy = (np.arange(Hf) * sy) / scale_y
    cx = (np.arange(Wf) * sx) / scale_x
    gx, gy = np.meshgrid(cx, cy)
    ax.plot(gx.ravel(), gy.ravel(), ".", color="yellow", ms=2.5, alpha=0.8)
    anchors = info["anchors"].numpy()
    colors = _class_colors(len(anchors))
    _draw_boxes(ax, anchors, color=colors, lw=1.3)
    r, c = info["location"]
    ax.plot([c * sx / scale_x], [r * sy / scale_y], "o", color="red", ms=4)
    ax.set_xlim(min(0, anchors[:, 0].min()) - 2, max(img.shape[1], anchors[:, 2].max()) + 2)
    ax.set_ylim(max(img.shape[0], anchors[:, 3].max()) + 2, min(0, anchors[:, 1].min()) - 2)
    ax = axes[1]
    _show(ax, img, "anchors sampled for the RPN loss")
    neg = info["anchors_negative"]
    _draw_boxes(ax, neg[::max(1, len(neg) // _NEG_SHOWN)][:_NEG_SHOWN], color="red", lw=0.6, alpha=0.6)
    _draw_boxes(ax, info["anchors_positive"], color="lime", lw=1.2)
    _draw_boxes(ax, target["boxes"], color="white", lw=1.6, ls="--")
    fig.tight_layout()
    return _save(fig, path)


def _proposals_figure(img: np.ndarray, info: dict[str, Any], target: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from vislab.report.figures import _save

    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.9))
    for ax, boxes, scores, top, title in (
            (axes[0], info["proposals_pre_nms"], info["scores_pre_nms"], 150,
             f"before NMS ({len(info['proposals_pre_nms'])})"),
            (axes[1], info["proposals"], info["scores"], 25, f"after NMS ({len(info['proposals'])})")):
        _show(ax, img, title)
        b, s = boxes[:top].numpy(), scores[:top].numpy()
        order = np.argsort(s)  # draw the best last (on top)
        _draw_boxes(ax, b[order], color=[cmap(float(v)) for v in s[order]], lw=0.8, alpha=0.8)
        _draw_boxes(ax, target["boxes"], color="white", lw=1.6, ls="--")
    fig.tight_layout()
    return _save(fig, path)


def _rois_figure(img: np.ndarray, info: dict[str, Any], target: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    from vislab.report.figures import _save

    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.9))
    _show(axes[0], img, f"foreground RoIs ({len(info['rois_fg'])})")
    _draw_boxes(axes[0], info["rois_fg"], color="lime", lw=0.9, alpha=0.8)
    _draw_boxes(axes[0], target["boxes"], color="white", lw=1.6, ls="--")
    _show(axes[1], img, f"background RoIs ({len(info['rois_bg'])})")
    _draw_boxes(axes[1], info["rois_bg"], color="red", lw=0.6, alpha=0.5)
    _draw_boxes(axes[1], target["boxes"], color="white", lw=1.6, ls="--")
    fig.tight_layout()
    return _save(fig, path)


def load_detector_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A detector rebuilt from a checkpoint of this experiment: ``(model in eval mode, meta)``.

    The model is rebuilt from the metadata saved under ``"vislab"`` (backbone, classes, settings) with a
    randomly initialised backbone, then every weight is loaded from the checkpoint.
    """
    from vislab.engine.checkpoint import model_state, read_checkpoint

    ckpt, meta = read_checkpoint(path, "detection", what="the detection experiment")
    model, _ = build_detector(meta["variant"], backbone=meta["backbone"], num_classes=int(meta["num_classes"]),
                              model_kw=meta["model_kwargs"], pretrained=False)
    model.load_state_dict(model_state(ckpt))
    return model.eval(), meta


__all__ = ["Detection", "DetectionConfig", "DetectionModule", "build_detector", "param_groups", "speed_sentences",
           "freeze_early_layers", "load_detector_checkpoint", "model_kwargs"]
