"""Experiment ``deform-vs-conv`` (SPEC §4): the same network with regular convolutions, deformable
convolutions everywhere, and deformable convolutions in the first two layers only; same data, seed
and schedule; accuracy, precision/recall/F1, mAP and running time side by side.

Data: by default the embedded digit canvases (real handwritten digits from scikit-learn, rotated,
scaled, several per canvas on clutter; labels = digits present); ``--data coco --root DIR`` for
MS COCO multi-label classification (80 categories).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from vislab.engine.config import CommonConfig
from vislab.engine.context import RunContext
from vislab.engine.fit import eval_loader, fit_stage, seed_everything, train_loader
from vislab.engine.module import MultiLabelModule, predict
from vislab.errors import UserError
from vislab.experiments.base import Experiment
from vislab.metrics.multilabel import multilabel_metrics
from vislab.protocol.claims import Claim
from vislab.protocol.results import Resampled, VariantResult, format_interval
from vislab.report import figures
from vislab.report.blocks import comparison_bullets, metric_value, variants_table
from vislab.report.document import Report

VARIANTS = ("regular", "deform-all", "deform-first2")
_METRICS = ("loss", "accuracy", "label_accuracy", "precision_micro", "recall_micro", "f1_micro",
            "precision_macro", "recall_macro", "f1_macro", "map")


@dataclass
class DeformVsConvConfig(CommonConfig):
    epochs: int = 10  # maximum epochs per variant (early stopping may end sooner)
    batch_size: int = 64  # canvases per step
    lr: float = 2e-3  # AdamW learning rate of the network
    image_size: int = 64  # canvas side (digits) or resize side (COCO), pixels
    variants: tuple[str, ...] = VARIANTS  # regular, deform-all, deform-first2
    widths: tuple[int, ...] = (16, 32, 64, 128, 128)  # channels of the 5 conv stages (2,2,2,2,3 convs)
    dropout: float = 0.2  # dropout before the last two dense layers
    precise_bn: int = 16  # recompute BatchNorm statistics over this many training batches before validation (0 = off)
    global_pool: str = "max"  # pooling of the last feature map before the dense layers: max (presence) or avg
    offset_lr_mult: float = 0.1  # offset/mask predictors learn at lr × this (DCN papers: 0.1)
    modulated: bool = True  # deformable v2 (learned mask) instead of v1
    n_train: int = 3000  # embedded data: training canvases
    n_val: int = 500  # embedded data: validation canvases
    n_test: int = 1000  # embedded data: test canvases (from held-out digit scans)
    max_rotation: float = 45.0  # embedded data: digit rotation range, degrees
    digit_size: tuple[float, ...] = (14.0, 26.0)  # embedded data: (min, max) digit side in pixels
    digits_per_canvas: tuple[int, ...] = (1, 3)  # embedded data: (min, max) distinct digits per canvas
    clutter: float = 0.5  # embedded data: background clutter in [0, 1] (0 = clean background)
    coco_keep_empty: bool = True  # COCO: keep images without annotations as all-negative
    coco_val_fraction: float = 0.1  # COCO: share of train2017 images held out for validation (val2017 = test)
    sampling_images: int = 3  # test images shown with learned sampling locations


@dataclass
class _Data:
    splits: dict[str, Any]
    label_names: list[str]
    in_channels: int
    info: dict[str, Any]

    def __post_init__(self) -> None:
        self.info.update({k: len(v) for k, v in self.splits.items()}, labels=self.label_names)


class DeformVsConv(Experiment):
    name = "deform-vs-conv"
    data_help = ("default: digit canvases (real handwritten digits from scikit-learn, rotated/scaled, several per "
                 "canvas); --data coco --root DIR: MS COCO 2017 multi-label (80 categories) via pycocotools, "
                 "limit sizes with --set limit_train=N limit_test=N")
    Config = DeformVsConvConfig
    claims = (Claim("deform-all", "regular", "map"), Claim("deform-first2", "regular", "map"))
    table_metrics = ("accuracy", "f1_micro")
    curve_metrics = ("loss", "f1_micro", "map")

    def demo_overrides(self, quick: bool) -> dict[str, Any]:
        # The demo's share of its 10-minute budget on 2 CPU cores (about 3 minutes): 32-pixel canvases with
        # 1-2 digits, no dropout, 4 epochs of 2000. Measured (seed 0): test mAP 0.44 regular, 0.57 deform-all,
        # 0.42 deform-first2 (chance about 0.15-0.2), 160 s; 48-pixel canvases at 2 epochs of 768 stayed at
        # chance (the network memorised them: train mAP 1.0, val 0.27). The full default needs ~10 epochs of 3000.
        easy = {"image_size": 32, "digit_size": (10.0, 16.0), "digits_per_canvas": (1, 2), "max_rotation": 30.0,
                "clutter": 0.25, "dropout": 0.0, "batch_size": 32}
        if quick:
            return {**easy, "epochs": 1, "n_train": 256, "n_val": 64, "n_test": 128, "widths": (8, 16, 16, 32, 32),
                    "sampling_images": 1, "precise_bn": 4}
        return {**easy, "epochs": 4, "n_train": 2000, "n_val": 256, "n_test": 512, "widths": (8, 16, 32, 64, 64),
                "sampling_images": 2, "precise_bn": 8}

    def validate(self, cfg: DeformVsConvConfig, data: str | None, root: str | None) -> None:
        bad = [v for v in cfg.variants if v not in VARIANTS]
        if bad or not cfg.variants:
            raise UserError(f"unknown variant {bad[0] if bad else '(none given)'!r}; valid variants: "
                            f"{', '.join(VARIANTS)}")
        if len(cfg.widths) != 5 or any(w < 1 for w in cfg.widths):
            raise UserError(f"widths must list 5 positive stage widths (the network has 5 conv stages), got "
                            f"{cfg.widths}")
        if cfg.image_size < 16:
            raise UserError(f"image_size must be >= 16 (four 2x2 max-pools), got {cfg.image_size}")
        if cfg.global_pool not in ("max", "avg"):
            raise UserError(f"global_pool must be max or avg, got {cfg.global_pool!r}")
        for key in ("n_train", "n_val", "n_test"):
            if getattr(cfg, key) < 1:
                raise UserError(f"{key} must be >= 1, got {getattr(cfg, key)}")
        if not 0 <= cfg.dropout < 1:
            raise UserError(f"dropout must lie in [0, 1), got {cfg.dropout}")
        if data in (None, "digits"):
            if len(cfg.digit_size) != 2:
                raise UserError(f"digit_size must be two numbers MIN,MAX, got {cfg.digit_size}")
            if len(cfg.digits_per_canvas) != 2 or not 1 <= cfg.digits_per_canvas[0] <= cfg.digits_per_canvas[1] <= 10:
                raise UserError(f"digits_per_canvas must be two integers MIN,MAX with 1 <= MIN <= MAX <= 10, got "
                                f"{cfg.digits_per_canvas}")
        elif data == "coco":
            if not root:
                raise UserError("--data coco needs --root DIR (with annotations/instances_{train,val}2017.json)")
            for split in ("train", "val"):
                ann = Path(root) / "annotations" / f"instances_{split}2017.json"
                if not ann.exists():
                    raise UserError(f"--data coco: {ann} not found; expected annotations/instances_{{train,val}}2017"
                                    ".json under --root")
            from vislab.data.coco_multilabel import scan_coco_multilabel

            scan_coco_multilabel(root)  # parse, categories, boxes, image files: before the run folder exists
        else:
            raise UserError(f"unknown --data {data!r} for deform-vs-conv; expected 'digits' (default) or 'coco'")

    # ------------------------------------------------------------------------------------------
    def load_data(self, ctx: RunContext) -> _Data:
        cfg: DeformVsConvConfig = ctx.cfg
        if ctx.data in (None, "digits"):
            from vislab.data.digit_canvases import DigitCanvasDataset

            kw = {"canvas_size": cfg.image_size, "max_rotation": cfg.max_rotation,
                  "digit_size": tuple(cfg.digit_size), "digits_per_canvas": tuple(cfg.digits_per_canvas),
                  "clutter": cfg.clutter}
            sizes = {"train": cfg.limit_train or cfg.n_train, "val": cfg.limit_val or cfg.n_val,
                     "test": cfg.limit_test or cfg.n_test}
            ds = {k: DigitCanvasDataset(n, seed=cfg.seed, split=k, channels=1, **kw) for k, n in sizes.items()}
            lo, hi = cfg.digits_per_canvas
            count = f"{lo}" if lo == hi else f"{lo}–{hi}"
            info = {"name": "digit-canvases", "description": f"scikit-learn handwritten digits on {cfg.image_size}×"
                    f"{cfg.image_size} canvases, {count} distinct digits each, {cfg.digit_size[0]:g}–"
                    f"{cfg.digit_size[1]:g} px, rotated by up to ±{cfg.max_rotation:g}°, on stroke clutter "
                    f"{cfg.clutter:g}; test canvases use held-out scans"}
            return _Data(ds, list(ds["train"].label_names), 1, info)
        from vislab.data.coco_multilabel import CocoMultiLabel

        try:
            full = CocoMultiLabel(ctx.root, "train", image_size=cfg.image_size, keep_empty=cfg.coco_keep_empty,
                                  seed=cfg.seed)
            test = CocoMultiLabel(ctx.root, "val", image_size=cfg.image_size, keep_empty=cfg.coco_keep_empty,
                                  limit=cfg.limit_test, seed=cfg.seed)
        except FileNotFoundError as exc:
            raise UserError(str(exc).splitlines()[0]) from None
        rng = np.random.default_rng(cfg.seed)
        order = rng.permutation(len(full))
        n_val = max(1, int(round(cfg.coco_val_fraction * len(full))))
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        if cfg.limit_train:
            train_idx = train_idx[:cfg.limit_train]
        if cfg.limit_val:
            val_idx = val_idx[:cfg.limit_val]
        ds = {"train": Subset(full, train_idx.tolist()), "val": Subset(full, val_idx.tolist()), "test": test}
        info = {"name": "coco-2017", "description": f"MS COCO 2017 from {ctx.root}: train2017 split into train/val "
                f"({cfg.coco_val_fraction:.0%} val), val2017 as test; 80 labels from the 90 sparse category ids",
                "category_ids": list(full.category_ids)}
        return _Data(ds, list(full.label_names), 3, info)

    def _build(self, cfg: DeformVsConvConfig, variant: str, in_channels: int, num_classes: int) -> torch.nn.Module:
        from vislab.layers import convert_to_deformable
        from vislab.models import create_model
        from vislab.models.encoder_cnn import conv_names

        model = create_model("encoder_cnn", in_channels=in_channels, num_classes=num_classes, widths=cfg.widths,
                             pool=cfg.global_pool, dropout=cfg.dropout)
        names = conv_names(model)
        if variant == "deform-all":
            convert_to_deformable(model, names, modulated=cfg.modulated)
        elif variant == "deform-first2":
            convert_to_deformable(model, names[:2], modulated=cfg.modulated)
        return model

    def run_variant(self, ctx: RunContext, data: _Data, variant: str) -> VariantResult:
        from vislab.layers import deformable_param_groups

        cfg: DeformVsConvConfig = ctx.cfg
        seed_everything(cfg.seed)
        model = self._build(cfg, variant, data.in_channels, len(data.label_names))
        loaders = {k: eval_loader(data.splits[k], batch_size=cfg.batch_size, num_workers=cfg.num_workers)
                   for k in ("val", "test")}
        train = train_loader(data.splits["train"], batch_size=cfg.batch_size, seed=cfg.seed,
                             num_workers=cfg.num_workers)
        module = MultiLabelModule(
            model, lr=cfg.lr, weight_decay=cfg.weight_decay, lr_patience=cfg.lr_patience, lr_factor=cfg.lr_factor,
            param_groups=lambda m: deformable_param_groups(m, lr=cfg.lr, offset_lr_mult=cfg.offset_lr_mult),
            meta={"task": "multilabel", "variant": variant, "label_names": data.label_names,
                  "build": {"in_channels": data.in_channels,
                            "cfg": {"widths": list(cfg.widths), "global_pool": cfg.global_pool,
                                    "dropout": cfg.dropout, "modulated": cfg.modulated}}})
        stage = fit_stage(ctx, module, train, loaders["val"], variant=variant)
        model = module.model.cpu().eval()
        evals = {}
        for split in ("val", "test"):
            t0 = time.perf_counter()
            logits, y = predict(model, loaders[split], desc=f"{variant}: {split}")
            infer_ms = (time.perf_counter() - t0) * 1000 / max(len(y), 1)
            m = multilabel_metrics(logits, y, from_logits=True)
            m["loss"] = float(torch.nn.functional.binary_cross_entropy_with_logits(logits, y.float()))
            evals[split] = (m, infer_ms, logits, y)
        m_test, infer_ms, logits, y = evals["test"]
        scores, labels = logits.sigmoid().numpy(), y.numpy()
        return VariantResult(
            variant=variant, seed=cfg.seed, params=sum(p.numel() for p in model.parameters()), epochs=stage.epochs,
            train={k: stage.train[k] for k in _METRICS if k in stage.train},
            val={k: _num(evals["val"][0][k]) for k in _METRICS}, test={k: _num(m_test[k]) for k in _METRICS},
            time={**stage.time, "infer_ms_per_image": infer_ms}, checkpoint=stage.best_checkpoint,
            items={"map": Resampled(lambda idx: multilabel_metrics(scores[idx], labels[idx])["map"], len(labels)),
                   "accuracy": (scores > 0.5).astype(np.int64).__eq__(labels).all(1).astype(float)},
            extra={"best_epoch": stage.best_epoch,
                   "deformable_layers": [n for n, mod in model.named_modules()
                                         if type(mod).__name__ == "DeformableConv2d"]},
            state={"model": model})

    # ------------------------------------------------------------------------------------------
    def describe(self, ctx: RunContext, data: _Data) -> str:
        cfg: DeformVsConvConfig = ctx.cfg
        return (f"{data.info['description']}; {len(data.label_names)} labels. Same network (EncoderCNN: 11 3×3 "
                f"convs in 5 stages of widths {list(cfg.widths)}, 4 max-pools, 3 dense layers), same data order and "
                f"schedule per seed (AdamW lr {cfg.lr}, up to {cfg.epochs} epochs, early stopping patience "
                f"{cfg.patience}, batch {cfg.batch_size}, dropout {cfg.dropout:g}, global {cfg.global_pool} pool); "
                f"deformable layers are v{2 if cfg.modulated else 1} with offsets learning at {cfg.offset_lr_mult}× "
                "the rate. Loss: BCE-with-logits; thresholds 0.5. "
                + (f"BatchNorm statistics are recomputed over {cfg.precise_bn} training batches before every "
                   "validation (precise BN), so validation and test see statistics of the current weights."
                   if cfg.precise_bn else "BatchNorm statistics: the running averages of training."))

    def report(self, ctx: RunContext, rep: Report, result: Any, data: _Data) -> None:
        cfg: DeformVsConvConfig = ctx.cfg
        runs = result.summary["runs"]
        rep.heading("More metrics (test)")
        variants_table(rep, runs, ["loss", "label_accuracy", "precision_micro", "recall_micro", "f1_micro", "f1_macro"],
                       time=False, caption="Means over seeds. `accuracy` is the exact-match accuracy (every label "
                       "right); the headline is mAP.")
        rep.table(["variant", "train loss", "train exact match", "train F1 micro", "train mAP", "val mAP"],
                  [[v, *(format_interval(r["train"][k]) if k in r["train"] else "—"
                         for k in ("loss", "accuracy", "f1_micro", "map")),
                    format_interval(r["val"]["map"])] for v, r in runs.items()],
                  caption="Train metrics are those of the best epoch, accumulated over that epoch's training batches "
                          "(weights changing, dropout on); val is computed afterwards with the best weights.")
        rep.heading("What the numbers say")
        rep.bullets(comparison_sentences(runs))
        rep.figure(figures.plot_bars({v: r["time"]["step_ms_mean"] for v, r in runs.items()},
                                     ctx.run.figure("time_step.png"), ylabel="ms per training step",
                                     title=f"training step (batch {cfg.batch_size})", fmt="{:.1f}"),
                   "Mean wall time of a training step (forward, backward, optimiser).")
        rep.figure(figures.plot_bars({v: r["time"]["infer_ms_per_image"] for v, r in runs.items()},
                                     ctx.run.figure("time_infer.png"), ylabel="ms per image", title="inference",
                                     fmt="{:.2f}"),
                   "Inference time per test image (batched, CPU).")
        first = result.variants[result.seeds[0]]
        deform = [v for v in runs if v != "regular" and runs[v]["deformable_layers"]]
        if deform:
            rep.heading("Where the deformable layers sample")
            rep.text("Sampling locations of the first two deformable layers for a few output pixels on test images "
                     "(DCN Figure 1 style): left, the 9×9 grid two plain 3×3 convolutions read; right, the learned "
                     f"locations (red; opacity = modulation) chained through both layers. Seed {result.seeds[0]}.")
            for v in deform:
                self._sampling_figures(ctx, rep, v, first[v].state["model"], runs[v]["deformable_layers"][:2],
                                       data.splits["test"])
        if data.info.get("category_ids"):
            rep.text("COCO label mapping (index: category id name): " + ", ".join(
                f"{i}: {cid} {n}" for i, (cid, n) in enumerate(zip(data.info["category_ids"], data.label_names))))

    def load_model(self, checkpoint: Any) -> torch.nn.Module:
        from vislab.io.checkpoint import model_state, read_checkpoint

        ckpt, meta = read_checkpoint(checkpoint, "multilabel", what="a deform-vs-conv run")
        build = meta.get("build")
        if not build:
            raise UserError(f"{checkpoint} does not record how to rebuild its network")
        cfg = DeformVsConvConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in build["cfg"].items()})
        model = self._build(cfg, meta["variant"], build["in_channels"], len(meta["label_names"]))
        model.load_state_dict(model_state(ckpt))
        return model.eval()

    def _sampling_figures(self, ctx: RunContext, rep: Report, variant: str, model: torch.nn.Module,
                          layers: list[str], test: Any) -> None:
        from vislab.explain.deform_sampling import plot_deform_sampling
        from vislab.report.figures import save_figure

        cfg: DeformVsConvConfig = ctx.cfg
        for i in range(min(cfg.sampling_images, len(test))):
            x, y = test[i]
            H, W = x.shape[-2:]
            points = [(W * 0.3, H * 0.3), (W * 0.5, H * 0.5), (W * 0.7, H * 0.65)]
            present = ", ".join(str(k) for k in np.flatnonzero(np.asarray(y) > 0.5))
            fig = plot_deform_sampling(model, x, points, layers=layers,
                                       title=f"{variant} — test image {i} (labels: {present})")
            path = save_figure(fig, ctx.run.figure(f"sampling_{variant}_{i}.png"))
            rep.figure(path, f"{variant}: sampling locations, test image {i}.")


def comparison_sentences(runs: dict[str, Any]) -> list[str]:
    """Plain statements of who won on what, with the numbers (nothing the numbers do not support): the shared
    per-metric winners, then each deformable variant against the regular network."""
    out = comparison_bullets(runs, {"map": True, "f1_micro": True, "accuracy": True, "loss": False})
    if "regular" in runs:
        base = runs["regular"]
        for v in runs:
            if v == "regular":
                continue
            d = metric_value(runs[v], "test", "map") - metric_value(base, "test", "map")
            slow = runs[v]["time"]["step_ms_mean"] / max(base["time"]["step_ms_mean"], 1e-9)
            verdict = "higher" if d > 0 else "lower" if d < 0 else "equal"
            out.append(f"{v} vs regular: mean mAP {d:+.4f} ({verdict}), training step {slow:.2f}× the time, "
                       f"{runs[v]['params'] - base['params']:+,} parameters; whether the difference is shown is the "
                       "claims table's verdict.")
    return out


def _num(v: Any) -> Any:
    return float(v) if isinstance(v, (int, float, np.floating)) else v
