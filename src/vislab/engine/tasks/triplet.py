"""Lightning task modules that train a feature extractor with a triplet loss: the embedding alone
(:class:`TripletModule`) or a whole classifier with ``L_CE + λ·L_triplet`` (:class:`JointModule`).

Both take P x K batches (:class:`vislab.data.triplets.BalancedBatchSampler`) and log the triplet statistics
of :class:`vislab.losses.triplet.TripletLoss` per epoch: ``triplet_loss``, ``active_fraction`` (fraction of
*all* valid triplets of a batch that violate the margin), ``active_fraction_mined``, ``pos_distance``,
``neg_distance``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vislab.data.triplets import BalancedBatchSampler
from vislab.engine.module import TaskModule
from vislab.losses.triplet import TripletLoss

__all__ = ["FeatureStageMixin", "JointModule", "TripletModule", "stats_columns", "stats_metrics"]


class FeatureStageMixin:
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


def stats_columns(loss: Tensor, stats: dict[str, Tensor]) -> Tensor:
    """``Tensor[5]``: triplet loss, active fraction (all triplets), active fraction (mined), d(a,p), d(a,n)."""
    return torch.stack([loss.detach().float(), stats["active_fraction_all"].float(),
                        stats["active_fraction"].float(), stats["pos_distance"].float(),
                        stats["neg_distance"].float()])


def stats_metrics(cols: Tensor) -> dict[str, float]:
    """Epoch means of :func:`stats_columns` rows (one row per sample, so batches weigh by their size)."""
    m = cols.mean(0)
    return {"triplet_loss": float(m[0]), "active_fraction": float(m[1]), "active_fraction_mined": float(m[2]),
            "pos_distance": float(m[3]), "neg_distance": float(m[4])}


class TripletModule(FeatureStageMixin, TaskModule):
    """Trains an embedding network alone with a batch triplet loss.

    ``batch = (images Tensor[B, 3, H, W], labels Tensor[B])``, ideally P x K batches. ``model`` maps
    images to ``Tensor[B, D]``. Logged per epoch: ``loss`` (= ``triplet_loss``) and the triplet statistics.
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
        cols = stats_columns(loss, stats).expand(len(y), -1)  # (B, 5): the batch's values, per sample
        return loss, cols, y

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        return stats_metrics(outputs)


class JointModule(FeatureStageMixin, TaskModule):
    """``L = CE(fc(features(x)), y) + λ · L_triplet(features(x), y)`` on a whole classifier.

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
        cols = stats_columns(tl, stats).expand(len(y), -1)  # (B, 5)
        out = torch.cat([logits.detach().float(), ce.detach().float()[:, None], cols], dim=1)  # (B, C + 6)
        return loss, out, y

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        c = self.num_classes
        logits = outputs[:, :c]
        return {"accuracy": float((logits.argmax(1) == targets).float().mean()),
                "ce_loss": float(outputs[:, c].mean()), **stats_metrics(outputs[:, c + 1:])}
