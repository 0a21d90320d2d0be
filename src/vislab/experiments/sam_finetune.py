"""Experiment ``sam-finetune`` (SPEC §8): SAM's mask decoder fine-tuned on a frozen encoder (offline
EfficientNet-Lite0 or the official SAM, ``vislab.models.sam``) over an embedding cache (``vislab.data.sam_prompts``),
with box, point or mixed prompts (``vislab.engine.tasks.sam_decoder``). Rows on the same test boxes: ``finetuned``,
``zero_shot`` (official SAM or ``init``), ``box`` and ``grabcut``; then the prompt table, NoC@85/90 and IoU against
clicks (``vislab.models.sam_clicks``). Data: ``--data DIR`` (``images/`` + ``masks/``) or generated scenes.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from vislab.data.masks import PROMPT_MODES, JointAugment, MaskFolder, jitter_for_size
from vislab.data.sam_prompts import FixedPrompts, PromptViews, TrainPrompts, build_views
from vislab.engine.config import CommonConfig, param
from vislab.engine.context import RunContext
from vislab.engine.fit import eval_loader, fit_stage, seed_everything, train_loader
from vislab.engine.module import evaluate
from vislab.engine.tasks.sam_decoder import PROMPT_TRAINING, SamDecoderTask, cache_summary, time_epochs
from vislab.errors import UserError
from vislab.experiments.base import Experiment
from vislab.metrics.segmentation import dice, iou
from vislab.models.sam import MODEL_TYPES, SAM_CHECKPOINT_URLS, BoxPromptSam
from vislab.protocol.claims import Claim
from vislab.protocol.results import VariantResult
from vislab.report.blocks import metric_value

SHAPE_ORDER = ("ring", "band", "blob", "star")


def prompt_encoder_trained(cfg: SamFinetuneConfig) -> bool:
    """Whether the prompt encoder trains with the decoder. ``auto``: only when it is newly initialised (the
    offline model without ``init``) and the prompts are points or mixed: its point-label embeddings and the
    mask prompt's downscaling convolutions are then random, and clicks and the previous mask reach the decoder
    only through that random code. A pretrained one (official SAM, ``init``) stays frozen
    as in MedSAM; so does a box-only run's (it reads two corner embeddings and the no-mask embedding)."""
    if cfg.prompt_encoder != "auto":
        return cfg.prompt_encoder == "trained"
    return not cfg.sam_checkpoint and not cfg.init and cfg.prompts != "box"


@dataclass
class SamFinetuneConfig(CommonConfig):
    epochs: int = param(30, ge=1)  # maximum decoder epochs (early stopping on validation IoU may end sooner)
    batch_size: int = param(8, ge=1)  # prompts per optimisation step
    lr: float = param(1e-3, gt=0)  # AdamW lr of neck + mask decoder trained from scratch (MedSAM: 1e-4 on SAM)
    weight_decay: float = param(0.01, ge=0)  # AdamW weight decay (MedSAM)
    image_size: int = param(128, ge=32)  # images and masks are resized to this square side (a multiple of 16)
    encoder_size: int | None = param(256, ge=32)  # offline encoder input side, a multiple of 16 (None: image_size)
    fine_features: bool = True  # offline encoder: its stride-4 features join the decoder's upscaled embedding
    patience: int = param(8, ge=1)  # early stopping: epochs without a better validation IoU
    lr_patience: int = param(3, ge=0)  # schedule=plateau: epochs without a better val IoU before lr *= lr_factor
    schedule: Literal["cosine", "plateau"] = param("cosine", choices=("cosine", "plateau"))  # warm-up + cosine
    prompt: Literal["component", "mask"] = param("component", choices=PROMPT_MODES)  # a box per component / mask
    prompts: str = param("box", choices=PROMPT_TRAINING)  # training prompts: box (MedSAM), points, mixed (SAM)
    click_rounds: tuple[int, ...] = param((1, 8), ge=0, length=2)  # mixed: error-click rounds MIN,MAX after the 1st
    # auto: trained when it is newly initialised (offline, no init) and prompts are points or mixed; frozen when
    # it is pretrained (official SAM, init: MedSAM) or only boxes are trained. See prompt_encoder_trained()
    prompt_encoder: Literal["auto", "frozen", "trained"] = param("auto", choices=("auto", "frozen", "trained"))
    neg_others: float = param(0.0, ge=0, le=1)  # points/mixed: chance a sampled negative point is on a neighbour
    iou_weight: float = param(1.0, ge=0)  # SAM's IoU-head loss (MSE to the mask's real IoU); trains the head alone
    min_area: int | None = param(None, ge=1)  # smallest object in px at image_size (None: 0.1% of the image, >= 4)
    scenes: int = param(600, ge=10)  # embedded data: number of generated scenes
    objects: tuple[int, ...] = param((2, 4), ge=1, le=12, length=2)  # embedded data: fewest, most objects a scene
    object_scale: float = param(1.6, ge=0.25, le=2.5)  # embedded data: object size relative to the base size
    scene_seed: int = param(0, ge=0)  # embedded data: seed of the generated scenes (the data set itself)
    aug_copies: int = param(3, ge=1)  # views per training image encoded once for the cache (view 0 = the image)
    brightness: float = param(0.25, ge=0)  # augmentation: ColorJitter brightness of the extra views
    contrast: float = param(0.25, ge=0)  # augmentation: ColorJitter contrast of the extra views
    jitter_px: float = param(20.0, ge=0)  # box jitter: each side out by up to this many px at 1024 px (scaled)
    test_fraction: float = param(0.1, gt=0, lt=1)  # images held out for testing (the seeded 90/10 split)
    val_fraction: float = param(0.1, gt=0, lt=1)  # of the remaining images, held out for validation
    grabcut_iters: int = param(5, ge=1)  # GrabCut iterations of the grabcut baseline
    sam_checkpoint: str | None = None  # official SAM weights (sam_vit_b_01ec64.pth...): ViT encoder + zero_shot row
    model_type: Literal["vit_b", "vit_l", "vit_h"] = param("vit_b", choices=MODEL_TYPES)  # sam_checkpoint's model
    init: str | None = None  # start from an earlier sam-finetune checkpoint (its best.ckpt); zero_shot row = it
    time_uncached: bool = True  # also time an epoch with and one without the cache (re-augment + re-encode)
    time_fraction: float = param(1.0, gt=0, le=1)  # those two timed epochs run over this fraction of the images
    figure_prompts: int = param(8, ge=0)  # test prompts shown in the four-column figure (and click sequences)
    prompt_images: int = param(20, ge=0)  # first test images whose objects get the prompt table and clicks (0: off)
    n_clicks: int = param(9, ge=1)  # simulated clicks per object (IoU-vs-clicks, NoC@85/90)


@dataclass
class _Data:
    folder: MaskFolder
    split: dict[str, list[int]]
    model: BoxPromptSam  # built with the base seed: its encoder made the cache
    pv: dict[str, PromptViews]  # the embedding cache per split
    sets: dict[str, FixedPrompts]  # val, test: fixed prompts (base seed), the same for every row and seed
    augment: JointAugment
    jitter: float  # box jitter in px at image_size
    cache_s: float
    seed: int  # the base seed (the data's)
    info: dict[str, Any]
    init_decoder: Any = None  # the zero_shot row's decoder (official SAM or init), else None
    prompt_eval: dict[str, Any] | None = None  # the prompt evaluation's curves and click sequences (for the report)


def _scores(pred: Tensor, target: Tensor) -> Tensor:
    return torch.stack([iou(pred, target), dice(pred, target)], dim=1).float()  # (N, 2)


def _row(name: str, out: Tensor, seconds: float, *, params: int = 0, masks: Tensor | None = None,
         extra: dict[str, Any] | None = None, test: dict[str, float] | None = None) -> VariantResult:
    """An untrained row: per-prompt ``out`` ``Tensor[N, 2]`` (IoU, Dice)."""
    return VariantResult(
        variant=name, seed=None, params=params, epochs=0,
        test=test or {"iou": float(out[:, 0].mean()), "dice": float(out[:, 1].mean())},
        time={"fit_s": 0.0, "epoch_s_mean": 0.0, "step_ms_mean": 0.0,
              "ms_per_prompt": round(1000 * seconds / max(1, len(out)), 3)},
        items={"iou": out[:, 0].numpy(), "dice": out[:, 1].numpy()}, extra=extra or {},
        state={"per_prompt": out, "masks": masks})


class SamFinetune(Experiment):
    name = "sam-finetune"
    data_help = ("--data DIR: DIR/images/ + DIR/masks/ paired by file stem (binary masks 0/255 or 0/1, any image "
                 "format); default: generated scenes of rings, bands, blobs and stars on scikit-image photos. "
                 "--set sam_checkpoint=FILE model_type=vit_b uses the official SAM (zero-shot row too)")
    Config = SamFinetuneConfig
    claims = (Claim("finetuned", "grabcut", "iou"), Claim("finetuned", "box", "iou"))
    table_metrics = ("dice",)
    curve_metrics = ("loss", "iou", "dice")

    def demo_overrides(self, quick: bool) -> dict[str, Any]:
        if quick:
            return {"scenes": 40, "image_size": 64, "encoder_size": 128, "epochs": 2, "aug_copies": 2,
                    "figure_prompts": 4, "grabcut_iters": 3, "time_fraction": 0.5, "prompt_images": 1, "n_clicks": 3}
        # measured on 2 idle cores with the fine features: 7.8 s per epoch, test mIoU 0.765 after 11 epochs (val
        # 0.794; box 0.428, grabcut 0.604), 120 s in all; without them 0.646 after 8 epochs. 2026-12-07 (a slower
        # day, 8.8 s per epoch): validation 0.793 after 9 epochs, 0.795 after 11, hence 9
        return {"scenes": 300, "image_size": 96, "encoder_size": 192, "epochs": 9, "aug_copies": 2,
                "patience": 9, "time_fraction": 0.15, "prompt_images": 3}

    def variants(self, cfg: SamFinetuneConfig) -> list[str]:
        return ["finetuned"]

    def validate(self, cfg: SamFinetuneConfig, data: str | None, root: str | None) -> None:
        if root:
            raise UserError("--root does not apply to sam-finetune; pass the mask folder as --data DIR")
        for key in ("image_size", "encoder_size"):
            s = getattr(cfg, key)
            if s is not None and (s < 32 or s % 16):
                raise UserError(f"{key} must be a multiple of 16 and >= 32 (the encoder's stride is 16), got {s}")
        if cfg.init is not None:
            from vislab.models.sam import read_finetuned

            _, meta = read_finetuned(cfg.init)
            if int(meta["image_size"]) != cfg.image_size:
                raise UserError(f"init {cfg.init} was trained at image_size {meta['image_size']}; pass --set "
                                f"image_size={meta['image_size']} (got {cfg.image_size})")
            if meta.get("kind") == "official" and not (cfg.sam_checkpoint or Path(meta["sam_checkpoint"]).is_file()):
                raise UserError(f"init {cfg.init} was trained on the official SAM encoder; its weights file "
                                f"{meta['sam_checkpoint']} is gone: pass --set sam_checkpoint=FILE")
        if cfg.sam_checkpoint is not None and not Path(cfg.sam_checkpoint).is_file():
            raise UserError(f"sam_checkpoint {cfg.sam_checkpoint} does not exist; download the official "
                            f"{cfg.model_type} weights from {SAM_CHECKPOINT_URLS[cfg.model_type]} and pass its path")
        for key in ("objects", "click_rounds"):  # MIN,MAX pairs
            if getattr(cfg, key)[0] > getattr(cfg, key)[1]:
                raise UserError(f"{key} must be two numbers MIN,MAX with MIN <= MAX, got {list(getattr(cfg, key))}")
        if data is None:
            return
        from vislab.data.masks import pair_mask_folder

        pairs, skipped = pair_mask_folder(data)
        if len(pairs) < 3:
            why = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
            raise UserError(f"--data {data} has {len(pairs)} image/mask pair(s) with matching stems; sam-finetune "
                            f"needs at least 3 (train, val, test){' (' + why + ')' if why else ''}")

    # -- data: the folder, the split and the embedding cache (once) ---------------------------------
    def _build_model(self, cfg: SamFinetuneConfig) -> BoxPromptSam:
        from vislab.models.sam import load_finetuned, official_box_sam, offline_box_sam

        if cfg.init:
            return load_finetuned(cfg.init, sam_checkpoint=cfg.sam_checkpoint)
        if cfg.sam_checkpoint:
            return official_box_sam(cfg.model_type, cfg.sam_checkpoint, image_size=cfg.image_size)
        return offline_box_sam(cfg.image_size, encoder_size=cfg.encoder_size, pretrained=True, fine=cfg.fine_features)

    def _folder(self, ctx: RunContext) -> tuple[str, MaskFolder, dict[str, list[int]]]:
        from vislab.data.masks import default_scene_dir, load_mask_folder, split_samples, write_scene_folder

        cfg: SamFinetuneConfig = ctx.cfg
        if ctx.data:
            root, name = Path(ctx.data), Path(ctx.data).name or str(ctx.data)
        else:
            kw = {"num_images": cfg.scenes, "size": cfg.image_size, "seed": cfg.scene_seed,
                  "objects": (int(cfg.objects[0]), int(cfg.objects[1])), "scale": cfg.object_scale}
            root, name = default_scene_dir(**kw), "embedded-scenes"
            ctx.log(f"sam-finetune: embedded scenes in {root}")
            write_scene_folder(root, **kw)
        folder = load_mask_folder(root, image_size=cfg.image_size, prompt=cfg.prompt, min_area=cfg.min_area)
        if len(folder.samples) < 3:
            raise UserError(f"--data {root}: {len(folder.samples)} usable image/mask pair(s); sam-finetune needs at "
                            "least 3 (train, val, test)")
        split = split_samples(len(folder.samples), seed=cfg.seed, test_fraction=cfg.test_fraction,
                              val_fraction=cfg.val_fraction)
        rng = np.random.default_rng(cfg.seed)
        for key, lim in (("train", cfg.limit_train), ("val", cfg.limit_val), ("test", cfg.limit_test)):
            if lim is not None and len(split[key]) > lim:
                split[key] = sorted(rng.choice(split[key], size=lim, replace=False).tolist())
        if folder.skipped:
            ctx.log(f"sam-finetune: skipped {len(folder.skipped)} file(s); the report lists them")
        if ctx.is_main:
            stems = {k: [folder.samples[i].stem for i in v] for k, v in split.items()}
            ctx.run.write_json("split.json", {"root": str(root), "seed": cfg.seed, "test_fraction": cfg.test_fraction,
                                              "val_fraction": cfg.val_fraction, "prompt": cfg.prompt, **stems,
                                              "skipped": [list(s) for s in folder.skipped]})
        return name, folder, split

    def load_data(self, ctx: RunContext) -> _Data:
        cfg: SamFinetuneConfig = ctx.cfg
        name, folder, split = self._folder(ctx)
        seed_everything(cfg.seed)
        model = self._build_model(cfg)
        ctx.log(f"sam-finetune: {name}: {len(folder.samples)} images, {folder.num_objects} objects; split "
                f"{', '.join(f'{k} {len(v)}' for k, v in split.items())}; encoder: {model.describe()}")
        augment = JointAugment(brightness=cfg.brightness, contrast=cfg.contrast)
        t0 = time.perf_counter()
        pv = {k: build_views([folder.samples[i] for i in idx], model.encoder, copies=cfg.aug_copies if k == "train"
                             else 1, augment=augment if k == "train" else None, seed=cfg.seed, device=ctx.device(),
                             log=ctx.log) for k, idx in split.items()}
        cache_s = time.perf_counter() - t0
        jitter = jitter_for_size(cfg.image_size) * cfg.jitter_px / 20.0
        sets = {k: FixedPrompts(pv[k], jitter=jitter, seed=cfg.seed + i, image_size=cfg.image_size)
                for i, k in ((1, "val"), (2, "test"))}
        n_prompts = {k: len(p.objects) for k, p in pv.items()}
        ctx.log(f"sam-finetune: cache: {len(pv['train'].features)} train views + {len(pv['val'].features)} val + "
                f"{len(pv['test'].features)} test images encoded in {cache_s:.1f} s; prompts: "
                + ", ".join(f"{k} {n}" for k, n in n_prompts.items()))
        src = ("generated scenes (rings with holes, thin curved bands, lumpy blobs, stars; several per image, tinted "
               "photo textures on crops of scikit-image photographs), written as an images/ + masks/ folder in "
               f"`{folder.root}`" if name == "embedded-scenes" else f"the mask folder `{folder.root}`")
        info = {"name": name, "root": str(folder.root), **{k: len(v) for k, v in split.items()},
                "prompts": n_prompts, "image_size": cfg.image_size, "prompt": cfg.prompt,
                "jitter_px": round(jitter, 3), "skipped": [list(s) for s in folder.skipped],
                "description": f"{src}; images resized to {cfg.image_size}×{cfg.image_size}; one box per "
                f"{'connected component' if cfg.prompt == 'component' else 'mask'}; prompts: train "
                f"{n_prompts['train']}, val {n_prompts['val']}, test {n_prompts['test']} (`split.json`)"}
        init = copy.deepcopy(model.decoder) if model.kind == "official" or cfg.init else None
        return _Data(folder, split, model, pv, sets, augment, jitter, cache_s, cfg.seed, info, init)

    # -- untrained rows (once) ----------------------------------------------------------------------
    def baselines(self, ctx: RunContext, data: _Data) -> dict[str, VariantResult]:
        from vislab.models.seg_baselines import box_masks, grabcut_masks

        cfg: SamFinetuneConfig = ctx.cfg
        ts = data.sets["test"]
        gts = torch.stack([ts.mask(j) for j in range(len(ts))]) if len(ts) else torch.zeros(0, ts.size, ts.size)
        rows: dict[str, VariantResult] = {}
        if data.init_decoder is not None:
            t0 = time.perf_counter()
            res = evaluate(SamDecoderTask(data.init_decoder), eval_loader(ts, batch_size=cfg.batch_size),
                           device=ctx.device(), desc="zero-shot")
            rows["zero_shot"] = _row("zero_shot", res.outputs, time.perf_counter() - t0,
                                     params=sum(p.numel() for p in data.model.parameters()),
                                     test={k: float(res.metrics[k]) for k in ("loss", "iou", "dice")})
        t0 = time.perf_counter()
        boxes = box_masks(ts.boxes, (ts.size, ts.size))
        rows["box"] = _row("box", _scores(boxes, gts), time.perf_counter() - t0, masks=boxes)
        grab = torch.zeros_like(gts)
        failed = 0
        t0 = time.perf_counter()
        for img in sorted({i for i, _ in ts.pv.objects}):
            js = [j for j, (i, _) in enumerate(ts.pv.objects) if i == img]
            grab[js], bad = grabcut_masks(ts.pv.images[img], ts.boxes[js], iterations=cfg.grabcut_iters,
                                          seed=cfg.seed)
            grab[[js[b] for b in bad]] = boxes[[js[b] for b in bad]]  # the filled box stands in
            failed += len(bad)
        rows["grabcut"] = _row("grabcut", _scores(grab, gts), time.perf_counter() - t0, masks=grab,
                               extra={"failed_prompts": failed})
        return rows

    # -- the fine-tuned decoder (per seed) ------------------------------------------------------------
    def _task(self, cfg: SamFinetuneConfig, model: BoxPromptSam, train: TrainPrompts, data: _Data) -> SamDecoderTask:
        meta = {"task": "sam-finetune", "kind": model.kind, "model_type": model.model_type,
                "sam_checkpoint": str(Path(cfg.sam_checkpoint).resolve()) if cfg.sam_checkpoint else None,
                "image_size": cfg.image_size, "encoder_size": model.encoder.input_size, "fine": model.decoder.fine,
                "encoder": model.describe(), "init": str(Path(cfg.init).resolve()) if cfg.init else None,
                "contains": "the decoder half (neck, fine projection, prompt encoder, mask decoder) as model.*",
                "iou_head_trained": cfg.iou_weight > 0,
                "multimask_outputs": "pretrained by SAM, not fine-tuned" if model.kind == "official" else "untrained"}
        return SamDecoderTask(model.decoder, train_set=train, schedule=cfg.schedule, lr=cfg.lr,
                              weight_decay=cfg.weight_decay, lr_patience=cfg.lr_patience, lr_factor=cfg.lr_factor,
                              prompts=cfg.prompts, click_rounds=cfg.click_rounds, jitter=data.jitter, seed=cfg.seed,
                              iou_weight=cfg.iou_weight, neg_others=cfg.neg_others, meta=meta)

    def run_variant(self, ctx: RunContext, data: _Data, variant: str) -> VariantResult:
        cfg: SamFinetuneConfig = ctx.cfg
        device = ctx.device()
        seed_everything(cfg.seed)  # the base seed's model was built right after the same call: copy it
        model = copy.deepcopy(data.model) if cfg.seed == data.seed else self._build_model(cfg)
        model.decoder.prompt_encoder.requires_grad_(prompt_encoder_trained(cfg))
        train = TrainPrompts(data.pv["train"], jitter=data.jitter, seed=cfg.seed, image_size=cfg.image_size)
        module = self._task(cfg, model, train, data)
        loaders = {k: eval_loader(data.sets[k], batch_size=cfg.batch_size, num_workers=cfg.num_workers)
                   for k in ("val", "test")}
        seed_everything(cfg.seed)
        stage = fit_stage(ctx, module, train_loader(train, batch_size=cfg.batch_size, seed=cfg.seed,
                                                    num_workers=cfg.num_workers), loaders["val"], variant=variant)
        timing = None
        if cfg.time_uncached and cfg.seed == data.seed:
            ctx.log("sam-finetune: timing one epoch with and one without the cache (re-augmenting and re-encoding "
                    "every image)")
            timing = time_epochs(model, train, [data.folder.samples[i] for i in data.split["train"]],
                                 data.sets["val"], augment=data.augment, batch_size=cfg.batch_size, lr=cfg.lr,
                                 weight_decay=cfg.weight_decay, seed=cfg.seed, jitter=data.jitter, device=device,
                                 fraction=cfg.time_fraction)
        module.eval_prompt = "box"  # every test row answers the same boxes (validation chose the epoch)
        t0 = time.perf_counter()
        res = evaluate(module, loaders["test"], device=device, desc="test")
        test_s = time.perf_counter() - t0
        val = evaluate(module, loaders["val"], device=device).metrics
        model = model.cpu().eval()
        return VariantResult(
            variant=variant, seed=cfg.seed, params=sum(p.numel() for p in model.parameters()), epochs=stage.epochs,
            train={k: stage.train[k] for k in ("loss", "iou", "dice") if k in stage.train},
            val={k: float(val[k]) for k in ("loss", "iou", "dice")},
            test={k: float(res.metrics[k]) for k in ("loss", "iou", "dice")},
            time={**stage.time, "cache_build_s": round(data.cache_s, 3),
                  "ms_per_prompt": round(1000 * test_s / max(1, len(data.sets["test"])), 3)},
            checkpoint=stage.best_checkpoint,
            items={"iou": res.outputs[:, 0].numpy(), "dice": res.outputs[:, 1].numpy()},
            extra={"trainable_params": sum(p.numel() for p in model.decoder.parameters() if p.requires_grad),
                   "best_epoch": stage.best_epoch},
            state={"model": model, "per_prompt": res.outputs, "epoch_s": list(module.epoch_s), "timing": timing})

    def load_model(self, checkpoint: Any) -> BoxPromptSam:
        from vislab.models.sam import load_finetuned

        return load_finetuned(checkpoint)

    # -- summary and report ---------------------------------------------------------------------------
    def _per_prompt(self, result: Any) -> dict[str, Tensor]:
        first = result.variants[result.seeds[0]]
        out = {"finetuned": first["finetuned"].state["per_prompt"]} if "finetuned" in first else {}
        out.update({k: r.state["per_prompt"] for k, r in result.baseline_results.items()})
        return out

    def summary_extra(self, ctx: RunContext, data: _Data, result: Any) -> dict[str, Any]:
        cfg: SamFinetuneConfig = ctx.cfg
        model = data.model
        kinds = data.sets["test"].pv.kinds
        per_prompt = self._per_prompt(result)
        per_shape = {}
        for kind in sorted(set(kinds), key=lambda k: (k not in SHAPE_ORDER, k)):
            sel = torch.tensor([k == kind for k in kinds])
            per_shape[kind] = {"prompts": int(sel.sum()), **{r: float(o[sel, 0].mean()) for r, o in per_prompt.items()}}
        rows = {**result.summary["runs"], **result.summary["baselines"]}
        ft = metric_value(rows["finetuned"], "test", "iou")
        best = max(metric_value(r, "test", "iou") for k, r in rows.items() if k != "finetuned")
        return {"encoder": {"kind": model.kind, "model_type": model.model_type, "weights": model.weights,
                            "description": model.describe(), "init": cfg.init},
                "per_shape": per_shape, "cache": self._cache(cfg, data, result),
                "finetuned_beats_baselines": bool(ft > best), "margin_over_best_baseline": round(ft - best, 4),
                "iou_head": self._iou_head(cfg, result), "prompts": self._prompts(ctx, data, result)}

    @staticmethod
    def _iou_head(cfg: SamFinetuneConfig, result: Any) -> dict[str, Any] | None:
        """How well the fine-tuned model's predicted IoU (first seed) scores its own test masks (box prompts)."""
        first = result.variants[result.seeds[0]].get("finetuned")
        if first is None or first.state["per_prompt"].shape[1] < 3:
            return None
        real, pred = first.state["per_prompt"][:, 0].double(), first.state["per_prompt"][:, 2].double()
        r = float(torch.corrcoef(torch.stack([real, pred]))[0, 1]) if len(real) > 1 else float("nan")
        return {"trained": cfg.iou_weight > 0, "prompts": len(real), "mae": round(float((pred - real).abs().mean()), 4),
                "pearson": round(r, 4) if r == r else None}

    def _prompts(self, ctx: RunContext, data: _Data, result: Any) -> dict[str, Any] | None:
        """Fine-tuned (first seed), before fine-tuning and the click-seeded classical baseline prompted with the
        box, points and simulated clicks on the objects of the first ``prompt_images`` test images."""
        from vislab.engine.tasks.sam_decoder import evaluate_prompts
        from vislab.models.seg_baselines import ClickSeededSegmenter
        from vislab.report.sam_figures import pick_prompts

        cfg: SamFinetuneConfig = ctx.cfg
        first = result.variants[result.seeds[0]].get("finetuned")
        ts = data.sets["test"]
        js = [j for j, (i, _) in enumerate(ts.pv.objects) if i < cfg.prompt_images]
        if first is None or not js:
            return None
        images, masks = [ts.image(j) for j in js], [ts.mask(j) for j in js]
        rows = {"fine-tuned": first.state["model"], "before fine-tuning": data.model.cpu().eval(),
                "classical": ClickSeededSegmenter(grabcut_iters=cfg.grabcut_iters)}
        ev = evaluate_prompts(rows, images, masks, ts.boxes[js], n_clicks=cfg.n_clicks, keep_masks=("fine-tuned",))
        runs = ev["curves"]["fine-tuned"][0].runs
        picks = pick_prompts([ts.pv.kinds[j] for j in js], cfg.figure_prompts)
        data.prompt_eval = {"curves": ev["curves"], "sequences": (
            [images[p] for p in picks], [runs[p] for p in picks], [masks[p] for p in picks],
            [ts.pv.kinds[js[p]] for p in picks])}
        return {"images": min(cfg.prompt_images, len(ts.pv.images)), "objects": len(js), "max_clicks": cfg.n_clicks,
                "tau": ev["tau"], "dilation_ratio": ev["dilation_ratio"], "rows": ev["summary"]}

    def _cache(self, cfg: SamFinetuneConfig, data: _Data, result: Any) -> dict[str, Any]:
        st = result.variants[result.seeds[0]].get("finetuned")
        st = st.state if st is not None else {}
        return cache_summary(data.pv, data.cache_s, views_per_image=cfg.aug_copies, epoch_s=st.get("epoch_s") or [],
                             timing=st.get("timing"))

    def describe(self, ctx: RunContext, data: _Data) -> str:
        cfg: SamFinetuneConfig = ctx.cfg
        model = data.model
        tokens = model.encoder.input_size // 16
        encoder = (f"**Image encoder that ran:** {model.describe()}. "
                   + ("SAM's own prompt encoder (frozen) and mask decoder (trained) come from the official checkpoint."
                      if model.kind == "official" else
                      f"The neck, prompt encoder and mask decoder start from `{cfg.init}` (an earlier sam-finetune "
                      "run); the zero_shot row is that model before this fine-tuning." if cfg.init else
                      "SAM's own `PromptEncoder` ("
                      + ("trained with the decoder" if prompt_encoder_trained(cfg) else "frozen, as in MedSAM")
                      + ") and `MaskDecoder` (`TwoWayTransformer`, depth "
                      f"2) from the segment-anything package, newly initialised and sized to the image (embedding "
                      f"{tokens}×{tokens}); no SAM weights were used, so there is no zero-shot row (pass `--set "
                      "sam_checkpoint=FILE` for the official SAM)."))
        prompts = {"box": "one box per object", "points": "SAM-Med2D's 1–3 positive and 0–2 negative points per "
                   "object; validation prompts with each object's deepest pixel", "mixed": "per batch a box, points, "
                   f"or a box or one point followed by {cfg.click_rounds[0]}–{cfg.click_rounds[1]} rounds of error "
                   "clicks with the previous logits as mask prompt and the loss on every round (SAM's iterative "
                   "training); validation: the mean of the box's and the deepest pixel's IoU"}[cfg.prompts]
        return (f"{encoder} Boxes: the ground-truth mask's box with each side moved out by a seeded "
                f"0–{data.jitter:.3g} px (MedSAM's 0–{cfg.jitter_px:g} px at 1024 px, scaled); test boxes are fixed "
                f"and the same for every row and seed. Training prompts: {prompts}. {cfg.aug_copies} view(s) per "
                "training image (view 0 the image, the others random horizontal/vertical flips and brightness/"
                f"contrast ±{cfg.brightness:g}/±{cfg.contrast:g} with `torchvision.transforms.v2`, masks and boxes "
                f"moved with the image), encoded once; `DiceCELoss` (Dice + BCE); AdamW lr {cfg.lr:g} "
                f"({'warm-up + cosine decay' if cfg.schedule == 'cosine' else 'halved on plateau'}), weight decay "
                f"{cfg.weight_decay:g}, batches of {cfg.batch_size} prompts; up to {cfg.epochs} epochs, early "
                f"stopping and the best checkpoint on validation IoU (patience {cfg.patience}). Predicted mask: "
                "logits > 0. Test rows are all prompted with the same boxes.")

    def report(self, ctx: RunContext, rep: Any, result: Any, data: _Data) -> None:
        from vislab.report.sam_figures import cache_table, prediction_figures, prompt_section

        cfg: SamFinetuneConfig = ctx.cfg
        summary, info = result.summary, data.info
        if info["skipped"]:
            rep.text(f"{len(info['skipped'])} file(s) were skipped:")
            rep.bullets([f"`{p}` — {why}" for p, why in info["skipped"][:50]]
                        + ([f"... and {len(info['skipped']) - 50} more (see split.json)"]
                           if len(info["skipped"]) > 50 else []))
        rep.heading("Rows")
        what = {"finetuned": "SAM decoder fine-tuned on the frozen encoder",
                "zero_shot": (f"`{Path(cfg.init).name}` (init), before this fine-tuning" if cfg.init
                              else f"official SAM {data.model.model_type}, before fine-tuning"),
                "box": "the prompt box, filled", "grabcut": f"cv2.grabCut from the box, {cfg.grabcut_iters} iterations"}
        rows = {**summary["runs"], **summary["baselines"]}
        rep.table(["row", "what", "ms / prompt"],
                  [[r, what[r], v["time"].get("ms_per_prompt")] for r, v in rows.items()],
                  caption="ms / prompt: test-time cost per prompt (finetuned/zero_shot: the decoder on cached "
                  "features; the encoder's cost is in the cache table).")
        failed = summary["baselines"]["grabcut"].get("failed_prompts")
        if failed:
            rep.text(f"GrabCut could not run on {failed} prompt(s) (the box left no background); the filled box "
                     "stands in for those.")
        rep.text(f"Fine-tuned minus the best baseline: {summary['margin_over_best_baseline']:+.3f} mIoU "
                 f"({'the fine-tuned model' if summary['finetuned_beats_baselines'] else 'a baseline'} is higher; the "
                 "claims table says whether the difference is shown).")
        head = summary.get("iou_head")
        if head:
            how = "trained on the masks' real IoU" if head["trained"] else "not trained: iou_weight was 0"
            r = "n/a" if head["pearson"] is None else format(head["pearson"], ".2f")
            rep.text(f"The model's own predicted IoU (SAM's IoU head, {how}) against the real IoU of its "
                     f"{head['prompts']} test masks: mean absolute error {head['mae']:.3f}, Pearson r {r}. "
                     "`vislab segment` prints it with every mask.")
        rep.heading("IoU per object shape")
        cols = list(self._per_prompt(result))
        rep.table(["shape", "test prompts", *cols], [[k, v["prompts"], *[v[c] for c in cols]]
                                                      for k, v in summary["per_shape"].items()],
                  caption=f"Mean test IoU per shape (seed {result.seeds[0]}). A filled box covers the hole of a ring "
                  "and most of a band's box, which is where box prompts alone fail.")
        first = result.variants[result.seeds[0]].get("finetuned")
        if first is not None:
            prediction_figures(rep, ctx.run.figure, data.sets["test"], first.state["model"], data.init_decoder,
                               {k: r.state["masks"] for k, r in result.baseline_results.items() if k != "zero_shot"},
                               self._per_prompt(result), cfg.figure_prompts)
        if summary.get("prompts"):
            pe = data.prompt_eval or {}
            prompt_section(rep, summary["prompts"], figure=ctx.run.figure, sequences=pe.get("sequences"),
                           curves=pe.get("curves"))
        cache_table(rep, summary["cache"])
