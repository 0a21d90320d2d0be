"""Sampling for triplet learning: explicit (anchor, positive, negative) items and P x K batches.

Two ways to feed :mod:`vislab.losses.triplet`:

* **Online mining (recommended for training the feature extractor).** Load the plain
  ``(image, label)`` dataset through ``DataLoader(ds, batch_sampler=BalancedBatchSampler(labels,
  classes_per_batch=P, samples_per_class=K, seed=s))``: every batch holds K images of each of P
  classes, so every anchor has K - 1 positives and (P - 1) K negatives, and
  ``batch_triplet_loss(emb, labels, mining="batch_hard" | "semi_hard")`` always finds triplets. With a
  random batch of a binary set this is usually true too, but not guaranteed, and the class balance
  drifts from batch to batch.
* **Explicit triplets.** :class:`TripletDataset` wraps any dataset and yields
  ``(anchor, positive, negative, labels)``; embed the three and use
  ``triplet_margin_loss(f(a), f(p), f(n))``, or concatenate them with their labels and mine in the
  batch. The triplets are random (positive uniform over the anchor's class, negative uniform over
  the other classes' samples), deterministic per ``(seed, epoch, index)``.

Both need :meth:`set_epoch` to be called each epoch to draw new triplets / batches. Lightning calls
``set_epoch`` only on ``loader.sampler`` and ``loader.batch_sampler.sampler``, never on a custom batch
sampler or on a dataset, so the experiment must call it (e.g. in ``on_train_epoch_start``). For
:class:`TripletDataset` with ``num_workers > 0`` that only reaches the workers when they are re-created
each epoch (``persistent_workers=False``, the default). Under DDP, give the sampler ``num_replicas`` and
``rank`` and build the trainer with ``use_distributed_sampler=False`` (Lightning cannot re-wrap a custom
batch sampler).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

__all__ = ["BalancedBatchSampler", "TripletDataset"]


def _labels_array(labels: object) -> np.ndarray:
    arr = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be one-dimensional [N], got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _first(item: object) -> object:
    """The image of a dataset item: ``item[0]`` for ``(image, label, ...)`` tuples, else the item."""
    return item[0] if isinstance(item, (tuple, list)) else item


class TripletDataset(Dataset):
    """Item ``i`` is ``(anchor, positive, negative, labels)`` with the anchor ``base_dataset[i]``.

    Args:
        base_dataset: any map-style dataset whose items are ``(image, label, ...)`` or ``image``.
        labels: ``[N]`` integer labels of ``base_dataset`` (given so that sampling never loads images).
        seed: with the epoch (:meth:`set_epoch`) and the index, fixes the drawn positive and negative.

    Returns (per item):
        ``anchor, positive, negative``: the three images as the base dataset returns them;
        ``labels``: ``Tensor[3]`` int64 (anchor, positive, negative); batched: ``Tensor[B, 3]``.

    Raises:
        ValueError: length mismatch, fewer than two classes, or a class with a single sample (its
            anchor would have no positive).
    """

    def __init__(self, base_dataset: Dataset, labels: Sequence[int] | Tensor, *, seed: int = 0) -> None:
        self.base = base_dataset
        self.labels = _labels_array(labels)
        if len(self.labels) != len(base_dataset):
            raise ValueError(
                f"labels has {len(self.labels)} entries but base_dataset has {len(base_dataset)} items"
            )
        classes, counts = np.unique(self.labels, return_counts=True)
        if len(classes) < 2:
            raise ValueError(f"a triplet needs two classes, got labels with classes {classes.tolist()}")
        single = classes[counts < 2].tolist()
        if single:
            raise ValueError(f"every class needs at least 2 samples for a positive; classes {single} have 1")
        self.seed = int(seed)
        self.epoch = 0
        self._members = {int(c): np.flatnonzero(self.labels == c) for c in classes}  # class -> indices
        self._others = {int(c): np.flatnonzero(self.labels != c) for c in classes}

    def set_epoch(self, epoch: int) -> None:
        """Draw a new set of triplets (same seed + same epoch -> same triplets)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def triplet_indices(self, i: int) -> tuple[int, int, int]:
        """``(i, positive index, negative index)`` drawn for anchor ``i`` in the current epoch."""
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} items")
        rng = np.random.default_rng([self.seed, self.epoch, i])
        y = int(self.labels[i])
        same = self._members[y]
        j = int(rng.integers(len(same) - 1))  # a position among the class members other than i
        pos = int(same[j] if same[j] < i else same[j + 1])  # members are sorted: skip i itself
        neg = int(self._others[y][rng.integers(len(self._others[y]))])
        return i, pos, neg

    def __getitem__(self, i: int) -> tuple[object, object, object, Tensor]:
        a, p, n = self.triplet_indices(i)
        labels = torch.as_tensor(self.labels[[a, p, n]], dtype=torch.int64)  # (3,)
        return _first(self.base[a]), _first(self.base[p]), _first(self.base[n]), labels


class BalancedBatchSampler(Sampler[list[int]]):
    """P x K batches: ``classes_per_batch`` classes, ``samples_per_class`` distinct samples of each.

    Args:
        labels: ``[N]`` integer labels of the dataset.
        classes_per_batch: P >= 2 classes per batch (chosen at random when the dataset has more).
        samples_per_class: K >= 2 samples of each chosen class; every class needs at least K.
        seed: with the epoch (:meth:`set_epoch`), fixes the batches.
        num_batches: batches per epoch over all replicas; default ``N // (P K)`` (at least 1), about
            one pass over the data.
        num_replicas, rank: for data-parallel training every rank draws the same global sequence
            and keeps the batches ``b`` with ``b % num_replicas == rank`` (disjoint batches). ``None``
            (the default) reads both from ``torch.distributed`` when the batches are drawn — the
            world size and rank of an initialised process group, else 1 and 0 — so the same sampler
            object works in one process and under Lightning DDP (which builds the process group after
            the loaders exist; give the trainer ``use_distributed_sampler=False``, as ``fit_stage``
            does for a custom batch sampler).

    Each class's indices are consumed from a seeded permutation, refreshed when fewer than K remain,
    so within an epoch a sample repeats only after all of its class has been used. Yields ``list[int]``
    of length P K, classes in blocks of K (use as ``DataLoader(..., batch_sampler=...)``).
    """

    def __init__(
        self,
        labels: Sequence[int] | Tensor,
        *,
        classes_per_batch: int,
        samples_per_class: int,
        seed: int = 0,
        num_batches: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        self.labels = _labels_array(labels)
        self.classes_per_batch = _check_int(classes_per_batch, "classes_per_batch", 2)
        self.samples_per_class = _check_int(samples_per_class, "samples_per_class", 2)
        if num_replicas is None and rank is not None:
            raise ValueError("rank needs num_replicas (or give neither: then torch.distributed decides)")
        self._fixed_replicas = num_replicas is not None
        self._num_replicas = 1 if num_replicas is None else _check_int(num_replicas, "num_replicas", 1)
        self._rank = 0 if rank is None else _check_int(rank, "rank", 0)
        if self._rank >= self._num_replicas:
            raise ValueError(f"rank must be < num_replicas = {self._num_replicas}, got {self._rank}")
        classes, counts = np.unique(self.labels, return_counts=True)
        if len(classes) < self.classes_per_batch:
            raise ValueError(
                f"classes_per_batch = {self.classes_per_batch} but the labels hold only {len(classes)} "
                f"classes {classes.tolist()}"
            )
        small = {int(c): int(n) for c, n in zip(classes, counts) if n < self.samples_per_class}
        if small:
            raise ValueError(
                f"samples_per_class = {self.samples_per_class} but some classes have fewer samples "
                f"(class: count) {small}"
            )
        batch = self.classes_per_batch * self.samples_per_class
        default = max(len(self.labels) // batch, 1)
        self.num_batches = default if num_batches is None else _check_int(num_batches, "num_batches", 1)
        self._check_replicas()
        self.seed = int(seed)
        self.epoch = 0
        self._classes = classes
        self._members = [np.flatnonzero(self.labels == c) for c in classes]

    @property
    def num_replicas(self) -> int:
        if not self._fixed_replicas and torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size()
        return self._num_replicas

    @property
    def rank(self) -> int:
        if not self._fixed_replicas and torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank()
        return self._rank

    def _check_replicas(self) -> None:
        if self.num_batches < self.num_replicas:
            raise ValueError(
                f"num_batches = {self.num_batches} is fewer than num_replicas = {self.num_replicas}; "
                "every rank needs at least one batch"
            )

    def set_epoch(self, epoch: int) -> None:
        """Draw new batches (same seed + same epoch -> same batches)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches // self.num_replicas

    def _global_batches(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        k = self.samples_per_class
        pools = [rng.permutation(m) for m in self._members]
        cursor = [0] * len(pools)
        for _ in range(self.num_batches):
            batch: list[int] = []
            for c in rng.choice(len(self._classes), size=self.classes_per_batch, replace=False):
                if cursor[c] + k > len(pools[c]):  # not enough left: a fresh permutation of the class
                    pools[c], cursor[c] = rng.permutation(self._members[c]), 0
                batch.extend(int(j) for j in pools[c][cursor[c] : cursor[c] + k])
                cursor[c] += k
            yield batch

    def __iter__(self) -> Iterator[list[int]]:
        self._check_replicas()
        replicas, rank = self.num_replicas, self.rank
        usable = (self.num_batches // replicas) * replicas  # the same count on every rank
        for b, batch in enumerate(self._global_batches()):
            if b >= usable:
                break
            if b % replicas == rank:
                yield batch
