"""Experiment ``folder-classifier`` (SPEC §1): a small CNN and a pretrained fine-tune on an image folder,
side by side, with Grad-CAM overlays and the pointing game.

Data: ``--data DIR`` (one subfolder per class) or, by default, the generated five-shape folder
(``vislab.data.shapes``). The split is stratified 80/10/10, seeded, and saved as ``split.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from vislab.data.augment import RandomAffineBatch
from vislab.data.generated import default_cache_dir
from vislab.data.image_folder import (
    ImageListDataset,
    limit_indices,
    read_boxes,
    scan_image_folder,
    stratified_split,
    write_manifest,
)
from vislab.data.shapes import write_shapes_folder
from vislab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, eval_transform
from vislab.engine.config import CommonConfig, param
from vislab.engine.context import RunContext
from vislab.engine.fit import eval_loader, fit_stage, seed_everything, train_loader
from vislab.engine.module import ClassificationModule, predict
from vislab.errors import UserError
from vislab.experiments.base import Experiment
from vislab.explain.cams import CAM_METHODS
from vislab.explain.gradcam import GradCAM, overlay, pointing_game
from vislab.metrics.classification import classification_report
from vislab.protocol.claims import Claim
from vislab.protocol.report import sig
from vislab.protocol.results import VariantResult, format_interval
from vislab.report import figures
from vislab.report.blocks import metric_label
from vislab.report.document import Report

VARIANTS = ("small_cnn", "pretrained")
METHODS = tuple(CAM_METHODS)  # gradcam, gradcam++, hirescam, xgradcam, layercam, eigencam, scorecam, ...
_CHEAP = ("gradcam", "gradcam++", "layercam", "eigencam", "random")  # scorecam/ablationcam: a forward per channel
_SPLIT_METRICS = ("loss", "accuracy", "precision", "recall", "f1")


@dataclass
class FolderClassifierConfig(CommonConfig):
    epochs: int = param(20, ge=1)  # maximum epochs of the small CNN (early stopping may end sooner)
    batch_size: int = param(16, ge=1)  # images per step (the small CNN learns from the number of steps: 16 > 32 here)
    image_size: int = param(96, ge=8)  # images are resized to image_size × image_size
    variants: tuple[str, ...] = param(VARIANTS, choices=VARIANTS)  # which models to train: small_cnn, pretrained
    backbone: str = "efficientnet_lite0"  # pretrained variant's backbone (registry name)
    pretrained: bool = True  # load the backbone's ImageNet weights (false: random init, a control)
    weights: str | None = None  # weights file for backbones without packaged weights
    small_pool: int = param(1, ge=1)  # small CNN: last feature map max-pooled to N×N, flattened before dense128
    small_lr: float | None = param(None, gt=0)  # learning rate of the small CNN (None: lr)
    pretrained_lr: float = param(5e-4, gt=0)  # learning rate of the fine-tuned variant
    pretrained_epochs: int | None = param(5, ge=1)  # maximum epochs of the fine-tuned variant (None: same as epochs)
    # Grad-CAM layers. "auto" picks, among the variant's candidates (shallow to deep), the one with the best
    # pointing game on the validation split (needs object boxes; without them: the default in brackets)
    cam_layer_small: str | None = "auto"  # small CNN: a layer name, auto, or None (last conv) [last conv]
    cam_layer_pretrained: str | None = "auto"  # backbone: a layer name, auto, or None [features.blocks.4]
    cam_candidates_small: tuple[str, ...] = ("features.0", "features.4", "features.8")  # the small CNN's 3 convs
    cam_candidates_pretrained: tuple[str, ...] = ("features.blocks.3", "features.blocks.4", "features.blocks.5",
                                                  "features.conv_head")  # EfficientNet-Lite0 stages
    cam_images: int = param(12, ge=1)  # test images shown with Grad-CAM overlays
    explain_images: int = param(12, ge=0)  # N of those explained by every method, measured (0 = off)
    explain_methods: tuple[str, ...] = param(METHODS, choices=METHODS)  # CAM methods of the method × measure table
    explain_variants: tuple[str, ...] = param(VARIANTS, choices=VARIANTS)  # variants given that table
    per_class: int = param(300, ge=1)  # embedded data: generated images per class
    augment: bool = True  # SPEC §1 augmentations on the training split


@dataclass
class _Data:
    root: Path
    items: dict[str, list[tuple[str, int]]]  # split → [(relative path, label)]
    classes: list[str]
    boxes: dict[str, Any]  # object boxes of the generated images (pointing game); {} for a user folder
    info: dict[str, Any]


class FolderClassifier(Experiment):
    name = "folder-classifier"
    data_help = ("--data DIR: an ImageFolder directory (DIR/CLASS/*.jpg); default: generated images of "
                 "five shapes on textured backgrounds, with object boxes for the pointing game")
    Config = FolderClassifierConfig
    claims = (Claim("pretrained", "small_cnn", "accuracy"),)
    table_metrics = ("f1", "loss", "pointing_game")
    curve_metrics = ("loss", "accuracy")

    def validate(self, cfg: FolderClassifierConfig, data: str | None, root: str | None) -> None:
        """What the field constraints cannot say: an empty variant list, --root, the folder on disk, the
        backbone's weights."""
        if not cfg.variants:
            raise UserError(f"unknown variant '(none given)'; valid variants: {', '.join(VARIANTS)}")
        if root:
            raise UserError("--root is not used by folder-classifier; pass the image folder as --data DIR")
        if data:
            scan_image_folder(data, verify=False)  # folder, classes, images per class: before any work
        if "pretrained" in cfg.variants:
            from vislab.models.backbones import check_backbone

            check_backbone(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.weights)

    def demo_overrides(self, quick: bool) -> dict[str, Any]:
        # The small CNN needs data and steps, not a different model: at 64 px with 150 images per class it
        # stayed at 36% after 12 epochs (average-pooled), 75% max-pooled; 300 per class, max-pooled, SPEC
        # augmentation: 79% validation after 8 epochs and rising (measured on a loaded 2-core machine).
        # The method × measure table for the small CNN only: EfficientNet's took ~75 s per method for 2 images
        # at 64 px (load ~15). The fine-tune's validation accuracy is 0.98 after 2 epochs.
        if quick:
            return {"epochs": 2, "pretrained_epochs": 1, "per_class": 30, "image_size": 48, "cam_images": 6,
                    "explain_images": 0}
        return {"epochs": 11, "pretrained_epochs": 2, "image_size": 64, "explain_images": 6,
                "explain_methods": _CHEAP, "explain_variants": ("small_cnn",)}

    # ------------------------------------------------------------------------------------------
    def load_data(self, ctx: RunContext) -> _Data:
        cfg: FolderClassifierConfig = ctx.cfg
        if ctx.data:
            root, name = Path(ctx.data), Path(ctx.data).name
        else:
            root = default_cache_dir() / f"shapes-{cfg.per_class}-{max(cfg.image_size, 64)}"
            if ctx.is_main:
                write_shapes_folder(root, per_class=cfg.per_class, size=max(cfg.image_size, 64), seed=0)
            name = "embedded-shapes"
        scan = scan_image_folder(root)
        labels = [y for _, y in scan.items]
        split = stratified_split(labels, seed=cfg.seed)
        for key, lim in (("train", cfg.limit_train), ("val", cfg.limit_val), ("test", cfg.limit_test)):
            split[key] = limit_indices(split[key], lim, labels, cfg.seed)
        if ctx.is_main:
            write_manifest(ctx.run.path / "split.json", scan, split, seed=cfg.seed)
            if scan.skipped:
                ctx.log(f"vislab: skipped {len(scan.skipped)} unreadable image(s); see the report")
        items = {k: [scan.items[i] for i in idx] for k, idx in split.items()}
        info = {"name": name, "root": str(root), "classes": scan.classes, "train": len(items["train"]),
                "val": len(items["val"]), "test": len(items["test"]),
                "skipped": [list(s) for s in scan.skipped], "ignored_non_images": scan.ignored,
                "description": f"{len(scan.classes)} classes ({', '.join(scan.classes)}) at {cfg.image_size}×"
                               f"{cfg.image_size} px; split 80/10/10 stratified with seed {cfg.seed} (`split.json`)"}
        return _Data(root, items, scan.classes, read_boxes(root), info)

    def _build(self, cfg: FolderClassifierConfig, variant: str,
               num_classes: int) -> tuple[torch.nn.Module, dict[str, Any], tuple, tuple]:
        if variant == "small_cnn":
            from vislab.models import create_model

            kwargs = {"num_classes": num_classes, "pool_size": cfg.small_pool}
            spec = {"kind": "registry", "name": "small_cnn", "kwargs": kwargs}
            return create_model("small_cnn", **kwargs), spec, IMAGENET_MEAN, IMAGENET_STD
        from vislab.models.backbones import create_classifier

        model = create_classifier(cfg.backbone, num_classes=num_classes, pretrained=cfg.pretrained,
                                  weights=cfg.weights)
        spec = {"kind": "backbone", "name": cfg.backbone, "kwargs": {"num_classes": num_classes}}
        return model, spec, model.info.mean, model.info.std

    def run_variant(self, ctx: RunContext, data: _Data, variant: str) -> VariantResult:
        cfg: FolderClassifierConfig = ctx.cfg
        seed_everything(cfg.seed)
        model, spec, mean, std = self._build(cfg, variant, len(data.classes))
        cam_layer = cfg.cam_layer_small if variant == "small_cnn" else cfg.cam_layer_pretrained
        tf_eval = eval_transform(mean, std)
        ds = {k: ImageListDataset(data.root, data.items[k], image_size=cfg.image_size, transform=tf_eval)
              for k in data.items}
        loaders = {k: eval_loader(ds[k], batch_size=cfg.batch_size, num_workers=cfg.num_workers)
                   for k in ("val", "test")}
        train = train_loader(ds["train"], batch_size=cfg.batch_size, seed=cfg.seed, num_workers=cfg.num_workers)
        lr = cfg.pretrained_lr if variant == "pretrained" else (cfg.small_lr or cfg.lr)
        # the checkpoint's Grad-CAM layer: the default until "auto" has chosen one (written in after training)
        meta = {"task": "classification", "model": spec, "class_names": data.classes, "image_size": cfg.image_size,
                "mean": list(mean), "std": list(std), "variant": variant,
                "cam_layer": _default_cam_layer(variant) if cam_layer == "auto" else cam_layer}
        module = ClassificationModule(model, lr=lr, weight_decay=cfg.weight_decay, lr_patience=cfg.lr_patience,
                                      lr_factor=cfg.lr_factor, meta=meta,
                                      augment=RandomAffineBatch() if cfg.augment else None)
        epochs = cfg.pretrained_epochs if variant == "pretrained" and cfg.pretrained_epochs else cfg.epochs
        stage = fit_stage(ctx, module, train, loaders["val"], variant=variant, epochs=epochs)
        model = module.model.cpu().eval()
        evals, correct = {}, None
        for split in ("val", "test"):
            logits, y = predict(model, loaders[split], desc=f"{variant}: {split}")
            evals[split] = {"loss": float(torch.nn.functional.cross_entropy(logits, y)),
                            **classification_report(logits, y, data.classes)}
            correct = (logits.argmax(1) == y).numpy().astype(float)  # the test split's, after the loop
        # Grad-CAM layer: chosen on the validation split (pointing game), then used on the test split
        cam_layer, cam_choice = self._choose_cam_layer(ctx, model, cam_layer, variant, ds["val"], data)
        if cam_choice["how"] != "given" and ctx.is_main:
            _set_checkpoint_cam_layer(ctx.run.resolve(stage.best_checkpoint), cam_layer)
        gc = GradCAM(model, cam_layer)
        cam_t, pred, pointing, n_pg = _cams_and_pointing(gc, ds["test"], data.items["test"], data.boxes,
                                                         cfg.image_size)
        test = {k: evals["test"][k] for k in _SPLIT_METRICS}
        if pointing is not None:
            test.update(pointing_game=pointing, pointing_game_n=n_pg)
        return VariantResult(
            variant=variant, seed=cfg.seed, params=int(sum(p.numel() for p in model.parameters())),
            epochs=stage.epochs, train={k: stage.train[k] for k in ("loss", "accuracy") if k in stage.train},
            val={k: evals["val"][k] for k in _SPLIT_METRICS}, test=test, time=stage.time,
            checkpoint=stage.best_checkpoint, items={"accuracy": correct},
            extra={"best_epoch": stage.best_epoch, "model": spec["name"],
                   "pretrained": variant == "pretrained" and cfg.pretrained,
                   "weights": getattr(getattr(model, "info", None), "pretrained_source", None),
                   "cam_layer": gc.layer_name, "cam_layer_choice": cam_choice,
                   "best_checkpoint": stage.best_checkpoint},
            state={"model": model, "evals": evals, "cams": _cam_view(cfg, ds["test"], cam_t, pred, mean, std)})

    def _choose_cam_layer(self, ctx: RunContext, model: torch.nn.Module, requested: str | None, variant: str,
                          val_ds: Any, data: _Data) -> tuple[str | None, dict[str, Any]]:
        """The Grad-CAM layer: ``requested`` unless it is "auto"; then the candidate with the best pointing
        game on the validation split (a tie goes to the later, deeper candidate)."""
        cfg: FolderClassifierConfig = ctx.cfg
        if requested != "auto":
            return requested, {"how": "given"}
        fallback = _default_cam_layer(variant)
        names = dict(model.named_modules())
        wanted = cfg.cam_candidates_small if variant == "small_cnn" else cfg.cam_candidates_pretrained
        candidates = [c for c in wanted if c in names]
        if not data.boxes or not candidates:
            why = "no object boxes" if not data.boxes else "no candidate layer in this model"
            ctx.log(f"[{variant}] Grad-CAM layer: {fallback or 'last conv'} ({why} to choose by the pointing game)")
            return fallback, {"how": f"default ({why})"}
        scores = {}
        for name in candidates:
            _, _, score, n = _cams_and_pointing(GradCAM(model, name), val_ds, data.items["val"], data.boxes,
                                                cfg.image_size)
            if score is not None:
                scores[name] = (score, n)
        if not scores:
            return fallback, {"how": "default (no correct validation prediction with a box)"}
        best = max(reversed(list(scores)), key=lambda k: scores[k][0])  # a tie goes to the deeper layer
        ctx.log(f"[{variant}] Grad-CAM layer {best}: pointing game on validation " + ", ".join(
            f"{k} {v[0]:.1%}" for k, v in scores.items()))
        return best, {"how": "best validation pointing game", "validation": {k: v[0] for k, v in scores.items()},
                      "validation_n": {k: v[1] for k, v in scores.items()}}

    def summary_extra(self, ctx: RunContext, data: _Data, result: Any) -> dict[str, Any]:
        """``{"explanations": {variant: {"layer", "test_images", "seconds", "methods": {method: {measure: {"mean",
        "ci95", "per_image"}}}}}}``: every CAM method on a few test images (the first seed's models)."""
        from vislab.explain.evaluate import summarise_intervals

        cfg: FolderClassifierConfig = ctx.cfg
        if not cfg.explain_images or not cfg.explain_methods:
            return {}
        out = {}
        for v, r in result.variants[result.seeds[0]].items():
            if v not in cfg.explain_variants:
                continue
            t0 = time.perf_counter()
            table, idx = _explain(cfg, r, data)
            seconds = time.perf_counter() - t0
            r.state["explain"] = (table, idx)
            out[v] = {"layer": table["layer"], "test_images": idx, "seconds": seconds,
                      "methods": summarise_intervals(table)}
            ctx.log(f"[{v}] {len(table['methods'])} explanation methods on {len(idx)} test images: {seconds:.1f} s")
        return {"explanations": out}

    def load_model(self, checkpoint: Any) -> torch.nn.Module:
        from vislab.explain.cli import load_classifier

        return load_classifier(checkpoint)[0]

    # ------------------------------------------------------------------------------------------
    def describe(self, ctx: RunContext, data: _Data) -> str:
        cfg: FolderClassifierConfig = ctx.cfg
        init = "ImageNet weights" if cfg.pretrained else "random initialisation, a control"
        return (f"Image classification on {data.info['name']} ({len(data.classes)} classes, {cfg.image_size}×"
                f"{cfg.image_size} px): a small CNN trained from scratch (AdamW lr {cfg.small_lr or cfg.lr}, up to "
                f"{cfg.epochs} epochs) against {cfg.backbone} fine-tuned from {init} (lr {cfg.pretrained_lr}, up to "
                f"{cfg.pretrained_epochs or cfg.epochs} epochs); same split, data order per seed, batch "
                f"{cfg.batch_size}, early stopping patience {cfg.patience}, SPEC §1 augmentation "
                f"{'on' if cfg.augment else 'off'}. The best epoch's weights (validation loss) are evaluated.")

    def report(self, ctx: RunContext, rep: Report, result: Any, data: _Data) -> None:
        runs, first = result.summary["runs"], result.variants[result.seeds[0]]
        d = data.info
        if d["skipped"]:
            rep.heading("Skipped files")
            rep.text(f"{len(d['skipped'])} file(s) with an image extension could not be decoded and were left out:")
            rep.bullets([f"`{p}` — {why}" for p, why in d["skipped"][:50]])
        if d["ignored_non_images"]:
            rep.text(f"{d['ignored_non_images']} non-image file(s) were ignored.")
        rep.heading("Models")
        rep.bullets([f"`{v}`: {r['model']}" + (f", backbone weights: {r['weights']}" if r.get("weights") else
                                               ", random initialisation (pretrained=false)" if v == "pretrained"
                                               else ", trained from scratch") + f"; best epoch {r['best_epoch']}."
                     for v, r in runs.items()])
        rep.heading("Per-class test metrics")
        for v, r in first.items():
            pc = r.state["evals"]["test"]["per_class"]
            rep.table(["class", "precision", "recall", "F1", "support"],
                      [[c, m["precision"], m["recall"], m["f1"], m["support"]] for c, m in pc.items()],
                      caption=f"{v}, seed {result.seeds[0]}")
        rep.heading("Confusion matrices (test)")
        for v, r in first.items():
            cm = np.asarray(r.state["evals"]["test"]["confusion_matrix"])
            rep.figure(figures.plot_confusion(cm, data.classes, ctx.run.figure(f"confusion_{v}.png"), title=v),
                       f"{v} (seed {result.seeds[0]}): rows are the true class, columns the prediction.")
        self._gradcam_section(ctx, rep, result, data)

    def _gradcam_section(self, ctx: RunContext, rep: Report, result: Any, data: _Data) -> None:
        runs, first = result.summary["runs"], result.variants[result.seeds[0]]
        rep.heading("Grad-CAM")
        rep.text("Grad-CAM heat maps of the predicted class on test images (our implementation, checked against "
                 "pytorch-grad-cam in the tests). Title: true → predicted (red when wrong). The pointing game "
                 "counts a hit when the map's peak lies inside the object's box (correct predictions only).")
        rows = []
        for v, r in runs.items():
            ch = r.get("cam_layer_choice", {})
            scores = ", ".join(f"`{k}` {x:.1%} (n={ch['validation_n'][k]})"
                               for k, x in ch.get("validation", {}).items()) or "—"
            pg = r["test"].get("pointing_game")
            n = r["test"].get("pointing_game_n")
            rows.append([v, f"`{r['cam_layer']}`", ch.get("how", "—"), scores,
                         "—" if pg is None else f"{pg['mean']:.1%} (n={n['mean']:.0f})"])
        rep.table(["variant", "layer", "chosen by", "validation pointing game per candidate", "test pointing game"],
                  rows, caption=f"The layer is chosen on the validation split (seed {result.seeds[0]}); the test "
                                "split only reports it (mean over seeds).")
        for v, r in first.items():
            cv = r.state["cams"]
            imgs, titles, colors = [], [], []
            for i in range(len(cv["images"])):
                img = denormalize(cv["images"][i], cv["mean"], cv["std"]).permute(1, 2, 0).numpy()
                imgs.append(overlay(img, cv["cams"][i]))
                t, p = data.items["test"][cv["index"][i]][1], int(cv["pred"][i])
                titles.append(f"{data.classes[t]} → {data.classes[p]}")
                colors.append("black" if t == p else "red")
            path = figures.image_grid(imgs, ctx.run.figure(f"gradcam_{v}.png"), titles=titles, title_colors=colors,
                                      title=f"{v} — layer {runs[v]['cam_layer']}")
            rep.figure(path, f"{v}: Grad-CAM at layer `{runs[v]['cam_layer']}`.")
        self._explanations_section(ctx, rep, result, data)

    def _explanations_section(self, ctx: RunContext, rep: Report, result: Any, data: _Data) -> None:
        from vislab.explain.evaluate import BETTER, MEASURES, methods_figure

        ex, first = result.summary.get("explanations") or {}, result.variants[result.seeds[0]]
        if not ex:
            return
        rep.heading("Explanation methods compared")
        rep.text("Every CAM method explains the predicted class of the same test images at the same layer. Pointing "
                 "game: the map's peak lies in the object's box; deletion / insertion AUC: the class probability as "
                 "the most salient pixels are blurred away / revealed first; ROAD: (LeRF − MoRF) / 2 of the logit "
                 "with noisy linear imputation; sanity: Spearman correlation with the map of the network whose "
                 "layers above the explained one are re-initialised (a map that ignores the weights stays near 1; "
                 "passed: below 0.5); `random` is the baseline every method should beat. Mean ± half-width of the "
                 "95 % t-interval over the images (few images: wide intervals).")
        for v, e in ex.items():
            measures = [k for k in MEASURES if any(m.get(k) is not None for m in e["methods"].values())]
            rows = [[f"`{m}`", *[sig(row[k]) if k == "ms_per_image" else format_interval(row[k]) if row.get(k)
                                 else "—" for k in measures],
                     f"{row['sanity_passed']['mean']:.0%}" if row.get("sanity_passed") else "—"]
                    for m, row in e["methods"].items()]
            rep.table(["method", *[f"{metric_label(k)} ({BETTER[k]})" for k in measures], "sanity passed"], rows,
                      caption=f"{v}, layer `{e['layer']}`, {len(e['test_images'])} test images (seed "
                              f"{result.seeds[0]}); the table took {sig(e['seconds'])} s on this run's machine.")
            table, idx = first[v].state.get("explain", (None, None))
            if table is None:
                continue
            cv = first[v].state["cams"]
            pos = [cv["index"].index(i) for i in idx]
            imgs = [denormalize(cv["images"][k], cv["mean"], cv["std"]).permute(1, 2, 0).numpy() for k in pos]
            titles = [f"{data.classes[data.items['test'][i][1]]} (test {i})" for i in idx]
            path = methods_figure(imgs, table["cams"], ctx.run.figure(f"explain_methods_{v}.jpg"), row_titles=titles)
            rep.figure(path, f"{v}: the same test images under every method (true class over each row).")


def _explain(cfg: FolderClassifierConfig, r: VariantResult, data: _Data) -> tuple[dict[str, Any], list[int]]:
    """``explanation_table`` of one trained variant on ``explain_images`` of the Grad-CAM figure's test images
    (spread over them, so several classes show), with their object boxes when every one has a box."""
    from vislab.explain.evaluate import explanation_table

    cv = r.state["cams"]
    n = min(cfg.explain_images, len(cv["index"]))
    pos = np.unique(np.linspace(0, len(cv["index"]) - 1, n).round().astype(int)).tolist()
    idx = [cv["index"][k] for k in pos]
    rels = [data.items["test"][i][0] for i in idx]
    boxes = None
    if data.boxes and all(rel in data.boxes for rel in rels):
        bw, bh = data.boxes.get("_image_size", [cfg.image_size, cfg.image_size])
        sx, sy = cfg.image_size / bw, cfg.image_size / bh
        boxes = [[x0 * sx, y0 * sy, x1 * sx, y1 * sy] for x0, y0, x1, y1 in (data.boxes[rel] for rel in rels)]
    table = explanation_table(r.state["model"], r.extra["cam_layer"], cv["images"][pos], None, boxes,
                              methods=list(cfg.explain_methods), seed=cfg.seed)
    return table, idx


def _default_cam_layer(variant: str) -> str | None:
    return None if variant == "small_cnn" else "features.blocks.4"  # small CNN: its last conv


def _cam_view(cfg: FolderClassifierConfig, test_ds: Any, cam_t: torch.Tensor, pred: torch.Tensor, mean: Any,
              std: Any) -> dict[str, Any]:
    """The test images of the Grad-CAM figure: evenly spread over the (class-sorted) test split, so every
    class shows."""
    n_show = min(cfg.cam_images, len(test_ds))
    show = np.unique(np.linspace(0, len(test_ds) - 1, n_show).round().astype(int)).tolist()
    return {"index": show, "cams": cam_t[show], "pred": pred[show], "mean": mean, "std": std,
            "images": torch.stack([test_ds[i][0] for i in show])}


def _set_checkpoint_cam_layer(path: str | Path, layer: str | None) -> None:
    """Record the chosen Grad-CAM layer in a checkpoint's metadata (atomically), for `vislab gradcam`."""
    import io

    from vislab.io.files import atomic_write_bytes

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("vislab", {}).get("cam_layer") == layer:
        return
    ckpt.setdefault("vislab", {})["cam_layer"] = layer
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def _cams_and_pointing(gc: GradCAM, ds: Any, items: list, boxes: dict[str, Any],
                       image_size: int) -> tuple[torch.Tensor, torch.Tensor, float | None, int]:
    """Grad-CAM maps and predictions for a whole split (batched), and the pointing game over its
    correct predictions that have an object box: ``(cams, preds, score or None, n)``."""
    cams, logits = [], []
    for xb, _ in DataLoader(ds, batch_size=32):
        c, lg = gc(xb)
        cams.append(c)
        logits.append(lg)
    cam_t, pred = torch.cat(cams), torch.cat(logits).argmax(1)
    hits = []
    if boxes:
        bw, bh = boxes.get("_image_size", [image_size, image_size])
        sx, sy = image_size / bw, image_size / bh
        for i, (rel, y) in enumerate(items):
            if rel in boxes and int(pred[i]) == y:
                x0, y0, x1, y1 = boxes[rel]
                hits.append(pointing_game(cam_t[i:i + 1], [(x0 * sx, y0 * sy, x1 * sx, y1 * sy)])[0])
    return cam_t, pred, (float(np.mean(hits)) if hits else None), len(hits)
