"""Experiment ``transfer`` (SPEC §5): a pretrained ImageNet CNN with a new two-class FC, trained three ways.

Regimes (variants of one run, same data, seed and initial weights):

* ``ce_fc`` -- (a) cross-entropy on the new FC only; the feature extractor is frozen (its embeddings
  are computed once in eval mode, so BatchNorm statistics stay as pretrained, and the FC trains on
  them -- exactly what training the frozen network would do, without repeating the forward passes).
* ``triplet_then_ce`` -- (b) stage ``triplet``: the feature extractor (no FC) learns with a triplet
  margin loss on L2-normalised embeddings, online batch-hard (or semi-hard / all) mining in P x K
  batches (2 classes x K images); stage ``ce``: the FC trains with cross-entropy on the frozen,
  triplet-trained features.
* ``joint`` -- (c) ``L = L_CE + triplet_weight * L_triplet`` on the whole model, end to end.

* ``random_init`` -- the control: a randomly initialised backbone trained with the schedule of
  ``control_schedule`` (default ``joint``: the only schedule that lets a random network learn
  features). Every pretrained regime should beat it; the report says whether each did.

While a pretrained feature extractor trains ((b) stage 1, (c)), its BatchNorm layers stay in eval mode
by default (``freeze_bn``: the running statistics remain ImageNet's, the affine parameters learn), a
common choice when fine-tuning a metric-learning trunk on little data. In train mode, BatchNorm would
normalise each P x K batch of two classes with its own statistics, so the triplet loss would shape an
embedding other than the one evaluated (with eval-mode statistics); in a check on the embedded set the
validation triplets then got worse as the training loss fell. The random-init control learns its
BatchNorm statistics (it has none worth keeping).

Data: by default the embedded faces vs non-faces set (scikit-image ``lfw_subset``, 200 real 25x25
crops, split 60/20/20 stratified and seeded); ``--data cifar10-binary --root DIR [--download]``
takes two CIFAR-10 classes (``--set classes=airplane,automobile``), holds out ``val_fraction`` of
the training split for validation and tests on the official test split.

The triplet loss and mining are the project's own (``vislab.losses.triplet``), P x K batches come
from ``vislab.data.triplets.BalancedBatchSampler``.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from vislab.data.image_folder import limit_indices, stratified_split
from vislab.data.transforms import eval_transform
from vislab.data.triplets import BalancedBatchSampler
from vislab.engine.config import CommonConfig
from vislab.engine.context import RunContext
from vislab.engine.fit import StageResult, fit_stage, seed_everything
from vislab.engine.module import ClassificationModule, TaskModule, predict
from vislab.errors import UserError
from vislab.experiments.base import Experiment
from vislab.losses.triplet import MINING_STRATEGIES, TripletLoss, batch_triplet_loss
from vislab.metrics.classification import classification_report
from vislab.report import figures
from vislab.report.blocks import headline_sentence, run_footer
from vislab.report.document import Report
from vislab.report.embedding_plot import EmbeddingPanel, pca_2d, plot_embeddings

REGIMES = ("ce_fc", "triplet_then_ce", "joint")  # the three pretrained regimes (a), (b), (c)
CONTROL = "random_init"
VARIANTS = (*REGIMES, CONTROL)
DATA_NAMES = ("lfw", "cifar10-binary")
REGIME_TEXT = {
    "ce_fc": "(a) CE on the new FC; features frozen",
    "triplet_then_ce": "(b) triplet loss trains the features, then CE on the FC (features frozen)",
    "joint": "(c) L_CE + λ·L_triplet on the whole model",
}


@dataclass
class TransferConfig(CommonConfig):
    epochs: int = 10  # maximum epochs of each stage that trains the feature extractor ((b) triplet, (c), control)
    head_epochs: int = 30  # maximum epochs of each FC-only stage ((a), (b) CE stage; cheap: cached features)
    batch_size: int = 32  # images per step; triplet batches hold 2 classes x batch_size/2 images (P x K)
    lr: float = 1e-3  # learning rate of the new FC (every regime)
    backbone_lr: float = 1e-4  # learning rate of the feature extractor where it trains ((b) triplet, (c), control)
    image_size: int = 96  # square side images are resized to (the embedded crops are 25 px, CIFAR 32 px)
    patience: int = 4  # early stopping: epochs without val-loss improvement before a stage stops
    variants: tuple[str, ...] = VARIANTS  # which to run: ce_fc, triplet_then_ce, joint, random_init
    control_schedule: Literal["ce_fc", "triplet_then_ce", "joint"] = "joint"  # schedule the random_init control repeats
    backbone: str = "efficientnet_lite0"  # backbone name (vislab.models.backbones); its ImageNet weights are loaded
    weights: str | None = None  # weights file for backbones without packaged weights
    classes: tuple[str, ...] = ("airplane", "automobile")  # CIFAR-10 classes (first = label 0); cifar10-binary only
    margin: float = 0.2  # triplet margin, in Euclidean distance between L2-normalised embeddings (in [0, 2])
    mining: Literal["batch_hard", "semi_hard", "all"] = "batch_hard"  # online triplet mining in each P x K batch
    freeze_bn: bool = True  # pretrained backbones keep BatchNorm in eval mode (ImageNet stats) while features train
    squared: bool = False  # squared Euclidean distances in the triplet loss (the margin is then squared units)
    triplet_weight: float = 1.0  # λ in regime (c): L = L_CE + λ·L_triplet
    split: tuple[float, ...] = (0.6, 0.2, 0.2)  # embedded data: train/val/test fractions (stratified, seeded)
    val_fraction: float = 0.1  # cifar10-binary: fraction of the training split held out for validation
    embed_points: int = 1000  # at most this many test embeddings in the PCA plot and the test triplet statistic


@dataclass
class _Data:
    name: str
    class_names: tuple[str, ...]
    splits: dict[str, Dataset]  # train / val / test: (image Tensor[3, S, S] normalised, label)
    labels: dict[str, Tensor]  # per split, Tensor[N] int64
    root: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class _Stage:
    """One trained stage of a regime, with what the summary and report need."""

    name: str
    result: StageResult
    trainable_params: int
    steps_per_epoch: int
    train: dict[str, float]  # metrics.csv train_* values at the best epoch


# -----------------------------------------------------------------------------------------------
# Lightning task modules of this experiment
# -----------------------------------------------------------------------------------------------


class _FeatureStageMixin:
    """What a stage that trains the feature extractor does at the start of each training epoch.

    * ``set_epoch`` on the P x K batch sampler (Lightning only does it for its own samplers);
    * with ``bn_eval`` set, puts every BatchNorm layer of that module in eval mode (after Lightning's
      ``train()``): the running statistics stay as pretrained and the same normalisation is used in
      training and evaluation, while the affine parameters still learn. Lightning's validation loop
      restores these modes afterwards, so it holds for the whole stage.
    """

    batch_sampler: BalancedBatchSampler | None
    bn_eval: nn.Module | None

    def on_train_epoch_start(self) -> None:
        if self.batch_sampler is not None:
            self.batch_sampler.set_epoch(self.current_epoch)  # type: ignore[attr-defined]
        if self.bn_eval is not None:
            for m in self.bn_eval.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()


def _stats_columns(loss: Tensor, stats: dict[str, Tensor]) -> Tensor:
    """``Tensor[5]``: triplet loss, active fraction (all triplets), active fraction (mined), d(a,p), d(a,n)."""
    return torch.stack([loss.detach().float(), stats["active_fraction_all"].float(),
                        stats["active_fraction"].float(), stats["pos_distance"].float(),
                        stats["neg_distance"].float()])


def _stats_metrics(cols: Tensor) -> dict[str, float]:
    """Epoch means of :func:`_stats_columns` rows (one row per sample, so batches weigh by their size)."""
    m = cols.mean(0)
    return {"triplet_loss": float(m[0]), "active_fraction": float(m[1]), "active_fraction_mined": float(m[2]),
            "pos_distance": float(m[3]), "neg_distance": float(m[4])}


class TripletModule(_FeatureStageMixin, TaskModule):
    """Trains an embedding network alone with a batch triplet loss (regime (b), stage 1).

    ``batch = (images Tensor[B, 3, H, W], labels Tensor[B])``, ideally P x K batches. ``model`` maps
    images to ``Tensor[B, D]``. Logged per epoch: ``loss`` (= ``triplet_loss``), ``active_fraction``
    (fraction of *all* valid triplets of the batch violating the margin), ``active_fraction_mined``,
    ``pos_distance`` and ``neg_distance`` (means over mined triplets).
    """

    def __init__(self, model: nn.Module, *, triplet: TripletLoss, batch_sampler: BalancedBatchSampler | None = None,
                 bn_eval: nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.triplet = triplet
        self.batch_sampler = batch_sampler
        self.bn_eval = bn_eval

    def compute_loss(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch[0], batch[1]
        emb = self.model(x)  # (B, D)
        loss, stats = self.triplet(emb, y)
        cols = _stats_columns(loss, stats).expand(len(y), -1)  # (B, 5): the batch's values, per sample
        return loss, cols, y

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        return _stats_metrics(outputs)


class JointModule(_FeatureStageMixin, TaskModule):
    """Regime (c): ``L = CE(fc(features(x)), y) + λ · L_triplet(features(x), y)`` on a whole classifier.

    ``model`` is a :class:`vislab.models.backbones.Classifier` (``features``, ``dropout``, ``fc``).
    Logged per epoch: ``loss`` (the sum), ``ce_loss``, ``triplet_loss``, ``accuracy``, ``active_fraction``
    and the other triplet statistics of :class:`TripletModule`.
    """

    def __init__(self, model: nn.Module, *, triplet: TripletLoss, triplet_weight: float = 1.0,
                 batch_sampler: BalancedBatchSampler | None = None, bn_eval: nn.Module | None = None,
                 **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.triplet = triplet
        self.triplet_weight = float(triplet_weight)
        self.batch_sampler = batch_sampler
        self.bn_eval = bn_eval
        self.num_classes = int(model.fc.out_features)

    def compute_loss(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch[0], batch[1]
        emb = self.model.features(x)  # (B, D)
        logits = self.model.fc(self.model.dropout(emb))  # (B, C)
        ce = F.cross_entropy(logits, y, reduction="none")  # (B,)
        tl, stats = self.triplet(emb, y)
        loss = ce.mean() + self.triplet_weight * tl
        cols = _stats_columns(tl, stats).expand(len(y), -1)  # (B, 5)
        out = torch.cat([logits.detach().float(), ce.detach().float()[:, None], cols], dim=1)  # (B, C + 6)
        return loss, out, y

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        c = self.num_classes
        logits = outputs[:, :c]
        return {"accuracy": float((logits.argmax(1) == targets).float().mean()),
                "ce_loss": float(outputs[:, c].mean()), **_stats_metrics(outputs[:, c + 1:])}


# -----------------------------------------------------------------------------------------------
# the experiment
# -----------------------------------------------------------------------------------------------


class Transfer(Experiment):
    name = "transfer"
    data_help = ("default: embedded faces vs non-faces (scikit-image lfw_subset, 200 real crops); "
                 "--data cifar10-binary --root DIR [--download]: two CIFAR-10 classes "
                 "(--set classes=airplane,automobile), CIFAR's own test split; --root alone means cifar10-binary")
    Config = TransferConfig

    def __init__(self) -> None:
        # After run(): the trained classifiers and the initial (pretrained / random) weights, for inspection.
        self.models: dict[str, nn.Module] = {}
        self.initial_state: dict[str, dict[str, Tensor]] = {}

    def demo_overrides(self, quick: bool) -> dict[str, Any]:
        if quick:
            return {"epochs": 2, "head_epochs": 10, "image_size": 64, "limit_train": 80}
        return {"epochs": 8, "head_epochs": 30, "image_size": 64}

    # -------------------------------------------------------------------------------------------
    def run(self, ctx: RunContext) -> dict[str, Any]:
        cfg: TransferConfig = ctx.cfg
        self._cfg = cfg
        self._check_config(cfg, ctx)
        data_name = self._check_data(ctx)
        from vislab.models.backbones import create_classifier

        seed_everything(cfg.seed)
        base = create_classifier(cfg.backbone, num_classes=2, pretrained=True, weights=cfg.weights)
        data = self._load_data(ctx, data_name, base.info.mean, base.info.std)
        k = cfg.batch_size // 2
        small = {data.class_names[c]: int((data.labels["train"] == c).sum()) for c in range(2)}
        small = {n: v for n, v in small.items() if v < k}
        if small and any(self._schedule(v) != "ce_fc" for v in cfg.variants):
            raise UserError(f"triplet batches take batch_size/2 = {k} training images per class, but the training "
                            f"split has fewer: {small}; lower batch_size or raise limit_train")
        d = {s: len(data.labels[s]) for s in ("train", "val", "test")}
        ctx.log(f"data: {data.name}: {', '.join(data.class_names)}; train {d['train']}, val {d['val']}, "
                f"test {d['test']} at {cfg.image_size} px; backbone {cfg.backbone}")

        device = ctx.device()
        results: dict[str, dict[str, Any]] = {}
        for variant in cfg.variants:
            if variant == CONTROL:
                seed_everything(cfg.seed)
                model = create_classifier(cfg.backbone, num_classes=2, pretrained=False)
            else:
                model = copy.deepcopy(base)  # same pretrained features and the same new FC in every regime
            self.initial_state[variant] = {k: v.clone() for k, v in model.state_dict().items()}
            results[variant] = self._run_variant(ctx, variant, model, data, device)
            self.models[variant] = model

        summary = {
            "experiment": self.name,
            "data": {"name": data.name, "root": data.root, "classes": list(data.class_names), **d,
                     "image_size": cfg.image_size},
            "runs": {v: r["summary"] for v, r in results.items()},
            "backbone": {"name": cfg.backbone, "weights": base.info.pretrained_source,
                         "embedding_dim": int(base.fc.in_features)},
            "triplet": {"margin": cfg.margin, "mining": cfg.mining, "distance": _distance_text(cfg),
                        "batch": f"P x K = 2 x {k}"},
            "control": _control_verdicts(results, cfg),
        }
        if ctx.is_main:
            self._report(ctx, summary, results, data)
        return summary

    # -- configuration and data ------------------------------------------------------------------
    def validate(self, cfg: TransferConfig, data: str | None, root: str | None, download: bool = False) -> None:
        from types import SimpleNamespace

        self._cfg = cfg
        ctx = SimpleNamespace(cfg=cfg, data=data, root=root, download=download)
        self._check_config(cfg, ctx)
        self._check_data(ctx)
        from vislab.models.backbones import check_backbone

        check_backbone(cfg.backbone, pretrained=True, weights=cfg.weights)

    def _schedule(self, variant: str) -> str:
        """The training schedule a variant follows: its own, or ``control_schedule`` for the control."""
        return self._cfg.control_schedule if variant == CONTROL else variant

    def _check_config(self, cfg: TransferConfig, ctx: RunContext) -> None:
        bad = [v for v in cfg.variants if v not in VARIANTS]
        if bad or not cfg.variants:
            raise UserError(f"unknown variant(s) {bad or '(none given)'}; valid variants: {', '.join(VARIANTS)}")
        if len(set(cfg.variants)) != len(cfg.variants):
            raise UserError(f"variants lists a name twice: {list(cfg.variants)}")
        if cfg.mining not in MINING_STRATEGIES:
            raise UserError(f"mining must be one of {', '.join(MINING_STRATEGIES)}, got {cfg.mining!r}")
        if not cfg.margin >= 0:
            raise UserError(f"margin must be >= 0, got {cfg.margin}")
        if cfg.triplet_weight < 0:
            raise UserError(f"triplet_weight must be >= 0, got {cfg.triplet_weight}")
        if cfg.backbone_lr <= 0:
            raise UserError(f"backbone_lr must be > 0, got {cfg.backbone_lr}")
        if cfg.head_epochs < 1:
            raise UserError(f"head_epochs must be >= 1, got {cfg.head_epochs}")
        if cfg.batch_size < 4:
            raise UserError(f"batch_size must be >= 4 (triplet batches need 2 images of each class), "
                            f"got {cfg.batch_size}")
        if len(cfg.split) != 3 or any(f <= 0 for f in cfg.split) or abs(sum(cfg.split) - 1) > 1e-6:
            raise UserError(f"split must be three fractions > 0 that sum to 1 (train,val,test), got {list(cfg.split)}")
        if not 0 < cfg.val_fraction < 1:
            raise UserError(f"val_fraction must lie in (0, 1), got {cfg.val_fraction}")
        if cfg.embed_points < 2:
            raise UserError(f"embed_points must be >= 2, got {cfg.embed_points}")

    def _check_data(self, ctx: RunContext) -> str:
        """The data set's name, with its options checked before anything slow happens."""
        cfg: TransferConfig = ctx.cfg
        name = ctx.data or ("cifar10-binary" if ctx.root else "lfw")
        if name not in DATA_NAMES:
            raise UserError(f"unknown --data {name!r} for transfer; use cifar10-binary (with --root DIR) or leave "
                            "it out for the embedded faces vs non-faces set")
        if name == "lfw":
            if ctx.download:
                raise UserError("--download applies to --data cifar10-binary; the embedded set needs no download")
            return name
        if not ctx.root:
            raise UserError("--data cifar10-binary needs --root DIR (the folder that holds cifar-10-batches-py/, "
                            "or where --download puts it)")
        from vislab.data.cifar import _check_classes

        try:
            self._classes = _check_classes(tuple(cfg.classes))
        except (ValueError, TypeError) as exc:
            raise UserError(f"classes: {exc}") from None
        return name

    def _load_data(self, ctx: RunContext, name: str, mean: tuple, std: tuple) -> _Data:
        tf = eval_transform(mean, std)
        if name == "lfw":
            return _load_lfw(ctx.cfg, tf)
        return _load_cifar(ctx.cfg, ctx, self._classes, tf)

    # -- one regime ------------------------------------------------------------------------------
    def _run_variant(self, ctx: RunContext, variant: str, model: nn.Module, data: _Data,
                     device: torch.device) -> dict[str, Any]:
        cfg: TransferConfig = ctx.cfg
        schedule = self._schedule(variant)
        stages: list[_Stage] = []
        extract_s = 0.0
        feats: dict[str, tuple[Tensor, Tensor]] = {}
        if schedule == "triplet_then_ce":
            stages.append(self._fit_triplet(ctx, variant, model, data))
        if schedule in ("ce_fc", "triplet_then_ce"):
            t0 = time.perf_counter()
            feats = {s: _extract(model.features, data.splits[s], cfg, device) for s in ("train", "val")}
            extract_s = time.perf_counter() - t0
            stages.append(self._fit_head(ctx, variant, "ce" if schedule == "triplet_then_ce" else "train",
                                         model, feats))
        if schedule == "joint":
            stages.append(self._fit_joint(ctx, variant, model, data))

        # evaluation: embeddings of val/test in eval mode; logits = fc(embedding) (dropout is off in eval)
        model.cpu().eval()
        ev: dict[str, dict[str, Any]] = {}
        emb: dict[str, tuple[Tensor, Tensor]] = {}
        for split in ("val", "test"):
            e, y = feats[split] if split in feats else _extract(model.features, data.splits[split], cfg, device)
            emb[split] = (e, y)
            with torch.no_grad():
                logits = model.fc(e)  # (N, 2)
            rep = classification_report(logits, y, data.class_names)
            ev[split] = {"loss": float(F.cross_entropy(logits, y)), **rep}
        test_e, test_y = emb["test"]
        sub = _subsample(test_y, cfg.embed_points, cfg.seed)
        with torch.no_grad():
            _, st = batch_triplet_loss(test_e[sub], test_y[sub], margin=cfg.margin, mining="batch_hard",
                                       squared=cfg.squared, normalize=True)
        coords, explained = pca_2d(F.normalize(test_e[sub], dim=1))
        ev["test"]["triplet_active_fraction"] = float(st["active_fraction_all"])

        keys = ("loss", "accuracy", "precision", "recall", "f1")
        last = stages[-1]
        train = {k: last.train[f"train_{k}"] for k in ("loss", "accuracy") if f"train_{k}" in last.train}
        summary = {
            "params": int(sum(p.numel() for p in model.parameters())),
            "epochs": int(sum(s.result.epochs for s in stages)),
            "train": train,
            "val": {k: ev["val"][k] for k in keys},
            "test": {**{k: ev["test"][k] for k in keys},
                     "triplet_active_fraction": ev["test"]["triplet_active_fraction"]},
            "time": _regime_time(stages, extract_s),
            "regime": REGIME_TEXT[schedule] if variant != CONTROL else f"control: {REGIME_TEXT[schedule]}",
            "schedule": schedule,
            "pretrained": variant != CONTROL,
            "batchnorm_while_features_train": (None if schedule == "ce_fc" else
                                               "eval" if self._bn_eval(variant, model) is not None else "train"),
            "weights": model.info.pretrained_source,
            "backbone": cfg.backbone,
            "stages": {s.name: {"epochs": s.result.epochs, "best_epoch": s.result.best_epoch,
                                "trainable_params": s.trainable_params, "train": s.train, "time": s.result.time,
                                "best_checkpoint": s.result.best_checkpoint} for s in stages},
        }
        if extract_s:
            summary["time"]["feature_extraction_s"] = round(extract_s, 3)
        return {"summary": summary, "evals": ev,
                "embedding": {"coords": coords, "labels": test_y[sub].numpy(), "explained": explained}}

    def _meta(self, variant: str, stage: str, model: nn.Module, contains: str) -> dict[str, Any]:
        cfg: TransferConfig = self._cfg
        return {"task": "transfer", "variant": variant, "stage": stage, "contains": contains,
                "model": {"kind": "backbone", "name": cfg.backbone, "kwargs": {"num_classes": 2},
                          "pretrained": variant != CONTROL},
                "image_size": cfg.image_size, "mean": list(model.info.mean), "std": list(model.info.std)}

    def _module_kwargs(self, cfg: TransferConfig) -> dict[str, Any]:
        return {"weight_decay": cfg.weight_decay, "lr_patience": cfg.lr_patience, "lr_factor": cfg.lr_factor}

    def _fit_head(self, ctx: RunContext, variant: str, stage: str, model: nn.Module,
                  feats: dict[str, tuple[Tensor, Tensor]]) -> _Stage:
        """CE on the FC alone, over cached embeddings of the frozen feature extractor."""
        cfg: TransferConfig = ctx.cfg
        seed_everything(cfg.seed)  # each stage seeded: a resumed earlier stage does not change this one's dropout
        model.features.requires_grad_(False)
        head = nn.Sequential(model.dropout, model.fc)  # shares the classifier's FC: training it trains model.fc
        gen = torch.Generator().manual_seed(cfg.seed)
        train = DataLoader(TensorDataset(*feats["train"]), batch_size=cfg.batch_size, shuffle=True, generator=gen)
        val = DataLoader(TensorDataset(*feats["val"]), batch_size=cfg.batch_size)
        meta = self._meta(variant, stage, model, "the FC only, as model.1 (dropout, fc); features are frozen")
        module = ClassificationModule(head, lr=cfg.lr, meta=meta, **self._module_kwargs(cfg))
        res = fit_stage(ctx, module, train, val, variant=variant, stage=stage, epochs=cfg.head_epochs)
        model.features.requires_grad_(True)
        return _Stage(stage, res, sum(p.numel() for p in head.parameters()), len(train),
                      _best_row(ctx, variant, stage, res.best_epoch))

    def _pk_loaders(self, cfg: TransferConfig, data: _Data) -> tuple[BalancedBatchSampler, DataLoader, DataLoader]:
        k = cfg.batch_size // 2
        n = len(data.labels["train"])
        sampler = BalancedBatchSampler(data.labels["train"], classes_per_batch=2, samples_per_class=k, seed=cfg.seed,
                                       num_batches=max(1, math.ceil(n / (2 * k))))  # about one pass per epoch
        train = DataLoader(data.splits["train"], batch_sampler=sampler, num_workers=cfg.num_workers)
        val = DataLoader(data.splits["val"], batch_size=2 * k, num_workers=cfg.num_workers)
        return sampler, train, val

    def _bn_eval(self, variant: str, model: nn.Module) -> nn.Module | None:
        """The module whose BatchNorm layers stay in eval mode: pretrained features with freeze_bn; never the
        random-init control, whose running statistics are those of a fresh network and must be learned."""
        return model.features if self._cfg.freeze_bn and variant != CONTROL else None

    def _triplet_loss(self, cfg: TransferConfig) -> TripletLoss:
        return TripletLoss(margin=cfg.margin, mining=cfg.mining, squared=cfg.squared, normalize=True)

    def _fit_triplet(self, ctx: RunContext, variant: str, model: nn.Module, data: _Data) -> _Stage:
        """Regime (b) stage 1: the feature extractor alone (the FC is not in the module) with the triplet loss."""
        cfg: TransferConfig = ctx.cfg
        seed_everything(cfg.seed)
        sampler, train, val = self._pk_loaders(cfg, data)
        meta = self._meta(variant, "triplet", model, "the feature extractor only, as model.*")
        module = TripletModule(model.features, triplet=self._triplet_loss(cfg), batch_sampler=sampler,
                               bn_eval=self._bn_eval(variant, model), lr=cfg.backbone_lr, meta=meta,
                               **self._module_kwargs(cfg))
        res = fit_stage(ctx, module, train, val, variant=variant, stage="triplet", epochs=cfg.epochs)
        return _Stage("triplet", res, sum(p.numel() for p in model.features.parameters()), len(train),
                      _best_row(ctx, variant, "triplet", res.best_epoch))

    def _fit_joint(self, ctx: RunContext, variant: str, model: nn.Module, data: _Data) -> _Stage:
        """Regime (c): CE + λ·triplet on the whole classifier; features at backbone_lr, the new FC at lr."""
        cfg: TransferConfig = ctx.cfg
        seed_everything(cfg.seed)
        sampler, train, val = self._pk_loaders(cfg, data)

        def groups(m: nn.Module) -> list[dict[str, Any]]:
            return [{"params": list(m.features.parameters()), "lr": cfg.backbone_lr},
                    {"params": list(m.fc.parameters()), "lr": cfg.lr}]

        meta = self._meta(variant, "train", model, "the whole classifier, as model.*")
        module = JointModule(model, triplet=self._triplet_loss(cfg), triplet_weight=cfg.triplet_weight,
                             batch_sampler=sampler, bn_eval=self._bn_eval(variant, model), lr=cfg.lr,
                             param_groups=groups, meta=meta,
                             **self._module_kwargs(cfg))
        res = fit_stage(ctx, module, train, val, variant=variant, stage="train", epochs=cfg.epochs)
        return _Stage("train", res, sum(p.numel() for p in model.parameters()), len(train),
                      _best_row(ctx, variant, "train", res.best_epoch))

    # -- report ----------------------------------------------------------------------------------
    def _report(self, ctx: RunContext, summary: dict[str, Any], results: dict[str, Any], data: _Data) -> None:
        cfg: TransferConfig = ctx.cfg
        run = ctx.run
        rows = run.read_metrics()
        d = summary["data"]
        rep = Report(f"transfer — {d['name']}: {' vs '.join(data.class_names)}")
        rep.text(f"Backbone `{cfg.backbone}` (weights: {summary['backbone']['weights']}) "
                 f"with a new 2-class FC; only the FC is newly initialised, and every pretrained regime starts from "
                 f"the same weights. Images {d['image_size']}×{d['image_size']} px; train {d['train']}, "
                 f"val {d['val']}, test {d['test']}. Seed {cfg.seed}.")
        for note in data.notes:
            rep.text(note)
        bn_text = ("stay in eval mode (ImageNet running statistics; the affine parameters still learn)"
                   if cfg.freeze_bn else "normalise with batch statistics (freeze_bn=false)")
        rep.text(f"Triplet loss: margin {cfg.margin} on {summary['triplet']['distance']}, online "
                 f"{cfg.mining.replace('_', '-')} mining in P×K batches (2 classes × {cfg.batch_size // 2} images). "
                 f"Regime (c) minimises L_CE + {cfg.triplet_weight:g}·L_triplet. Stages that train the feature "
                 f"extractor: up to {cfg.epochs} epochs at lr {cfg.backbone_lr:g} (new FC at {cfg.lr:g}); "
                 f"FC-only stages: up to {cfg.head_epochs} epochs at lr {cfg.lr:g} on embeddings computed once "
                 f"(frozen features, BatchNorm in eval mode). While the features of a pretrained backbone train, its "
                 f"BatchNorm layers {bn_text}; the random-init control always learns its BatchNorm statistics. "
                 f"Early stopping on the validation loss "
                 f"(patience {cfg.patience}); the best epoch's weights are evaluated.")

        rep.heading("Comparison")
        rep.text(headline_sentence(summary["runs"], self.headline))
        header = ["variant", "regime", "init", "test accuracy", "test loss", "test F1 (macro)",
                  "test active triplets", "epochs", "train time s", "total s"]
        table = []
        for v, r in summary["runs"].items():
            t = r["test"]
            multi = len(r["stages"]) > 1
            stage_desc = " + ".join(f"{n} {s['epochs']}" if multi else str(s["epochs"])
                                    for n, s in r["stages"].items())
            stage_time = " + ".join(f"{s['time']['fit_s']:.1f}" for s in r["stages"].values())
            if "feature_extraction_s" in r["time"]:
                stage_time += f" + extract {r['time']['feature_extraction_s']:.1f}"
            table.append([v, r["regime"], "ImageNet" if r["pretrained"] else "random", t["accuracy"], t["loss"],
                          t["f1"], t["triplet_active_fraction"], stage_desc, stage_time, r["time"]["fit_s"]])
        rep.table(header, table, caption="Test metrics per regime. 'Test active triplets': fraction of all test "
                  "triplets (up to embed_points samples) that violate the margin on L2-normalised features. "
                  "Times: per stage (seconds of training epochs, incl. validation), plus the one-time feature "
                  "extraction of the frozen-feature stages.")
        accs = {v: r["test"]["accuracy"] for v, r in summary["runs"].items()}
        rep.figure(figures.plot_bars(accs, run.figure("test_accuracy.png"), ylabel="test accuracy",
                                     title="test accuracy per regime", fmt="{:.1%}"), "Test accuracy per regime.")
        ctrl = summary["control"]
        if ctrl:
            rep.heading("Control: random initialisation")
            rep.text(f"`{CONTROL}` trains a randomly initialised `{cfg.backbone}` with the schedule of "
                     f"`{cfg.control_schedule}` (same data, epochs, learning rates and seed). Test accuracy "
                     f"{ctrl['accuracy']:.1%}.")
            rep.bullets([f"`{v}`: {p['accuracy']:.1%} — {'beats' if p['beats_control'] else '**does not beat**'} "
                         "the control" for v, p in ctrl["pretrained"].items()])

        rep.heading("Learning curves")
        ce_series = [(r["variant"], r["stage"]) for r in rows if "train_accuracy" in r]
        ce_series = list(dict.fromkeys(ce_series))
        if ce_series:
            rep.figure(figures.plot_curves(rows, ["loss", "accuracy"], run.figure("curves_ce.png"), series=ce_series),
                       "Loss and accuracy per epoch of every stage with a classifier: train (solid) and validation "
                       "(dashed). For `joint` (and a joint-schedule control) the loss is L_CE + λ·L_triplet; "
                       "its parts are plotted below.")
        tri_series = list(dict.fromkeys((r["variant"], r["stage"]) for r in rows if "train_triplet_loss" in r))
        if tri_series:
            rep.figure(figures.plot_curves(rows, ["triplet_loss", "active_fraction"], run.figure("curves_triplet.png"),
                                           series=tri_series),
                       "Triplet loss and the fraction of active triplets (all valid triplets of a batch with a "
                       "positive loss) per epoch: regime (b)'s triplet stage and the joint regimes.")
        joint_series = list(dict.fromkeys((r["variant"], r["stage"]) for r in rows if "train_ce_loss" in r))
        if joint_series:
            rep.figure(figures.plot_curves(rows, ["ce_loss", "triplet_loss"], run.figure("curves_joint_parts.png"),
                                           series=joint_series),
                       "The two parts of the joint loss, train (solid) and validation (dashed).")

        rep.heading("Test embeddings (PCA)")
        panels = [EmbeddingPanel(f"{v} — acc {summary['runs'][v]['test']['accuracy']:.1%}", r["embedding"]["coords"],
                                 r["embedding"]["labels"], r["embedding"]["explained"]) for v, r in results.items()]
        rep.figure(plot_embeddings(panels, data.class_names, run.figure("embeddings_pca.png")),
                   "Test-set embeddings of each regime's feature extractor (L2-normalised, as the triplet loss sees "
                   "them) projected on their first two principal components. `ce_fc` shows the pretrained features "
                   "unchanged.")

        run_footer(rep, run, cfg.seed)
        rep.write(run.path)


# -----------------------------------------------------------------------------------------------
# helpers
# -----------------------------------------------------------------------------------------------


def _distance_text(cfg: TransferConfig) -> str:
    d = "squared Euclidean distance" if cfg.squared else "Euclidean distance"
    return f"the {d} between L2-normalised embeddings"


def _load_lfw(cfg: TransferConfig, tf: Any) -> _Data:
    from vislab.data.lfw import TensorImageDataset, lfw_faces_vs_nonfaces

    images, labels, names = lfw_faces_vs_nonfaces(image_size=cfg.image_size, seed=cfg.seed)
    split = stratified_split(labels.tolist(), tuple(cfg.split), seed=cfg.seed)
    lab = labels.tolist()
    for key, lim in (("train", cfg.limit_train), ("val", cfg.limit_val), ("test", cfg.limit_test)):
        split[key] = limit_indices(split[key], lim, lab, cfg.seed)
    splits = {k: TensorImageDataset(images[idx], labels[idx], transform=tf) for k, idx in split.items()}
    return _Data("embedded-lfw-faces", tuple(names), splits, {k: labels[idx] for k, idx in split.items()},
                 notes=["Data: scikit-image `lfw_subset` — 100 face crops from Labeled Faces in the Wild and 100 "
                        "non-face crops of the same photos (25×25 gray, repeated to RGB and upscaled); split "
                        f"{'/'.join(f'{f:g}' for f in cfg.split)} stratified with seed {cfg.seed}."])


def _load_cifar(cfg: TransferConfig, ctx: RunContext, names: tuple[str, str], tf: Any) -> _Data:
    from vislab.data.cifar import CifarBinary

    try:
        full = CifarBinary(ctx.root, "train", classes=names, image_size=cfg.image_size, download=ctx.download,
                           transform=tf)
        test = CifarBinary(ctx.root, "test", classes=names, image_size=cfg.image_size, download=ctx.download,
                           transform=tf, limit=cfg.limit_test, seed=cfg.seed)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    lab = full.labels.tolist()
    vf = cfg.val_fraction
    parts = stratified_split(lab, (1 - vf, vf, 0.0), seed=cfg.seed)
    train_idx = sorted(parts["train"] + parts["test"])  # stratified_split keeps >= 1 per class in "test"
    val_idx = parts["val"]
    train_idx = limit_indices(train_idx, cfg.limit_train, lab, cfg.seed)
    val_idx = limit_indices(val_idx, cfg.limit_val, lab, cfg.seed)
    for split, idx in (("train", train_idx), ("val", val_idx)):
        present = {lab[i] for i in idx}
        if present != {0, 1}:
            raise UserError(f"the CIFAR-10 {split} split has no image of class(es) "
                            f"{[names[c] for c in (0, 1) if c not in present]} (too few images? check limit_{split})")
    if set(test.labels.tolist()) != {0, 1}:
        raise UserError(f"the CIFAR-10 test split holds {len(test)} image(s) of {list(names)}; both classes needed")
    splits = {"train": Subset(full, train_idx), "val": Subset(full, val_idx), "test": test}
    labels = {"train": full.labels[train_idx], "val": full.labels[val_idx], "test": test.labels}
    note = (f"Data: CIFAR-10 classes {names[0]} (label 0) and {names[1]} (label 1) from {ctx.root}; "
            f"{vf:.0%} of the training split held out for validation (stratified, seed {cfg.seed}), the official "
            f"test split for testing; 32×32 images resized to {cfg.image_size}×{cfg.image_size}.")
    return _Data("cifar10-binary", names, splits, labels, root=str(ctx.root), notes=[note])


def _extract(features: nn.Module, ds: Dataset, cfg: TransferConfig, device: torch.device) -> tuple[Tensor, Tensor]:
    """Embeddings ``Tensor[N, D]`` (eval mode, no grad) and labels ``Tensor[N]`` of a dataset, on the CPU."""
    loader = DataLoader(ds, batch_size=max(cfg.batch_size, 64), num_workers=cfg.num_workers)
    emb, y = predict(features, loader, device)
    features.cpu()
    return emb, y


def _subsample(labels: Tensor, n: int, seed: int) -> Tensor:
    """At most ``n`` indices, class-stratified and seeded (all of them when there are few)."""
    if len(labels) <= n:
        return torch.arange(len(labels))
    idx = limit_indices(list(range(len(labels))), n, labels.tolist(), seed)
    return torch.tensor(idx, dtype=torch.int64)


def _best_row(ctx: RunContext, variant: str, stage: str, epoch: int) -> dict[str, float]:
    for r in ctx.run.read_metrics():
        if r.get("variant") == variant and r.get("stage") == stage and r.get("epoch") == epoch:
            return {k: v for k, v in r.items() if k.startswith("train_") and isinstance(v, float)}
    return {}


def _regime_time(stages: list[_Stage], extract_s: float) -> dict[str, float]:
    """Spec timing keys for a whole regime: training seconds of all stages (+ feature extraction), mean epoch
    seconds over all epochs, and mean step milliseconds weighted by each stage's number of steps."""
    epochs = sum(s.result.epochs for s in stages)
    fit = sum(s.result.time.get("fit_s", 0.0) for s in stages)
    steps = [s.result.epochs * s.steps_per_epoch for s in stages]
    step_ms = sum(s.result.time.get("step_ms_mean", 0.0) * n for s, n in zip(stages, steps))
    return {"fit_s": round(fit + extract_s, 3),
            "epoch_s_mean": round(fit / epochs, 4) if epochs else 0.0,
            "step_ms_mean": round(step_ms / sum(steps), 3) if sum(steps) else 0.0}


def _control_verdicts(results: dict[str, Any], cfg: TransferConfig) -> dict[str, Any]:
    """Does each pretrained regime beat the random-init control on test accuracy? (empty without a control)."""
    if CONTROL not in results:
        return {}
    acc = results[CONTROL]["summary"]["test"]["accuracy"]
    pre = {v: {"accuracy": r["summary"]["test"]["accuracy"],
               "beats_control": bool(r["summary"]["test"]["accuracy"] > acc)}
           for v, r in results.items() if v != CONTROL}
    return {"schedule": cfg.control_schedule, "accuracy": acc, "pretrained": pre,
            "all_beat_control": all(p["beats_control"] for p in pre.values()) if pre else None}

