"""Experiment ``folder-classifier`` (SPEC §1): a small CNN and a pretrained fine-tune on an image folder,
side by side, with Grad-CAM overlays and the pointing game.

Data: ``--data DIR`` (one subfolder per class) or, by default, the generated five-shape folder
(``vislab.data.shapes``). The split is stratified 80/10/10, seeded, and saved as ``split.json``.
"""

from __future__ import annotations

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
from vislab.engine.config import CommonConfig
from vislab.engine.context import RunContext
from vislab.engine.fit import fit_stage, seed_everything
from vislab.engine.module import ClassificationModule, predict
from vislab.errors import UserError
from vislab.experiments.base import Experiment
from vislab.explain.gradcam import GradCAM, overlay, pointing_game
from vislab.metrics.classification import classification_report
from vislab.report import figures
from vislab.report.blocks import curves_figure, headline_sentence, run_footer, variants_table
from vislab.report.document import Report

VARIANTS = ("small_cnn", "pretrained")


@dataclass
class FolderClassifierConfig(CommonConfig):
    epochs: int = 20  # maximum epochs of the small CNN (early stopping may end sooner)
    batch_size: int = 16  # images per step (the small CNN learns from the number of steps: 16 > 32 here)
    image_size: int = 96  # images are resized to image_size × image_size
    variants: tuple[str, ...] = VARIANTS  # which models to train: small_cnn, pretrained
    backbone: str = "efficientnet_lite0"  # pretrained variant's backbone (registry name)
    pretrained: bool = True  # load the backbone's ImageNet weights (false: random init, a control)
    weights: str | None = None  # weights file for backbones without packaged weights
    small_pool: int = 1  # small CNN: last feature map max-pooled to N×N and flattened before dense128 (1 = global)
    small_lr: float | None = None  # learning rate of the small CNN (None: lr)
    pretrained_lr: float = 5e-4  # learning rate of the fine-tuned variant
    pretrained_epochs: int | None = 5  # maximum epochs of the fine-tuned variant (None: same as epochs)
    # Grad-CAM layers. "auto" picks, among the variant's candidates (shallow to deep), the one with the best
    # pointing game on the validation split (needs object boxes; without them: the default in brackets)
    cam_layer_small: str | None = "auto"  # small CNN: a layer name, auto, or None (last conv) [last conv]
    cam_layer_pretrained: str | None = "auto"  # backbone: a layer name, auto, or None [features.blocks.4]
    cam_candidates_small: tuple[str, ...] = ("features.0", "features.4", "features.8")  # the small CNN's 3 convs
    cam_candidates_pretrained: tuple[str, ...] = ("features.blocks.3", "features.blocks.4", "features.blocks.5",
                                                  "features.conv_head")  # EfficientNet-Lite0 stages
    cam_images: int = 12  # test images shown with Grad-CAM overlays
    per_class: int = 300  # embedded data: generated images per class
    augment: bool = True  # SPEC §1 augmentations on the training split


class FolderClassifier(Experiment):
    name = "folder-classifier"
    data_help = ("--data DIR: an ImageFolder directory (DIR/CLASS/*.jpg); default: generated images of "
                 "five shapes on textured backgrounds, with object boxes for the pointing game")
    Config = FolderClassifierConfig

    def validate(self, cfg: FolderClassifierConfig, data: str | None, root: str | None) -> None:
        bad = [v for v in cfg.variants if v not in VARIANTS]
        if bad or not cfg.variants:
            raise UserError(f"unknown variant {bad[0] if bad else '(none given)'!r}; valid variants: "
                            f"{', '.join(VARIANTS)}")
        for key in ("per_class", "cam_images"):
            if getattr(cfg, key) < 1:
                raise UserError(f"{key} must be >= 1, got {getattr(cfg, key)}")
        if cfg.pretrained_epochs is not None and cfg.pretrained_epochs < 1:
            raise UserError(f"pretrained_epochs must be >= 1 or none, got {cfg.pretrained_epochs}")
        if cfg.pretrained_lr <= 0:
            raise UserError(f"pretrained_lr must be > 0, got {cfg.pretrained_lr}")
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
        if quick:
            return {"epochs": 2, "pretrained_epochs": 1, "per_class": 30, "image_size": 48, "cam_images": 6}
        return {"epochs": 12, "pretrained_epochs": 3, "image_size": 64}

    # ------------------------------------------------------------------------------------------
    def run(self, ctx: RunContext) -> dict[str, Any]:
        cfg: FolderClassifierConfig = ctx.cfg
        for v in cfg.variants:
            if v not in VARIANTS:
                raise UserError(f"unknown variant {v!r}; valid variants: {', '.join(VARIANTS)}")
        if ctx.data:
            root = Path(ctx.data)
            data_name = root.name
        else:
            root = default_cache_dir() / f"shapes-{cfg.per_class}-{max(cfg.image_size, 64)}"
            if ctx.is_main:
                write_shapes_folder(root, per_class=cfg.per_class, size=max(cfg.image_size, 64), seed=0)
            data_name = "embedded-shapes"
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
        boxes = read_boxes(root)
        classes = scan.classes
        ctx.log(f"data: {data_name}: {len(classes)} classes, train {len(items['train'])}, "
                f"val {len(items['val'])}, test {len(items['test'])}")

        results: dict[str, Any] = {}
        cams: dict[str, Any] = {}
        for variant in cfg.variants:
            results[variant], cams[variant] = self._run_variant(ctx, variant, root, items, classes, boxes)

        summary = {
            "experiment": self.name,
            "data": {"name": data_name, "root": str(root), "classes": classes, "train": len(items["train"]),
                     "val": len(items["val"]), "test": len(items["test"]),
                     "skipped": [list(s) for s in scan.skipped], "ignored_non_images": scan.ignored},
            "runs": {v: r["summary"] for v, r in results.items()},
        }
        if ctx.is_main:
            self._report(ctx, summary, results, cams, items, classes, root)
        return summary

    # ------------------------------------------------------------------------------------------
    def _build(self, variant: str, num_classes: int) -> tuple[torch.nn.Module, dict[str, Any], tuple, tuple]:
        cfg = self._cfg
        if variant == "small_cnn":
            from vislab.models import create_model

            kwargs = {"num_classes": num_classes, "pool_size": cfg.small_pool}
            model = create_model("small_cnn", **kwargs)
            spec = {"kind": "registry", "name": "small_cnn", "kwargs": kwargs}
            return model, spec, IMAGENET_MEAN, IMAGENET_STD
        from vislab.models.backbones import create_classifier

        model = create_classifier(cfg.backbone, num_classes=num_classes, pretrained=cfg.pretrained,
                                  weights=cfg.weights)
        spec = {"kind": "backbone", "name": cfg.backbone, "kwargs": {"num_classes": num_classes}}
        return model, spec, model.info.mean, model.info.std

    def _run_variant(self, ctx: RunContext, variant: str, root: Path, items: dict[str, list],
                     classes: list[str], boxes: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        cfg: FolderClassifierConfig = ctx.cfg
        self._cfg = cfg
        seed_everything(cfg.seed)
        model, spec, mean, std = self._build(variant, len(classes))
        cam_layer = cfg.cam_layer_small if variant == "small_cnn" else cfg.cam_layer_pretrained
        tf_eval = eval_transform(mean, std)
        ds = {k: ImageListDataset(root, items[k], image_size=cfg.image_size, transform=tf_eval) for k in items}
        gen = torch.Generator().manual_seed(cfg.seed)
        loaders = {k: DataLoader(ds[k], batch_size=cfg.batch_size, shuffle=(k == "train"), generator=gen,
                                 num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
                   for k in ds}
        lr = cfg.pretrained_lr if variant == "pretrained" else (cfg.small_lr or cfg.lr)
        # the checkpoint's Grad-CAM layer: the default until "auto" has chosen one (written in after training)
        meta = {"task": "classification", "model": spec, "class_names": classes, "image_size": cfg.image_size,
                "mean": list(mean), "std": list(std), "variant": variant,
                "cam_layer": _default_cam_layer(variant) if cam_layer == "auto" else cam_layer}
        module = ClassificationModule(model, lr=lr, weight_decay=cfg.weight_decay, lr_patience=cfg.lr_patience,
                                      lr_factor=cfg.lr_factor, meta=meta,
                                      augment=RandomAffineBatch() if cfg.augment else None)
        epochs = cfg.pretrained_epochs if variant == "pretrained" and cfg.pretrained_epochs else cfg.epochs
        stage = fit_stage(ctx, module, loaders["train"], loaders["val"], variant=variant, epochs=epochs)
        model = module.model.cpu().eval()
        params = sum(p.numel() for p in model.parameters())

        evals = {}
        for split in ("val", "test"):
            logits, y = predict(model, loaders[split], desc=f"{variant}: {split}")
            loss = float(torch.nn.functional.cross_entropy(logits, y))
            rep = classification_report(logits, y, classes)
            evals[split] = {"loss": loss, **rep}
        best_row = _row_at(ctx.run.read_metrics(), variant, "train", stage.best_epoch)
        train = {"loss": best_row.get("train_loss"), "accuracy": best_row.get("train_accuracy")}

        # Grad-CAM layer: chosen on the validation split (pointing game), then used on the test split
        cam_layer, cam_choice = self._choose_cam_layer(ctx, model, cam_layer, variant, ds["val"], items["val"], boxes)
        if cam_choice["how"] != "given" and ctx.is_main:
            _set_checkpoint_cam_layer(stage.best_checkpoint, cam_layer)
        gc = GradCAM(model, cam_layer)
        test_ds = ds["test"]
        cam_t, pred, pointing, n_pg = _cams_and_pointing(gc, test_ds, items["test"], boxes, cfg.image_size)
        test = {k: evals["test"][k] for k in ("loss", "accuracy", "precision", "recall", "f1")}
        if pointing is not None:
            test["pointing_game"] = pointing
            test["pointing_game_n"] = n_pg
        summary = {
            "params": int(params), "epochs": stage.epochs, "best_epoch": stage.best_epoch,
            "train": train,
            "val": {k: evals["val"][k] for k in ("loss", "accuracy", "precision", "recall", "f1")},
            "test": test, "time": stage.time,
            "model": spec["name"], "pretrained": (variant == "pretrained" and cfg.pretrained),
            "weights": getattr(getattr(model, "info", None), "pretrained_source", None),
            "cam_layer": gc.layer_name, "cam_layer_choice": cam_choice, "best_checkpoint": stage.best_checkpoint,
        }
        # test images for the figure: evenly spread over the (class-sorted) test split, so every class shows
        n_show = min(cfg.cam_images, len(test_ds))
        show = np.unique(np.linspace(0, len(test_ds) - 1, n_show).round().astype(int)).tolist()
        cam_view = {"index": show, "cams": cam_t[show], "pred": pred[show], "mean": mean, "std": std,
                    "images": torch.stack([test_ds[i][0] for i in show])}
        return {"summary": summary, "evals": evals}, cam_view

    def _choose_cam_layer(self, ctx: RunContext, model: torch.nn.Module, requested: str | None, variant: str,
                          val_ds: Any, val_items: list, boxes: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        """The Grad-CAM layer: ``requested`` unless it is "auto"; then the candidate with the best pointing
        game on the validation split (a tie goes to the later, deeper candidate)."""
        cfg: FolderClassifierConfig = ctx.cfg
        if requested != "auto":
            return requested, {"how": "given"}
        fallback = _default_cam_layer(variant)
        names = dict(model.named_modules())
        wanted = cfg.cam_candidates_small if variant == "small_cnn" else cfg.cam_candidates_pretrained
        candidates = [c for c in wanted if c in names]
        if not boxes or not candidates:
            why = "no object boxes" if not boxes else "no candidate layer in this model"
            ctx.log(f"[{variant}] Grad-CAM layer: {fallback or 'last conv'} ({why} to choose by the pointing game)")
            return fallback, {"how": f"default ({why})"}
        scores = {}
        for name in candidates:
            _, _, score, n = _cams_and_pointing(GradCAM(model, name), val_ds, val_items, boxes, cfg.image_size)
            if score is not None:
                scores[name] = (score, n)
        if not scores:
            return fallback, {"how": "default (no correct validation prediction with a box)"}
        best = max(reversed(list(scores)), key=lambda k: scores[k][0])  # a tie goes to the deeper layer
        ctx.log(f"[{variant}] Grad-CAM layer {best}: pointing game on validation " + ", ".join(
            f"{k} {v[0]:.1%}" for k, v in scores.items()))
        return best, {"how": "best validation pointing game", "validation": {k: v[0] for k, v in scores.items()},
                      "validation_n": {k: v[1] for k, v in scores.items()}}

    # ------------------------------------------------------------------------------------------
    def _report(self, ctx: RunContext, summary: dict[str, Any], results: dict[str, Any], cams: dict[str, Any],
                items: dict[str, list], classes: list[str], root: Path) -> None:
        cfg: FolderClassifierConfig = ctx.cfg
        run = ctx.run
        rows = run.read_metrics()
        rep = Report(f"folder-classifier — {summary['data']['name']}")
        d = summary["data"]
        rep.text(f"{len(classes)} classes ({', '.join(classes)}); split 80/10/10 stratified with seed {cfg.seed}: "
                 f"train {d['train']}, val {d['val']}, test {d['test']} images at {cfg.image_size}×{cfg.image_size} "
                 f"px. Split manifest: `split.json`.")
        if d["skipped"]:
            rep.heading("Skipped files")
            rep.text(f"{len(d['skipped'])} file(s) with an image extension could not be decoded and were left out:")
            rep.bullets([f"`{p}` — {why}" for p, why in d["skipped"][:50]])
        if d["ignored_non_images"]:
            rep.text(f"{d['ignored_non_images']} non-image file(s) were ignored.")

        rep.heading("Results")
        rep.text(headline_sentence(summary["runs"], self.headline))

        def pointing(r: dict[str, Any]) -> str:
            t = r["test"]
            return f"{t['pointing_game']:.1%} (n={t['pointing_game_n']})" if "pointing_game" in t else "—"

        variants_table(rep, summary["runs"], ["accuracy", "f1", "loss"],
                       extra={"model": lambda r: r["model"] + (" (ImageNet)" if r["pretrained"] else ""),
                              "pointing game": pointing})
        for v, r in summary["runs"].items():
            w = r.get("weights")
            if v == "pretrained":
                rep.text(f"`{v}` backbone weights: {w}." if w else f"`{v}` backbone: random initialisation "
                         "(pretrained=false).")

        rep.heading("Learning curves")
        curves_figure(rep, rows, ["loss", "accuracy"], run.figure("curves.png"))

        rep.heading("Per-class test metrics")
        for v, r in results.items():
            pc = r["evals"]["test"]["per_class"]
            rep.table(["class", "precision", "recall", "F1", "support"],
                      [[c, m["precision"], m["recall"], m["f1"], m["support"]] for c, m in pc.items()], caption=v)
        rep.heading("Confusion matrices (test)")
        for v, r in results.items():
            cm = np.asarray(r["evals"]["test"]["confusion_matrix"])
            rep.figure(figures.plot_confusion(cm, classes, run.figure(f"confusion_{v}.png"), title=v),
                       f"{v}: rows are the true class, columns the prediction.")

        rep.heading("Grad-CAM")
        rep.text("Grad-CAM heat maps of the predicted class on test images (our implementation, checked against "
                 "pytorch-grad-cam in the tests). Title: true → predicted (red when wrong). The pointing game "
                 "counts a hit when the map's peak lies inside the object's box (correct predictions only).")
        choice_rows = []
        for v, r in summary["runs"].items():
            ch = r.get("cam_layer_choice", {})
            val = ch.get("validation", {})
            scores = ", ".join(f"`{k}` {x:.1%} (n={ch['validation_n'][k]})" for k, x in val.items()) or "—"
            test_pg = r["test"].get("pointing_game")
            choice_rows.append([v, f"`{r['cam_layer']}`", ch.get("how", "—"), scores,
                                "—" if test_pg is None else f"{test_pg:.1%}"])
        rep.table(["variant", "layer", "chosen by", "validation pointing game per candidate", "test pointing game"],
                  choice_rows, caption="The layer is chosen on the validation split; the test split only reports it.")
        for v, cv in cams.items():
            imgs, titles, colors = [], [], []
            for i in range(len(cv["images"])):
                img = denormalize(cv["images"][i], cv["mean"], cv["std"]).permute(1, 2, 0).numpy()
                imgs.append(overlay(img, cv["cams"][i]))
                t, p = items["test"][cv["index"][i]][1], int(cv["pred"][i])
                titles.append(f"{classes[t]} → {classes[p]}")
                colors.append("black" if t == p else "red")
            path = figures.image_grid(imgs, run.figure(f"gradcam_{v}.png"), titles=titles, title_colors=colors,
                                      title=f"{v} — layer {summary['runs'][v]['cam_layer']}")
            rep.figure(path, f"{v}: Grad-CAM at layer `{summary['runs'][v]['cam_layer']}`.")

        run_footer(rep, run, cfg.seed)
        rep.write(run.path)


def _default_cam_layer(variant: str) -> str | None:
    return None if variant == "small_cnn" else "features.blocks.4"  # small CNN: its last conv


def _set_checkpoint_cam_layer(path: str | Path, layer: str | None) -> None:
    """Record the chosen Grad-CAM layer in a checkpoint's metadata (atomically), for `vislab gradcam`."""
    import io

    from vislab.engine.run_dir import atomic_write_bytes

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


def _row_at(rows: list[dict[str, Any]], variant: str, stage: str, epoch: int) -> dict[str, Any]:
    for r in rows:
        if r.get("variant") == variant and r.get("stage") == stage and r.get("epoch") == epoch:
            return r
    return {}
