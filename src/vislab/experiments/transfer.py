"""Experiment ``transfer`` (SPEC §5): a pretrained ImageNet CNN with a new two-class FC, trained three ways.

* ``ce_fc`` -- (a) cross-entropy on the new FC only; the frozen features' embeddings are computed once in
  eval mode (BatchNorm statistics stay as pretrained) and the FC trains on them.
* ``triplet_then_ce`` -- (b) two stages of one variant: ``triplet`` (the feature extractor alone, triplet
  margin loss on L2-normalised embeddings, online mining in P x K batches of 2 classes), then ``ce`` (the FC
  with cross-entropy on the frozen, triplet-trained features).
* ``joint`` -- (c) ``L = L_CE + triplet_weight * L_triplet`` on the whole model, end to end.
* ``random_init`` -- the control: a random backbone trained with the schedule of ``control_schedule``
  (claims: every pretrained regime beats it, and ``joint`` beats ``ce_fc``, on test accuracy).

While pretrained features train, their BatchNorm layers stay in eval mode (``freeze_bn``): in train mode
each two-class P x K batch would be normalised with its own statistics, and the triplet loss would shape an
embedding other than the one evaluated. Data: :mod:`vislab.data.two_class`; tasks: :mod:`vislab.engine.tasks`.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from vislab.data.cifar import scan_cifar10
from vislab.data.triplets import BalancedBatchSampler
from vislab.data.two_class import TwoClassData, cifar_binary_splits, lfw_binary_splits, stratified_subsample
from vislab.engine.config import CommonConfig, param
from vislab.engine.context import RunContext
from vislab.engine.fit import StageResult, eval_loader, fit_stage, seed_everything, train_loader
from vislab.engine.module import ClassificationModule, predict
from vislab.engine.tasks.triplet import JointModule, TripletModule
from vislab.errors import UserError
from vislab.experiments.base import Experiment
from vislab.losses.triplet import MINING_STRATEGIES, TripletLoss, batch_triplet_loss
from vislab.metrics.classification import classification_report
from vislab.protocol.claims import Claim
from vislab.protocol.results import VariantResult
from vislab.report import figures
from vislab.report.blocks import metric_value
from vislab.report.document import Report
from vislab.report.embedding_plot import pca_2d
from vislab.report.transfer_figures import embeddings_figure, stage_curves

REGIMES = ("ce_fc", "triplet_then_ce", "joint")  # the three pretrained regimes (a), (b), (c)
CONTROL = "random_init"
VARIANTS = (*REGIMES, CONTROL)
DATA_NAMES = ("lfw", "cifar10-binary")
REGIME_TEXT = {
    "ce_fc": "(a) CE on the new FC; features frozen",
    "triplet_then_ce": "(b) triplet loss trains the features, then CE on the FC (features frozen)",
    "joint": "(c) L_CE + λ·L_triplet on the whole model",
}
_KEYS = ("loss", "accuracy", "precision", "recall", "f1")


@dataclass
class TransferConfig(CommonConfig):
    epochs: int = param(10, ge=1)  # maximum epochs of each stage that trains the feature extractor ((b), (c), control)
    head_epochs: int = param(30, ge=1)  # maximum epochs of each FC-only stage ((a), (b) CE stage; cached features)
    batch_size: int = param(32, ge=4)  # images per step; triplet batches hold 2 classes x batch_size/2 images (P x K)
    lr: float = param(1e-3, gt=0)  # learning rate of the new FC (every regime)
    backbone_lr: float = param(1e-4, gt=0)  # learning rate of the feature extractor where it trains
    image_size: int = param(96, ge=1)  # square side images are resized to (the embedded crops are 25 px, CIFAR 32)
    patience: int = param(4, ge=1)  # early stopping: epochs without val-loss improvement before a stage stops
    variants: tuple[str, ...] = param(VARIANTS, choices=VARIANTS)  # the regimes to run (and the control)
    control_schedule: Literal["ce_fc", "triplet_then_ce", "joint"] = param("joint", choices=REGIMES)  # random_init's
    backbone: str = "efficientnet_lite0"  # backbone name (vislab.models.backbones); its ImageNet weights are loaded
    weights: str | None = None  # weights file for backbones without packaged weights
    classes: tuple[str, ...] = ("airplane", "automobile")  # CIFAR-10 classes (first = label 0); cifar10-binary only
    margin: float = param(0.2, ge=0)  # triplet margin, in Euclidean distance between L2-normalised embeddings
    mining: Literal["batch_hard", "semi_hard", "all"] = param("batch_hard", choices=MINING_STRATEGIES)  # per batch
    freeze_bn: bool = True  # pretrained backbones keep BatchNorm in eval mode (ImageNet stats) while features train
    squared: bool = False  # squared Euclidean distances in the triplet loss (the margin is then squared units)
    triplet_weight: float = param(1.0, ge=0)  # λ in regime (c): L = L_CE + λ·L_triplet
    split: tuple[float, ...] = param((0.6, 0.2, 0.2), gt=0, lt=1)  # embedded data: train/val/test fractions
    val_fraction: float = param(0.1, gt=0, lt=1)  # cifar10-binary: share of the training split held out for val
    embed_points: int = param(1000, ge=2)  # at most this many test embeddings in the PCA plot and triplet statistic


@dataclass
class _Stage:
    name: str
    result: StageResult
    trainable_params: int
    steps_per_epoch: int


def _data_name(data: str | None, root: str | None) -> str:
    return data or ("cifar10-binary" if root else "lfw")


def _schedule(cfg: TransferConfig, variant: str) -> str:
    """The training schedule a variant follows: its own, or ``control_schedule`` for the control."""
    return cfg.control_schedule if variant == CONTROL else variant


class Transfer(Experiment):
    data_help = ("default: embedded faces vs non-faces (scikit-image lfw_subset, 200 real crops); "
                 "--data cifar10-binary --root DIR [--download]: two CIFAR-10 classes "
                 "(--set classes=airplane,automobile), CIFAR's own test split; --root alone means cifar10-binary")
    Config = TransferConfig
    claims = (*(Claim(v, CONTROL, "accuracy") for v in REGIMES), Claim("joint", "ce_fc", "accuracy"))
    table_metrics = ("loss", "f1", "triplet_active_fraction")
    curve_metrics = ()  # the report draws its own curves: CE stages, triplet stages, the joint loss's parts

    def __init__(self) -> None:
        self._base: tuple[tuple[Any, ...], nn.Module] | None = None  # the pretrained classifier of one seed

    def demo_overrides(self, quick: bool) -> dict[str, Any]:
        if quick:
            return {"epochs": 2, "head_epochs": 10, "image_size": 64, "limit_train": 80}
        # validation accuracy is flat from epoch 2 on in every regime (0.975 joint and triplet_then_ce, 2026-12-07)
        return {"epochs": 6, "head_epochs": 30, "image_size": 64}

    def validate(self, cfg: TransferConfig, data: str | None, root: str | None, download: bool = False) -> None:
        if not cfg.variants:
            raise UserError(f"variants is empty; valid variants: {', '.join(VARIANTS)}")
        if len(set(cfg.variants)) != len(cfg.variants):
            raise UserError(f"variants lists a name twice: {list(cfg.variants)}")
        if len(cfg.split) != 3 or abs(sum(cfg.split) - 1) > 1e-6:
            raise UserError(f"split must be three fractions > 0 that sum to 1 (train,val,test), got {list(cfg.split)}")
        name = _data_name(data, root)
        if name not in DATA_NAMES:
            raise UserError(f"unknown --data {name!r} for transfer; use cifar10-binary (with --root DIR) or leave "
                            "it out for the embedded faces vs non-faces set")
        if name == "lfw" and download:
            raise UserError("--download applies to --data cifar10-binary; the embedded set needs no download")
        if name == "cifar10-binary":
            if not root:
                raise UserError("--data cifar10-binary needs --root DIR (the folder that holds cifar-10-batches-py/, "
                                "or where --download puts it)")
            _classes(cfg)
            if not download:  # the batches' content, before the run folder exists (with --download: after it)
                scan_cifar10(root)
        from vislab.models.backbones import check_backbone

        check_backbone(cfg.backbone, pretrained=True, weights=cfg.weights)

    def load_data(self, ctx: RunContext) -> TwoClassData:
        from vislab.data.transforms import eval_transform

        cfg: TransferConfig = ctx.cfg
        info = self._initial_model(cfg, None).info  # normalisation; the model is kept for the first seed
        tf = eval_transform(info.mean, info.std)
        limits = {"train": cfg.limit_train, "val": cfg.limit_val, "test": cfg.limit_test}
        if _data_name(ctx.data, ctx.root) == "lfw":
            data = lfw_binary_splits(image_size=cfg.image_size, fractions=tuple(cfg.split), seed=cfg.seed,
                                     transform=tf, limits=limits)
        else:
            data = cifar_binary_splits(ctx.root, _classes(cfg), image_size=cfg.image_size,
                                       val_fraction=cfg.val_fraction, seed=cfg.seed, transform=tf,
                                       download=ctx.download, limits=limits)
        k = cfg.batch_size // 2
        small = {n: v for n, v in data.per_class("train").items() if v < k}
        if small and any(_schedule(cfg, v) != "ce_fc" for v in cfg.variants):
            raise UserError(f"triplet batches take batch_size/2 = {k} training images per class, but the training "
                            f"split has fewer: {small}; lower batch_size or raise limit_train")
        data.info.update(image_size=cfg.image_size,
                         description=" ".join(data.notes).removeprefix("Data: ").rstrip("."))
        return data

    def _initial_model(self, cfg: TransferConfig, variant: str | None) -> nn.Module:
        """The random control, or a copy of this seed's pretrained classifier (every regime of a seed starts from
        the same features and the same new FC); ``variant=None``: that classifier itself (for its normalisation)."""
        from vislab.models.backbones import create_classifier

        key = (cfg.seed, cfg.backbone, cfg.weights)
        if variant != CONTROL and (self._base is None or self._base[0] != key):
            seed_everything(cfg.seed)
            self._base = (key, create_classifier(cfg.backbone, num_classes=2, pretrained=True, weights=cfg.weights))
        if variant == CONTROL:
            seed_everything(cfg.seed)
            return create_classifier(cfg.backbone, num_classes=2, pretrained=False)
        return self._base[1] if variant is None else copy.deepcopy(self._base[1])

    def run_variant(self, ctx: RunContext, data: TwoClassData, variant: str) -> VariantResult:
        cfg: TransferConfig = ctx.cfg
        model = self._initial_model(cfg, variant)
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        schedule = _schedule(cfg, variant)
        stages: list[_Stage] = []
        feats: dict[str, tuple[Tensor, Tensor]] = {}
        extract_s = 0.0
        if schedule == "triplet_then_ce":
            stages.append(self._fit_triplet(ctx, variant, model, data))
        if schedule in ("ce_fc", "triplet_then_ce"):
            t0 = time.perf_counter()
            feats = {s: _extract(model.features, data.splits[s], cfg, ctx.device()) for s in ("train", "val")}
            extract_s = time.perf_counter() - t0
            stages.append(self._fit_head(ctx, variant, "ce" if schedule == "triplet_then_ce" else "train", model,
                                         feats, stages[0].result if stages else None))
        if schedule == "joint":
            stages.append(self._fit_joint(ctx, variant, model, data))
        ev, embedding = self._evaluate(cfg, model, data, feats, ctx.device())
        regime_time = _regime_time(stages, extract_s)
        if extract_s:
            regime_time["feature_extraction_s"] = round(extract_s, 3)
        last = stages[-1].result
        return VariantResult(
            variant=variant, seed=cfg.seed, params=int(sum(p.numel() for p in model.parameters())),
            epochs=int(sum(s.result.epochs for s in stages)),
            train={k: last.train[k] for k in ("loss", "accuracy") if k in last.train},
            val={k: ev["val"][k] for k in _KEYS}, test={k: ev["test"][k] for k in (*_KEYS, "triplet_active_fraction")},
            time=regime_time, items={"accuracy": ev["test"]["correct"]}, checkpoint=last.best_checkpoint,
            extra={"regime": REGIME_TEXT[schedule] if variant != CONTROL else f"control: {REGIME_TEXT[schedule]}",
                   "schedule": schedule, "pretrained": variant != CONTROL,
                   "batchnorm_while_features_train": (None if schedule == "ce_fc" else
                                                      "eval" if self._bn_eval(cfg, variant, model) else "train"),
                   "weights": model.info.pretrained_source, "backbone": cfg.backbone,
                   "embedding_dim": int(model.fc.in_features),
                   "stages": {s.name: {"epochs": s.result.epochs, "best_epoch": s.result.best_epoch,
                                       "trainable_params": s.trainable_params, "train": s.result.train,
                                       "time": s.result.time, "best_checkpoint": s.result.best_checkpoint}
                              for s in stages}},
            state={"model": model, "initial": initial, "embedding": embedding})

    def _evaluate(self, cfg: TransferConfig, model: nn.Module, data: TwoClassData,
                  feats: dict[str, tuple[Tensor, Tensor]], device: torch.device) -> tuple[dict, dict]:
        """Val/test metrics of ``fc(embedding)`` (eval mode: dropout off), the test triplet statistic and the
        PCA of (at most ``embed_points``) L2-normalised test embeddings."""
        model.cpu().eval()
        ev: dict[str, dict[str, Any]] = {}
        for split in ("val", "test"):  # the loop ends with the test embeddings in e, y
            e, y = feats[split] if split in feats else _extract(model.features, data.splits[split], cfg, device)
            with torch.no_grad():
                logits = model.fc(e)  # (N, 2)
            ev[split] = {"loss": float(F.cross_entropy(logits, y)),
                         **classification_report(logits, y, data.class_names),
                         "correct": (logits.argmax(1) == y).numpy().astype(np.float64)}
        sub = stratified_subsample(y, cfg.embed_points, cfg.seed)
        with torch.no_grad():
            _, st = batch_triplet_loss(e[sub], y[sub], margin=cfg.margin, mining="batch_hard", squared=cfg.squared,
                                       normalize=True)
        ev["test"]["triplet_active_fraction"] = float(st["active_fraction_all"])
        coords, explained = pca_2d(F.normalize(e[sub], dim=1))
        return ev, {"coords": coords, "labels": y[sub].numpy(), "explained": explained}

    def _meta(self, cfg: TransferConfig, variant: str, stage: str, model: nn.Module, contains: str,
              **more: Any) -> dict[str, Any]:
        return {"task": "transfer", "variant": variant, "stage": stage, "contains": contains,
                "model": {"kind": "backbone", "name": cfg.backbone, "kwargs": {"num_classes": 2},
                          "pretrained": variant != CONTROL, "weights": cfg.weights},
                "image_size": cfg.image_size, "mean": list(model.info.mean), "std": list(model.info.std), **more}

    def _module_kwargs(self, cfg: TransferConfig) -> dict[str, Any]:
        return {"weight_decay": cfg.weight_decay, "lr_patience": cfg.lr_patience, "lr_factor": cfg.lr_factor}

    def _fit_head(self, ctx: RunContext, variant: str, stage: str, model: nn.Module,
                  feats: dict[str, tuple[Tensor, Tensor]], features_stage: StageResult | None) -> _Stage:
        """CE on the FC alone, over cached embeddings of the frozen feature extractor."""
        cfg: TransferConfig = ctx.cfg
        seed_everything(cfg.seed)  # each stage seeded: a resumed earlier stage does not change this one's dropout
        model.features.requires_grad_(False)
        head = nn.Sequential(model.dropout, model.fc)  # shares the classifier's FC: training it trains model.fc
        train = train_loader(TensorDataset(*feats["train"]), batch_size=cfg.batch_size, seed=cfg.seed)
        val = eval_loader(TensorDataset(*feats["val"]), batch_size=cfg.batch_size)
        more = {"features_checkpoint": Path(features_stage.best_checkpoint).parent.name} if features_stage else {}
        meta = self._meta(cfg, variant, stage, model, "head", **more)  # the FC only, as model.1 (dropout, fc)
        module = ClassificationModule(head, lr=cfg.lr, meta=meta, **self._module_kwargs(cfg))
        res = fit_stage(ctx, module, train, val, variant=variant, stage=stage, epochs=cfg.head_epochs)
        model.features.requires_grad_(True)
        return _Stage(stage, res, sum(p.numel() for p in head.parameters()), len(train))

    def _pk_loaders(self, cfg: TransferConfig, data: TwoClassData) -> tuple[BalancedBatchSampler, Any, Any]:
        k = cfg.batch_size // 2
        n = len(data.labels["train"])
        sampler = BalancedBatchSampler(data.labels["train"], classes_per_batch=2, samples_per_class=k, seed=cfg.seed,
                                       num_batches=max(1, math.ceil(n / (2 * k))))  # about one pass per epoch
        train = torch.utils.data.DataLoader(data.splits["train"], batch_sampler=sampler, num_workers=cfg.num_workers)
        return sampler, train, eval_loader(data.splits["val"], batch_size=2 * k, num_workers=cfg.num_workers)

    def _bn_eval(self, cfg: TransferConfig, variant: str, model: nn.Module) -> nn.Module | None:
        """The module whose BatchNorm layers stay in eval mode: pretrained features with freeze_bn; never the
        random-init control, whose running statistics are those of a fresh network and must be learned."""
        return model.features if cfg.freeze_bn and variant != CONTROL else None

    def _fit_triplet(self, ctx: RunContext, variant: str, model: nn.Module, data: TwoClassData) -> _Stage:
        """Regime (b) stage 1: the feature extractor alone (the FC is not in the module) with the triplet loss."""
        cfg: TransferConfig = ctx.cfg
        seed_everything(cfg.seed)
        sampler, train, val = self._pk_loaders(cfg, data)
        module = TripletModule(model.features, triplet=_triplet_loss(cfg), batch_sampler=sampler,
                               bn_eval=self._bn_eval(cfg, variant, model), lr=cfg.backbone_lr,
                               meta=self._meta(cfg, variant, "triplet", model, "features"),
                               **self._module_kwargs(cfg))
        res = fit_stage(ctx, module, train, val, variant=variant, stage="triplet", epochs=cfg.epochs)
        return _Stage("triplet", res, sum(p.numel() for p in model.features.parameters()), len(train))

    def _fit_joint(self, ctx: RunContext, variant: str, model: nn.Module, data: TwoClassData) -> _Stage:
        """Regime (c): CE + λ·triplet on the whole classifier; features at backbone_lr, the new FC at lr."""
        cfg: TransferConfig = ctx.cfg
        seed_everything(cfg.seed)
        sampler, train, val = self._pk_loaders(cfg, data)

        def groups(m: nn.Module) -> list[dict[str, Any]]:
            return [{"params": list(m.features.parameters()), "lr": cfg.backbone_lr},
                    {"params": list(m.fc.parameters()), "lr": cfg.lr}]

        module = JointModule(model, triplet=_triplet_loss(cfg), triplet_weight=cfg.triplet_weight,
                             batch_sampler=sampler, bn_eval=self._bn_eval(cfg, variant, model), lr=cfg.lr,
                             param_groups=groups, meta=self._meta(cfg, variant, "train", model, "classifier"),
                             **self._module_kwargs(cfg))
        res = fit_stage(ctx, module, train, val, variant=variant, stage="train", epochs=cfg.epochs)
        return _Stage("train", res, sum(p.numel() for p in model.parameters()), len(train))

    def load_model(self, checkpoint: Any) -> nn.Module:
        """The classifier of a run's final stage: a whole classifier (joint, control), or the FC of a head stage
        on the packaged pretrained features (``ce_fc``) or on those of its sibling triplet stage."""
        from vislab.io.checkpoint import model_state, read_checkpoint
        from vislab.models.backbones import create_classifier

        ckpt, meta = read_checkpoint(checkpoint, "transfer", what="a transfer run")
        spec, state, sibling = meta["model"], model_state(ckpt), meta.get("features_checkpoint")
        if meta["contains"] not in ("classifier", "head"):
            raise UserError(f"{checkpoint} holds the feature extractor of a triplet stage, not a classifier")
        head = meta["contains"] == "head"
        model = create_classifier(spec["name"], pretrained=bool(spec["pretrained"] and head and not sibling),
                                  weights=spec.get("weights"), **spec["kwargs"])
        if not head:
            model.load_state_dict(state)
        else:
            model.fc.load_state_dict({"weight": state["1.weight"], "bias": state["1.bias"]})
        if head and sibling:
            feats, _ = read_checkpoint(Path(checkpoint).parent.parent / sibling / "best.ckpt", "transfer",
                                       what="a transfer run")
            model.features.load_state_dict(model_state(feats))
        return model.eval()

    def summary_extra(self, ctx: RunContext, data: TwoClassData, result: Any) -> dict[str, Any]:
        cfg: TransferConfig = ctx.cfg
        runs = result.summary["runs"]
        first = next(iter(runs.values()))
        return {"backbone": {"name": cfg.backbone, "weights": next((r["weights"] for r in runs.values()
                                                                     if r["pretrained"]), None),
                             "embedding_dim": first["embedding_dim"]},
                "triplet": {"margin": cfg.margin, "mining": cfg.mining, "distance": _distance_text(cfg),
                            "batch": f"P x K = 2 x {cfg.batch_size // 2}"},
                "control": _control_verdicts(runs, result.claims, cfg)}

    def describe(self, ctx: RunContext, data: TwoClassData) -> str:
        cfg: TransferConfig = ctx.cfg
        bn_text = ("stay in eval mode (ImageNet running statistics; the affine parameters still learn)"
                   if cfg.freeze_bn else "normalise with batch statistics (freeze_bn=false)")
        return (f"{' vs '.join(data.class_names)}. Backbone `{cfg.backbone}` with a new 2-class FC; only the FC is "
                f"newly initialised, and every pretrained regime of a seed starts from the same weights. Images "
                f"{cfg.image_size}×{cfg.image_size} px. Triplet loss: margin {cfg.margin} on {_distance_text(cfg)}, "
                f"online {cfg.mining.replace('_', '-')} mining in P×K batches (2 classes × {cfg.batch_size // 2} "
                f"images). Regime (c) minimises L_CE + {cfg.triplet_weight:g}·L_triplet. Stages that train the "
                f"feature extractor: up to {cfg.epochs} epochs at lr {cfg.backbone_lr:g} (new FC at {cfg.lr:g}); "
                f"FC-only stages: up to {cfg.head_epochs} epochs at lr {cfg.lr:g} on embeddings computed once "
                f"(frozen features, BatchNorm in eval mode). While the features of a pretrained backbone train, its "
                f"BatchNorm layers {bn_text}; the random-init control (schedule of `{cfg.control_schedule}`) always "
                f"learns its BatchNorm statistics. Early stopping on the validation loss (patience {cfg.patience}); "
                "the best epoch's weights are evaluated.")

    def report(self, ctx: RunContext, rep: Report, result: Any, data: TwoClassData) -> None:
        runs = result.summary["runs"]
        rep.heading("Regimes and stages")
        rows = []
        for v, r in runs.items():
            multi = len(r["stages"]) > 1
            stage_time = " + ".join(f"{s['time']['fit_s']:.1f}" for s in r["stages"].values())
            if "feature_extraction_s" in r["time"]:
                stage_time += f" + extract {r['time']['feature_extraction_s']:.1f}"
            epochs = " + ".join(f"{n} {s['epochs']}" if multi else str(s["epochs"]) for n, s in r["stages"].items())
            rows.append([v, r["regime"], "ImageNet" if r["pretrained"] else "random", epochs, stage_time])
        rep.table(["variant", "regime", "init", "epochs per stage", "train time s per stage"], rows,
                  caption=f"Stages of seed {result.seeds[0]}: seconds of training epochs (incl. validation), plus the "
                  "one-time feature extraction of the frozen-feature stages. 'Test active triplets' in the results "
                  "table: fraction of all test triplets (up to embed_points samples) that violate the margin on "
                  "L2-normalised features.")
        accs = {v: metric_value(r, "test", "accuracy") for v, r in runs.items()}
        rep.figure(figures.plot_bars(accs, ctx.run.figure("test_accuracy.png"), ylabel="test accuracy",
                                     title="test accuracy per regime", fmt="{:.1%}"),
                   "Test accuracy per regime (mean over seeds).")
        ctrl = result.summary.get("control") or {}
        if ctrl:
            rep.heading("Control: random initialisation")
            rep.text(f"`{CONTROL}` trains a randomly initialised `{ctx.cfg.backbone}` with the schedule of "
                     f"`{ctrl['schedule']}` (same data, epochs, learning rates and seed). Test accuracy "
                     f"{ctrl['accuracy']:.1%}.")
            rep.bullets([f"`{v}`: {p['accuracy']:.1%} — mean {'above' if p['beats_control'] else '**not above**'} "
                         f"the control; claim: **{p['verdict']}**" for v, p in ctrl["pretrained"].items()])
        rows = [r for r in ctx.run.read_metrics() if r.get("seed") in (result.seeds[0], None)]
        rep.heading("Learning curves")
        stage_curves(rep, rows, ctx.run.figure, result.seeds[0])
        rep.heading("Test embeddings (PCA)")
        first = result.variants[result.seeds[0]]
        embeddings_figure(rep, [(v, r.test["accuracy"], r.state["embedding"]) for v, r in first.items()],
                          data.class_names, ctx.run.figure("embeddings_pca.png"), result.seeds[0])


def _classes(cfg: TransferConfig) -> tuple[str, str]:
    from vislab.data.cifar import _check_classes

    try:
        return _check_classes(tuple(cfg.classes))
    except (ValueError, TypeError) as exc:
        raise UserError(f"classes: {exc}") from None


def _triplet_loss(cfg: TransferConfig) -> TripletLoss:
    return TripletLoss(margin=cfg.margin, mining=cfg.mining, squared=cfg.squared, normalize=True)


def _distance_text(cfg: TransferConfig) -> str:
    d = "squared Euclidean distance" if cfg.squared else "Euclidean distance"
    return f"the {d} between L2-normalised embeddings"


def _extract(features: nn.Module, ds: Dataset, cfg: TransferConfig, device: torch.device) -> tuple[Tensor, Tensor]:
    """Embeddings ``Tensor[N, D]`` (eval mode, no grad) and labels ``Tensor[N]`` of a dataset, on the CPU."""
    emb, y = predict(features, eval_loader(ds, batch_size=max(cfg.batch_size, 64), num_workers=cfg.num_workers),
                     device)
    features.cpu()
    return emb, y


def _regime_time(stages: list[_Stage], extract_s: float) -> dict[str, float]:
    """Timing keys for a whole regime: training seconds of all stages (+ feature extraction), mean epoch
    seconds over all epochs, and mean step milliseconds weighted by each stage's number of steps."""
    epochs = sum(s.result.epochs for s in stages)
    fit = sum(s.result.time.get("fit_s", 0.0) for s in stages)
    steps = [s.result.epochs * s.steps_per_epoch for s in stages]
    step_ms = sum(s.result.time.get("step_ms_mean", 0.0) * n for s, n in zip(stages, steps))
    return {"fit_s": round(fit + extract_s, 3),
            "epoch_s_mean": round(fit / epochs, 4) if epochs else 0.0,
            "step_ms_mean": round(step_ms / sum(steps), 3) if sum(steps) else 0.0}


def _control_verdicts(runs: dict[str, Any], claims: list[dict[str, Any]], cfg: TransferConfig) -> dict[str, Any]:
    """Each pretrained regime against the random-init control on mean test accuracy, with the claim's verdict
    (empty without a control)."""
    if CONTROL not in runs:
        return {}
    acc = metric_value(runs[CONTROL], "test", "accuracy")
    verdicts = {c["a"]: c["verdict"] for c in claims if c["b"] == CONTROL}
    pre = {v: {"accuracy": metric_value(r, "test", "accuracy"),
               "beats_control": bool(metric_value(r, "test", "accuracy") > acc), "verdict": verdicts.get(v)}
           for v, r in runs.items() if v != CONTROL}
    return {"schedule": cfg.control_schedule, "accuracy": acc, "pretrained": pre,
            "all_beat_control": all(p["beats_control"] for p in pre.values()) if pre else None,
            "all_claims_hold": all(p["verdict"] == "holds" for p in pre.values()) if pre else None}
