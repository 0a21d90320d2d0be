"""Triplet margin loss with online mining (batch-hard, semi-hard, all), written in the project.

For an anchor ``a``, a positive ``p`` (same class) and a negative ``n`` (another class) the loss is

    L(a, p, n) = max(0, d(a, p) - d(a, n) + margin)

with ``d`` the Euclidean distance, or its square when ``squared=True`` (the margin is then in
squared units). With ``normalize=True`` embeddings are L2-normalised first, so Euclidean distances
lie in [0, 2] (squared: [0, 4]).

Functions hold the maths; :class:`TripletLoss` is the module a training step calls.

* :func:`pairwise_distances` -- all distances of a batch, with a square root whose gradient stays
  finite at zero distance.
* :func:`triplet_margin_loss` -- explicit triplets (a triplet dataset). With ``squared=False`` it
  equals ``torch.nn.TripletMarginLoss(margin, p=2)`` up to that class's ``eps=1e-6``, which torch
  adds to the *difference* before the norm (``||a - p + eps||``); we do not, so the two differ by at
  most ``eps * sqrt(D)`` per distance (tested at 1e-5).
* :func:`mine_batch_hard`, :func:`mine_semi_hard`, :func:`mine_all` -- online miners with the
  semantics of pytorch-metric-learning's ``BatchHardMiner``, ``TripletMarginMiner(type_of_triplets=
  "semihard")`` and the loss's default all-triplets set (tested to give the same triplet sets).
* :func:`batch_triplet_loss` -- normalise, mine, reduce; returns the loss and statistics to log.

Adapted from the definitions in Schroff et al. 2015, "FaceNet" (https://arxiv.org/abs/1503.03832,
semi-hard negatives) and Hermans et al. 2017, "In Defense of the Triplet Loss for Person
Re-Identification" (https://arxiv.org/abs/1703.07737, batch-hard), and from the miner semantics of
https://github.com/KevinMusgrave/pytorch-metric-learning (``miners/batch_easy_hard_miner.py``,
``miners/triplet_margin_miner.py``); the code is our own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MINING_STRATEGIES",
    "REDUCTIONS",
    "TripletLoss",
    "batch_triplet_loss",
    "mine_all",
    "mine_batch_hard",
    "mine_semi_hard",
    "pairwise_distances",
    "triplet_margin_loss",
]

MINING_STRATEGIES = ("batch_hard", "semi_hard", "all")
REDUCTIONS = ("mean", "mean_active", "sum")

Triplets = tuple[Tensor, Tensor, Tensor]


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------


def _check_embeddings(emb: object, name: str = "emb") -> None:
    if not isinstance(emb, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B, D], got {type(emb).__name__}")
    if emb.dim() != 2:
        raise ValueError(f"{name} must have shape [B, D] (2-D), got shape {tuple(emb.shape)}")
    if not emb.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {emb.dtype}")


def _check_labels(labels: object, batch: int) -> None:
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of shape [B], got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(
            f"labels must have shape [B] = [{batch}] to match the embeddings, got shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must be an integer (or bool) tensor, got dtype {labels.dtype}")


def _check_margin(margin: object) -> float:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise TypeError(f"margin must be a real number >= 0, got {type(margin).__name__}")
    if not margin >= 0:  # also rejects NaN
        raise ValueError(f"margin must be >= 0, got {margin}")
    return float(margin)


def _check_choice(value: object, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# distances
# ---------------------------------------------------------------------------------------------


def _safe_sqrt(squared: Tensor) -> Tensor:
    """``sqrt`` that is 0 with gradient 0 where the input is 0 (plain sqrt has an infinite gradient)."""
    zero = squared <= 0
    # sqrt(0 + 1) keeps the backward finite; the mask then zeroes value and gradient at those entries
    return torch.sqrt(torch.where(zero, torch.ones_like(squared), squared)) * (~zero)


def pairwise_distances(emb: Tensor, *, squared: bool = False) -> Tensor:
    """Euclidean distances between all rows of a batch.

    Args:
        emb: ``Tensor[B, D]``.
        squared: return ``||x_i - x_j||^2`` instead of ``||x_i - x_j||``.

    Returns:
        ``Tensor[B, B]``, symmetric, exactly 0 on the diagonal, >= 0. Computed from the Gram matrix
        (``|x|^2 + |y|^2 - 2 x.y``, memory ``B^2`` rather than ``B^2 D``), clamped at 0 against
        round-off; the square root has a finite (zero) gradient at zero distance, so duplicated
        embeddings in a batch do not produce NaN.
    """
    _check_embeddings(emb)
    gram = emb @ emb.t()  # (B, B)
    sq_norms = gram.diagonal()  # (B,)
    d2 = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * gram).clamp_min(0.0)  # (B, B)
    # the diagonal is 0 by definition; round-off of the Gram form would leave ~1e-7 there
    d2 = d2 * (1.0 - torch.eye(emb.shape[0], dtype=emb.dtype, device=emb.device))
    return d2 if squared else _safe_sqrt(d2)


def _row_distances(x: Tensor, y: Tensor, *, squared: bool) -> Tensor:
    """``Tensor[B, D], Tensor[B, D] -> Tensor[B]``: distance between matching rows."""
    d2 = (x - y).pow(2).sum(dim=1)
    return d2 if squared else _safe_sqrt(d2)


def _reduce(losses: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean_active":
        active = losses > 0
        # mean over triplets that violate the margin; 0 (still attached to the graph) when none do
        return losses.sum() / active.sum().clamp_min(1)
    # "mean": over all triplets, 0 for an empty set (torch's mean of nothing is NaN)
    return losses.sum() / max(losses.numel(), 1)


# ---------------------------------------------------------------------------------------------
# explicit triplets
# ---------------------------------------------------------------------------------------------


def triplet_margin_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    *,
    margin: float = 0.2,
    squared: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """Triplet margin loss for explicit triplets (row ``i`` of each tensor is one triplet).

    Args:
        anchor, positive, negative: ``Tensor[B, D]`` each.
        margin: >= 0, in the units of the distance (squared units when ``squared=True``).
        squared: use squared Euclidean distances.
        reduction: ``"mean"`` (over all B triplets), ``"mean_active"`` (over triplets with a positive
            loss), ``"sum"`` or ``"none"`` (``Tensor[B]``).

    Returns:
        Scalar (or ``Tensor[B]`` for ``"none"``): ``max(0, d(a, p) - d(a, n) + margin)`` reduced.
        No normalisation is applied here; normalise the embeddings first if wanted.
    """
    for name, t in (("anchor", anchor), ("positive", positive), ("negative", negative)):
        _check_embeddings(t, name)
    if not anchor.shape == positive.shape == negative.shape:
        raise ValueError(
            "anchor, positive and negative must have the same shape [B, D], got "
            f"{tuple(anchor.shape)}, {tuple(positive.shape)} and {tuple(negative.shape)}"
        )
    margin = _check_margin(margin)
    _check_choice(reduction, "reduction", (*REDUCTIONS, "none"))
    d_ap = _row_distances(anchor, positive, squared=squared)  # (B,)
    d_an = _row_distances(anchor, negative, squared=squared)  # (B,)
    return _reduce(F.relu(d_ap - d_an + margin), reduction)


# ---------------------------------------------------------------------------------------------
# miners: indices (a, p, n), each LongTensor[T], of T triplets in the batch
# ---------------------------------------------------------------------------------------------


def _label_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """``Tensor[B] -> (Bool[B, B], Bool[B, B])``: positive pairs (same label, i != j), negative pairs."""
    same = labels[:, None] == labels[None, :]  # (B, B)
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _prepare(emb: Tensor, labels: Tensor, distances: Tensor | None, squared: bool) -> Tensor:
    _check_embeddings(emb)
    _check_labels(labels, emb.shape[0])
    if distances is None:
        with torch.no_grad():
            return pairwise_distances(emb, squared=squared)
    batch = emb.shape[0]
    if distances.shape != (batch, batch):
        raise ValueError(
            f"distances must have shape [B, B] = [{batch}, {batch}], got {tuple(distances.shape)}"
        )
    return distances.detach()


def mine_batch_hard(
    emb: Tensor, labels: Tensor, *, squared: bool = False, distances: Tensor | None = None
) -> Triplets:
    """Batch-hard mining: per anchor, its farthest positive and its closest negative.

    Args:
        emb: ``Tensor[B, D]`` (normalise first if the loss does).
        labels: ``Tensor[B]`` integer class ids.
        squared: rank by squared distances (same ranking; kept for symmetry with the loss).
        distances: optional precomputed ``Tensor[B, B]`` from :func:`pairwise_distances`.

    Returns:
        ``(a, p, n)``, each ``LongTensor[T]``: one triplet per anchor that has at least one positive
        and one negative (anchors without are skipped), in increasing anchor order -- the same set as
        pytorch-metric-learning's ``BatchHardMiner`` with ``LpDistance``.
    """
    dist = _prepare(emb, labels, distances, squared)
    pos, neg = _label_masks(labels)
    keep = pos.any(dim=1) & neg.any(dim=1)  # (B,) anchors with a positive and a negative
    p_idx = dist.masked_fill(~pos, float("-inf")).argmax(dim=1)  # hardest positive (B,)
    n_idx = dist.masked_fill(~neg, float("inf")).argmin(dim=1)  # hardest negative (B,)
    a_idx = torch.nonzero(keep).flatten()
    return a_idx, p_idx[a_idx], n_idx[a_idx]


def _triplet_mask(labels: Tensor) -> Tensor:
    """``Tensor[B] -> BoolTensor[B, B, B]``: ``[a, p, n]`` is a valid triplet."""
    pos, neg = _label_masks(labels)
    return pos[:, :, None] & neg[:, None, :]


def mine_all(emb: Tensor, labels: Tensor) -> Triplets:
    """All valid triplets of the batch (``a != p`` same class, ``n`` another class).

    Args:
        emb: ``Tensor[B, D]`` (only its batch size is used; kept for a uniform miner signature).
        labels: ``Tensor[B]``.

    Returns:
        ``(a, p, n)``, each ``LongTensor[T]``, lexicographic order; ``T`` grows as ``B^3``, memory
        ``B^3`` booleans.
    """
    _check_embeddings(emb)
    _check_labels(labels, emb.shape[0])
    a, p, n = torch.nonzero(_triplet_mask(labels), as_tuple=True)
    return a, p, n


def mine_semi_hard(
    emb: Tensor,
    labels: Tensor,
    *,
    margin: float,
    squared: bool = False,
    distances: Tensor | None = None,
) -> Triplets:
    """Semi-hard mining: every triplet whose negative is farther than the positive but within the margin.

    Keeps ``(a, p, n)`` with ``0 < d(a, n) - d(a, p) <= margin`` -- exactly pytorch-metric-learning's
    ``TripletMarginMiner(margin, type_of_triplets="semihard")``. Anchor-positive pairs with no such
    negative contribute no triplet (they are skipped, not replaced by a harder or easier negative).
    Every mined triplet has a loss in ``[0, margin)``; it is positive except exactly at the margin.

    Args:
        emb: ``Tensor[B, D]``; labels: ``Tensor[B]``; margin: >= 0 in the distance's units.
        squared: use squared distances (then ``margin`` is in squared units too).
        distances: optional precomputed ``Tensor[B, B]``.

    Returns:
        ``(a, p, n)``, each ``LongTensor[T]``, lexicographic order; memory ``B^3``.
    """
    margin = _check_margin(margin)
    dist = _prepare(emb, labels, distances, squared)
    gap = dist[:, None, :] - dist[:, :, None]  # (B, B, B): [a, p, n] -> d(a, n) - d(a, p)
    keep = _triplet_mask(labels) & (gap > 0) & (gap <= margin)
    a, p, n = torch.nonzero(keep, as_tuple=True)
    return a, p, n


# ---------------------------------------------------------------------------------------------
# the batch loss
# ---------------------------------------------------------------------------------------------


def _active_fraction_all(dist: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Fraction of *all* valid triplets of the batch with a positive loss, in ``O(B^2)`` memory.

    For each positive pair (a, p) it counts negatives with ``d(a, n) < d(a, p) + margin`` by a
    binary search in the anchor's sorted negative distances.
    """
    pos, neg = _label_masks(labels)
    total = (pos.sum(dim=1) * neg.sum(dim=1)).sum()
    if total == 0:
        return dist.new_zeros(())
    neg_sorted = dist.masked_fill(~neg, float("inf")).sort(dim=1).values  # (B, B), negatives first
    thresholds = (dist + margin).contiguous()  # (B, B): [a, p] -> d(a, p) + margin
    violating = torch.searchsorted(neg_sorted, thresholds, right=False)  # (B, B): #negatives below
    return (violating * pos).sum().to(dist.dtype) / total


def batch_triplet_loss(
    emb: Tensor,
    labels: Tensor,
    *,
    margin: float = 0.2,
    mining: str = "batch_hard",
    squared: bool = False,
    normalize: bool = True,
    reduction: str = "mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Triplet loss of a labelled batch with online mining.

    Args:
        emb: ``Tensor[B, D]`` embeddings (features of the extractor, before any classifier).
        labels: ``Tensor[B]`` integer class ids. Use a P x K batch sampler
            (:class:`vislab.data.triplets.BalancedBatchSampler`) so every anchor has positives.
        margin: >= 0, in the units of the distance (squared units when ``squared=True``).
        mining: ``"batch_hard"`` (one triplet per anchor: farthest positive, closest negative),
            ``"semi_hard"`` (all triplets with ``0 < d(a,n) - d(a,p) <= margin``) or ``"all"``.
        squared: squared Euclidean distances instead of Euclidean.
        normalize: L2-normalise the embeddings first (``F.normalize``, as pytorch-metric-learning's
            ``LpDistance(normalize_embeddings=True)``).
        reduction: ``"mean"`` over mined triplets (pml ``MeanReducer``), ``"mean_active"`` over mined
            triplets with a positive loss (pml's default ``AvgNonZeroReducer``) or ``"sum"``.

    Returns:
        ``(loss, stats)``. ``loss`` is a scalar attached to the graph, float32 for float16/bfloat16
        input (distances are computed in float32 with autocast disabled); it is exactly 0 (with zero
        gradients, no NaN) when no triplet is mined, e.g. a batch of one class or of singletons.
        ``stats`` holds detached 0-d tensors:

        * ``num_triplets``: mined triplets (int64);
        * ``active_fraction``: fraction of mined triplets with a positive loss (0 when none mined;
          close to 1 by construction for ``semi_hard``);
        * ``active_fraction_all``: fraction of *all* valid triplets of the batch with a positive loss,
          independent of the miner -- the curve to compare mining strategies;
        * ``pos_distance``, ``neg_distance``: mean d(a, p) and d(a, n) over mined triplets (0 when none).
    """
    _check_embeddings(emb)
    _check_labels(labels, emb.shape[0])
    margin = _check_margin(margin)
    _check_choice(mining, "mining", MINING_STRATEGIES)
    _check_choice(reduction, "reduction", REDUCTIONS)

    # distances in at least float32 and outside autocast: a bf16 Gram matrix would blur the ranking
    with torch.autocast(device_type=emb.device.type, enabled=False):
        x = emb.float() if emb.dtype in (torch.float16, torch.bfloat16) else emb
        x = F.normalize(x, p=2, dim=1) if normalize else x  # (B, D)
        dist = pairwise_distances(x, squared=squared)  # (B, B), differentiable
    if mining == "batch_hard":
        a, p, n = mine_batch_hard(x, labels, squared=squared, distances=dist)
    elif mining == "semi_hard":
        a, p, n = mine_semi_hard(x, labels, margin=margin, squared=squared, distances=dist)
    else:
        a, p, n = mine_all(x, labels)

    d_ap, d_an = dist[a, p], dist[a, n]  # (T,) each
    losses = F.relu(d_ap - d_an + margin)  # (T,)
    loss = _reduce(losses, reduction)
    if losses.numel() == 0:
        loss = loss + 0.0 * emb.sum()  # keep the graph so backward() works on an empty batch

    with torch.no_grad():
        num = losses.numel()
        zero = dist.new_zeros(())
        stats = {
            "num_triplets": torch.tensor(num, dtype=torch.int64, device=dist.device),
            "active_fraction": (losses > 0).to(dist.dtype).mean() if num else zero,
            "active_fraction_all": _active_fraction_all(dist.detach(), labels, margin),
            "pos_distance": d_ap.mean().detach() if num else zero,
            "neg_distance": d_an.mean().detach() if num else zero,
        }
    return loss, stats


class TripletLoss(nn.Module):
    """Module over :func:`batch_triplet_loss`; ``forward(emb, labels) -> (loss, stats)``.

    Args (keyword-only): margin, mining, squared, normalize, reduction -- see
    :func:`batch_triplet_loss`. Checked when the module is built.
    """

    def __init__(
        self,
        *,
        margin: float = 0.2,
        mining: str = "batch_hard",
        squared: bool = False,
        normalize: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.margin = _check_margin(margin)
        _check_choice(mining, "mining", MINING_STRATEGIES)
        _check_choice(reduction, "reduction", REDUCTIONS)
        self.mining = mining
        self.squared = bool(squared)
        self.normalize = bool(normalize)
        self.reduction = reduction

    def forward(self, emb: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``emb: Tensor[B, D]``, ``labels: Tensor[B]`` -> ``(loss, stats)``."""
        return batch_triplet_loss(
            emb,
            labels,
            margin=self.margin,
            mining=self.mining,
            squared=self.squared,
            normalize=self.normalize,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, mining={self.mining!r}, squared={self.squared}, "
            f"normalize={self.normalize}, reduction={self.reduction!r}"
        )
