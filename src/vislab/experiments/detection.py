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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vislab.engine.config import CommonConfig, param
from vislab.engine.context import RunContext
from vislab.engine.fit import eval_loader, fit_stage, seed_everything, train_loader
from vislab.engine.module import StructuredTaskModule, evaluate
from vislab.errors import UserError
from vislab.experiments.base import Experiment
from vislab.metrics.detection import coco_map
from vislab.metrics.detection_resample import ap50_resampler
from vislab.models.detection.builder import (
    IMPLEMENTATIONS,
    anchor_pixels,
    build_detector,
    freeze_early_layers,
    load_detector_checkpoint,
    model_kwargs,
    param_groups,
)
from vislab.protocol.claims import Claim
from vislab.protocol.report import sig
from vislab.protocol.results import Resampled, VariantResult
from vislab.report import detection_figures as dfig
from vislab.report.blocks import comparison_bullets
from vislab.report.document import Report

VARIANTS = IMPLEMENTATIONS  # ("vislab", "torchvision")
ROI_OPS = ("roi_pool", "roi_align")
_METRICS = ("map", "map50", "map75", "mar100")
_LOSSES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")


@dataclass
class DetectionConfig(CommonConfig):
    epochs: int = param(8, ge=1)  # maximum epochs per variant (early stopping on val map50 may end sooner)
    batch_size: int = param(8, ge=1)  # images per optimisation step
    lr: float = param(1e-3, gt=0)  # AdamW learning rate (ReduceLROnPlateau on val map50 lowers it)
    image_size: int = param(160, ge=32)  # square side images (and boxes) are resized to; >= 2 stride-16 cells
    patience: int = param(4, ge=1)  # early stopping: epochs without a better val map50
    variants: tuple[str, ...] = param(VARIANTS, choices=VARIANTS)  # vislab (ours, from the pieces), torchvision
    backbone: str = "efficientnet_lite0"  # stride-16 trunk: efficientnet_lite0 (offline weights), vgg16, a timm CNN
    pretrained: bool = True  # ImageNet weights for the backbone (an error if missing; false = random init)
    weights: str | None = None  # backbone weights file instead of the default source
    freeze_stride: int = param(16, ge=0)  # freeze backbone layers of output stride <= this (16: all; 0: none)
    backbone_lr_mult: float = param(0.1, ge=0)  # the trainable backbone layers learn at lr × this (new ones at lr)
    anchor_sizes: tuple[float, ...] = param((0.125, 0.25, 0.5), gt=0, le=4)  # anchor sides / image_size
    aspect_ratios: tuple[float, ...] = param((0.5, 1.0, 2.0), gt=0)  # anchor aspect ratios h/w (paper: 0.5, 1, 2)
    rpn_pre_nms_top_n_train: int = param(12000, ge=1)  # proposals kept before NMS in training (paper 12000)
    rpn_post_nms_top_n_train: int = param(2000, ge=1)  # proposals kept after NMS in training (paper 2000)
    rpn_pre_nms_top_n_test: int = param(6000, ge=1)  # proposals kept before NMS at test time (paper 6000)
    rpn_post_nms_top_n_test: int = param(300, ge=1)  # proposals kept after NMS at test time (paper 300)
    rpn_nms_thresh: float = param(0.7, ge=0, le=1)  # NMS IoU of the proposal layer (paper 0.7)
    rpn_batch_size_per_image: int = param(256, ge=1)  # anchors sampled per image for the RPN loss, <= half positive
    box_batch_size_per_image: int = param(128, ge=1)  # RoIs sampled per image for the head, 25% foreground
    roi_op: str = param("roi_align", choices=ROI_OPS)  # roi_align, or roi_pool (the paper's; whole 16-px cells)
    roi_output_size: int = param(7, ge=1)  # RoI pooling grid side (paper 7)
    representation_size: int = param(256, ge=0)  # width of the two FC layers (0: 4096 for vgg16, 1024 otherwise)
    box_score_thresh: float = param(0.05, ge=0, lt=1)  # detections below this score are dropped (max 100 kept)
    hflip: bool = True  # random horizontal flips of the training images (boxes flipped with them)
    n_train: int = param(1200, ge=1)  # embedded data: training scenes
    n_val: int = param(200, ge=1)  # embedded data: validation scenes
    n_test: int = param(300, ge=1)  # embedded data: test scenes (on held-out photographs)
    max_objects: int = param(6, ge=0, le=6)  # embedded data: at most this many objects per scene (0..6)
    val_fraction: float = param(0.1, gt=0, lt=1)  # COCO/VOC without a test list: share of train held out for val
    show_images: int = param(6, ge=0)  # test images drawn with predicted and ground-truth boxes
    show_score: float = param(0.5, ge=0, le=1)  # score threshold for the drawn predictions


@dataclass
class _Data:
    det: Any  # vislab.data.detection.DetectionData
    info: dict[str, Any]
    frozen: list[str] = field(default_factory=list)  # backbone layers frozen (set by the first variant trained)

    @property
    def label_names(self) -> list[str]:
        return self.det.label_names


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
    claims = (Claim("vislab", "torchvision", "map50", kind="equals", tol=0.01,
                    text="ours (vislab) equals torchvision on AP50 within 0.01"),)
    table_metrics = ("map", "map75", "mar100")
    curve_metrics = (*_LOSSES, "map50")

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

    def validate(self, cfg: DetectionConfig, data: str | None, root: str | None) -> None:
        """What the field constraints cannot say: an empty variant list, a backbone name timm does not know,
        frozen random layers, a missing weights file, and the data source on disk (parsed in full)."""
        from vislab.data.detection import check_detection_source

        if not cfg.variants:
            raise UserError(f"variants is empty; choose from {', '.join(VARIANTS)}")
        if cfg.backbone not in ("efficientnet_lite0", "vgg16"):
            import timm

            if cfg.backbone not in timm.list_models():
                raise UserError(f"unknown backbone {cfg.backbone!r}; use efficientnet_lite0, vgg16 or a timm CNN name")
        if cfg.freeze_stride > 0 and not cfg.pretrained:
            raise UserError(f"freeze_stride={cfg.freeze_stride} would freeze randomly initialised layers "
                            "(pretrained=false); set freeze_stride=0")
        if cfg.weights and not Path(cfg.weights).is_file():
            raise UserError(f"weights file {cfg.weights!r} does not exist")
        check_detection_source(data, root)

    # ------------------------------------------------------------------------------------------
    def load_data(self, ctx: RunContext) -> _Data:
        from vislab.data.detection import load_detection_data

        cfg: DetectionConfig = ctx.cfg
        det = load_detection_data(ctx.data, ctx.root, image_size=cfg.image_size, seed=cfg.seed,
                                  val_fraction=cfg.val_fraction, hflip=cfg.hflip,
                                  limits={"train": cfg.limit_train, "val": cfg.limit_val, "test": cfg.limit_test},
                                  scenes={"n_train": cfg.n_train, "n_val": cfg.n_val, "n_test": cfg.n_test,
                                          "max_objects": cfg.max_objects})
        counts = det.counts()
        ctx.log(f"data: {det.name}: {len(det.label_names)} classes; " + ", ".join(
            f"{k} {c['images']} images / {c['boxes']} boxes" for k, c in counts.items()))
        info = {"name": det.name, "train": len(det.train), "val": len(det.val), "test": len(det.test),
                "description": det.description, "classes": det.label_names,
                "category_ids": list(det.train.category_ids), "split_rule": det.split_rule, "counts": counts,
                "dropped_degenerate": {k: c["dropped_degenerate"] for k, c in counts.items()}}
        return _Data(det, info)

    def _module(self, cfg: DetectionConfig, data: _Data, variant: str) -> tuple[DetectionModule, list[str]]:
        seed_everything(cfg.seed)
        num_classes = len(data.label_names) + 1
        kw = model_kwargs(cfg)
        model, frozen = build_detector(variant, backbone=cfg.backbone, num_classes=num_classes, model_kw=kw,
                                       pretrained=cfg.pretrained, weights=cfg.weights, freeze_stride=cfg.freeze_stride)
        meta = {"task": "detection", "experiment": self.name, "variant": variant, "backbone": cfg.backbone,
                "num_classes": num_classes, "label_names": data.label_names,
                "category_ids": list(data.det.train.category_ids), "image_size": cfg.image_size, "model_kwargs": kw,
                "freeze_stride": cfg.freeze_stride}
        module = DetectionModule(model, class_names=data.label_names, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 lr_patience=cfg.lr_patience, lr_factor=cfg.lr_factor, meta=meta,
                                 param_groups=lambda m: param_groups(m, lr=cfg.lr,
                                                                     backbone_lr_mult=cfg.backbone_lr_mult))
        return module, frozen

    def run_variant(self, ctx: RunContext, data: _Data, variant: str) -> VariantResult:
        from vislab.data.detection import collate_fn

        cfg: DetectionConfig = ctx.cfg
        module, frozen = self._module(cfg, data, variant)
        data.frozen = frozen
        train = train_loader(data.det.train, batch_size=cfg.batch_size, seed=cfg.seed, num_workers=cfg.num_workers,
                             collate_fn=collate_fn)
        loaders = {k: eval_loader(data.det.splits[k], batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                  collate_fn=collate_fn) for k in ("val", "test")}
        stage = fit_stage(ctx, module, train, loaders["val"], variant=variant)
        device = ctx.device() if ctx.resolved_accelerator() != "cpu" else "cpu"
        evals = {}
        for split in ("val", "test"):
            module.infer_s, module.infer_images, module.last_coco = 0.0, 0, {}
            res = evaluate(module, loaders[split], device=device, desc=f"{variant}: {split}")
            evals[split] = {"full": module.last_coco, "outputs": res.outputs, "targets": res.targets,
                            "infer_ms": 1000 * module.infer_s / max(module.infer_images, 1)}
        model = module.model.cpu().eval()
        test = evals["test"]
        step_s = stage.time.get("step_ms_mean", 0.0) / 1000
        time_info = {**stage.time, "train_images_per_s": cfg.batch_size / step_s if step_s > 0 else float("nan"),
                     "infer_ms_per_image": test["infer_ms"]}
        return VariantResult(
            variant=variant, seed=cfg.seed, params=int(sum(p.numel() for p in model.parameters())),
            epochs=stage.epochs, train={k: stage.train[k] for k in ("loss", *_LOSSES) if k in stage.train},
            val={k: float(evals["val"]["full"][k]) for k in _METRICS},
            test={k: float(test["full"][k]) for k in _METRICS}, time=time_info, checkpoint=stage.best_checkpoint,
            items={"map50": Resampled(ap50_resampler(test["outputs"], test["targets"]), len(test["targets"]))},
            extra={"trainable_params": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
                   "best_epoch": stage.best_epoch, "ap50_per_class": test["full"]["ap50_per_class"],
                   "frozen_backbone_layers": frozen, "best_checkpoint": stage.best_checkpoint},
            state={"model": model, "test_outputs": test["outputs"], "test_targets": test["targets"]})

    def summary_extra(self, ctx: RunContext, data: _Data, result: Any) -> dict[str, Any]:
        cfg: DetectionConfig = ctx.cfg
        return {"settings": {"backbone": cfg.backbone, "anchor_sizes_px": list(anchor_pixels(cfg)),
                             "model_kwargs": model_kwargs(cfg), "freeze_stride": cfg.freeze_stride}}

    def load_model(self, checkpoint: Any) -> nn.Module:
        return load_detector_checkpoint(checkpoint)[0]

    # ------------------------------------------------------------------------------------------
    def describe(self, ctx: RunContext, data: _Data) -> str:
        cfg: DetectionConfig = ctx.cfg
        d, kw = data.info, model_kwargs(cfg)
        init = "ImageNet weights" if cfg.pretrained else "random init"
        return (f"Faster R-CNN on {d['name']}. Splits: {d['split_rule']}. Train {d['train']}, val {d['val']}, test "
                f"{d['test']} images; {len(d['classes'])} classes ({', '.join(d['classes'])}). Both variants: backbone "
                f"**{cfg.backbone}** ({init}, stride 16, frozen batch norms; layers frozen up to stride "
                f"{cfg.freeze_stride}: {', '.join(data.frozen) or 'none'}); images resized to {cfg.image_size}×"
                f"{cfg.image_size} (boxes with them); anchors {list(kw['anchor_sizes'])} px × ratios "
                f"{list(cfg.aspect_ratios)} ({len(kw['anchor_sizes']) * len(cfg.aspect_ratios)} per location); RPN "
                f"proposals {cfg.rpn_pre_nms_top_n_train}/{cfg.rpn_post_nms_top_n_train} (train, before/after NMS "
                f"{cfg.rpn_nms_thresh}) and {cfg.rpn_pre_nms_top_n_test}/{cfg.rpn_post_nms_top_n_test} (test); "
                f"{cfg.rpn_batch_size_per_image} anchors and {cfg.box_batch_size_per_image} RoIs sampled per image; "
                f"{cfg.roi_op} {cfg.roi_output_size}×{cfg.roi_output_size}; two FC layers of "
                f"{kw['representation_size']}. Same seed, data order and schedule per seed: AdamW lr {cfg.lr} "
                f"(trainable backbone layers ×{cfg.backbone_lr_mult:g}), batch {cfg.batch_size}, up to {cfg.epochs} "
                f"epochs, early stopping on val AP50 (patience {cfg.patience}), horizontal flips "
                f"{'on' if cfg.hflip else 'off'}. The best epoch's weights (val AP50) are evaluated with COCO metrics "
                "(pycocotools): mAP over IoU 0.5:0.95, AP at IoU 0.5 and 0.75, recall with 100 detections per image.")

    def report(self, ctx: RunContext, rep: Report, result: Any, data: _Data) -> None:
        cfg: DetectionConfig = ctx.cfg
        runs = result.summary["runs"]
        first = result.variants[result.seeds[0]]
        rep.heading("Boxes per split")
        rep.table(["split", "images", "boxes", "crowd / difficult boxes", "images without boxes",
                   "degenerate boxes dropped"],
                  [[k, c["images"], c["boxes"], c["crowd"], c["empty"], c["dropped_degenerate"]]
                   for k, c in data.info["counts"].items()],
                  caption="Crowd (COCO iscrowd, VOC difficult) boxes are not trained on and are ignored by the "
                          "evaluation; degenerate boxes (width or height below 1 px after clipping to the image) are "
                          "dropped when loading: torchvision's detectors raise on them.")
        rep.heading("Side by side")
        rep.table(["variant", "trainable params", "best epoch", "train img/s", "infer ms/img"],
                  [[v, r["trainable_params"], r["best_epoch"], sig(r["time"]["train_images_per_s"]),
                    sig(r["time"]["infer_ms_per_image"])] for v, r in runs.items()],
                  caption=f"Best epoch of seed {result.seeds[0]}; times are means over seeds. Train images/s from the "
                          "mean training step; inference ms/image from the batched test forward passes (batch "
                          f"{cfg.batch_size}, {ctx.resolved_accelerator()}).")
        rep.bullets(comparison_bullets(runs, {"map50": True, "map": True, "map75": True, "mar100": True})
                    + speed_sentences(runs) + identical_sentence(runs))
        rep.text("The curves above: the four loss components, averaged over the training batches (solid): RPN "
                 "objectness (BCE over the sampled anchors), RPN box regression (smooth L1, β = 1/9), head "
                 "classification (CE over the sampled RoIs), head box regression (smooth L1 on the foreground RoIs); "
                 "and the validation AP50 (dashed), which early stopping and the best checkpoint follow. Where the "
                 "variants agree exactly, the later line hides the earlier.")
        rep.heading("Per-class AP50 (test)")
        names = list(data.label_names)
        rep.table(["class", *runs], [[n, *[runs[v]["ap50_per_class"].get(n, -1.0) for v in runs]] for n in names],
                  caption=f"Seed {result.seeds[0]}. -1: no ground-truth box of that class in the test split.")
        if len(names) <= 40:
            rep.figure(dfig.per_class_figure(runs, names, ctx.run.figure("ap50_per_class.png")),
                       f"Test AP50 per class (seed {result.seeds[0]}).")
        self._pictures(ctx, rep, first, data)
        rep.text("Checkpoints (`vislab detect --checkpoint CKPT IMAGE...`): " + ", ".join(
            f"`{v}`: " + ", ".join(f"`{c}`" for c in r.get("checkpoints", [])) for v, r in runs.items()) + ".")

    def _pictures(self, ctx: RunContext, rep: Report, first: dict[str, VariantResult], data: _Data) -> None:
        cfg: DetectionConfig = ctx.cfg
        test = data.det.test
        show = min(cfg.show_images, len(test))
        if show:
            rep.heading("Test images")
            preds = {v: (r.state["test_outputs"], r.state["test_targets"]) for v, r in first.items()}
            path = dfig.detections_figure(preds, test, data.label_names, show, cfg.show_score,
                                          ctx.run.figure("test_detections.png"))
            rep.figure(path, f"Ground truth (top row) and the detections with score ≥ {cfg.show_score:g} of each "
                             "variant on the first test images.")
        if "vislab" in first:
            rep.heading("Inside the pipeline (ours, one test image)")
            self._pipeline_figures(ctx, rep, first["vislab"].state["model"], data)

    def _pipeline_figures(self, ctx: RunContext, rep: Report, model: nn.Module, data: _Data) -> None:
        test = data.det.test
        idx = next((i for i in range(len(test)) if len(test.target(i)["labels"]) >= 3), 0)
        image, target = test[idx]
        info = model.explain(image, _train_target(target), seed=ctx.cfg.seed)
        img = image.permute(1, 2, 0).numpy()  # (H, W, 3)
        path = dfig.anchors_figure(img, info, target, ctx.run.figure("pipeline_anchors.png"))
        rep.figure(path, f"Left: the {len(info['anchors'])} anchors of feature-map cell {info['location']} (of "
                         f"{info['feature_size'][0]}×{info['feature_size'][1]}, stride {info['stride'][0]}), centred "
                         f"on that cell; dots are the anchor centres of all cells. Right: the anchors the RPN loss "
                         f"samples for this image ({len(info['anchors_positive'])} positive, IoU ≥ 0.7 or the best for "
                         f"a box; {len(info['anchors_negative'])} negative, IoU < 0.3, {dfig.NEG_SHOWN} of them drawn "
                         "in red).")
        path = dfig.proposals_figure(img, info, target, ctx.run.figure("pipeline_proposals.png"))
        rep.figure(path, f"RPN proposals of the trained model: the {len(info['proposals_pre_nms'])} candidates "
                         f"entering NMS (left; top 150 drawn, brighter = higher objectness) and the "
                         f"{len(info['proposals'])} left after NMS at IoU {ctx.cfg.rpn_nms_thresh} and the top-n cut "
                         "(right; top 25 drawn). Ground truth in white.")
        path = dfig.rois_figure(img, info, target, ctx.run.figure("pipeline_rois.png"))
        rep.figure(path, f"The RoIs a training step samples for the head from these proposals (ground-truth boxes "
                         f"added): {len(info['rois_fg'])} foreground (IoU ≥ 0.5 with a box, green) and "
                         f"{len(info['rois_bg'])} background (IoU < 0.5, red); the ground-truth boxes dashed white.")


def identical_sentence(runs: dict[str, Any]) -> list[str]:
    """A sentence when every variant has exactly the same test metrics on every seed (the implementations
    trained identically)."""
    tests = [tuple(tuple(r["test"][k]["per_seed"]) if isinstance(r["test"].get(k), dict) else r["test"].get(k)
                   for k in _METRICS) for r in runs.values()]
    if len(tests) < 2 or len(set(tests)) > 1:
        return []
    return ["All variants give exactly the same test numbers on every seed: seed for seed, ours draws its anchor "
            "and RoI samples in torchvision's order and computes the same losses, so the two train step for step "
            "alike (the pieces are tested equal to torchvision's one by one)."]


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


def _verdict(label: str, a: str, va: float, b: str, vb: float, higher: bool, fmt: str) -> str:
    if any(isinstance(v, float) and math.isnan(v) for v in (va, vb)):
        return f"{label}: {a} {va}, {b} {vb}"
    tie = abs(va - vb) <= max(1e-3, 0.005 * max(abs(va), abs(vb)))
    if tie:
        return f"{label}: tie ({a} {fmt.format(va)}, {b} {fmt.format(vb)})"
    win, lose = (a, b) if (va > vb) == higher else (b, a)
    vw, vl = (va, vb) if win == a else (vb, va)
    return f"{label}: **{win}** {fmt.format(vw)} vs {lose} {fmt.format(vl)}"


__all__ = ["Detection", "DetectionConfig", "DetectionModule", "build_detector", "freeze_early_layers",
           "load_detector_checkpoint", "model_kwargs", "param_groups", "speed_sentences"]
