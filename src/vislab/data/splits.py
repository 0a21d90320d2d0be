"""Seeded, stratified splits of labelled image sets, and two in-memory image sets built on them.

* :func:`limited_split` — a train/val/test split of one labelled list (``stratified_split``), each part cut
  to an optional limit keeping class proportions;
* :func:`holdout_split` — train/val indices of a set whose test split comes separately (CIFAR-10's training
  batches): ``val_fraction`` held out per class;
* :func:`shapes_in_memory` — the generated five-shape images (``vislab.data.shapes``) split 80/10/10, as
  uint8 tensors with each image's object box (for pointing games);
* :class:`NormalizedImages` — one split as a dataset of normalised float images;
* :func:`cifar10_in_memory` — CIFAR-10's ten classes from the pickle batches, a held-out val part of the
  training batches and the official test split, as uint8 tensors (optionally resized).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from vislab.data.image_folder import limit_indices, stratified_split

__all__ = ["ImageSplits", "NormalizedImages", "cifar10_in_memory", "holdout_split", "limited_split", "shapes_in_memory"]

SPLITS = ("train", "val", "test")


@dataclass
class ImageSplits:
    """Images held in memory per split: ``images[split]`` uint8 ``Tensor[N, 3, S, S]``, ``labels[split]`` int64
    ``Tensor[N]``, ``boxes[split]`` one ``[x0, y0, x1, y1]`` (image pixels) or ``None`` per image."""

    name: str
    classes: list[str]
    images: dict[str, Tensor]
    labels: dict[str, Tensor]
    boxes: dict[str, list[list[float] | None]]
    root: str

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.labels.items()}


class NormalizedImages(Dataset):
    """``(Tensor[3, S, S] float normalised, label)`` from ``uint8 Tensor[N, 3, S, S]`` images held in memory."""

    def __init__(self, images: Tensor, labels: Tensor, mean: tuple, std: tuple) -> None:
        self.images, self.labels = images, labels
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return (self.images[i].float() / 255.0 - self.mean) / self.std, int(self.labels[i])

    def all(self) -> Tensor:
        """Every image, normalised: ``Tensor[N, 3, S, S]``."""
        return (self.images.float() / 255.0 - self.mean) / self.std


def limited_split(labels: Sequence[int], *, seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                  limits: Mapping[str, int | None] | None = None) -> dict[str, list[int]]:
    """``stratified_split(labels, fractions, seed=seed)`` with each part cut to ``limits[part]`` (``None``: all),
    class proportions kept (``limit_indices``)."""
    split = stratified_split(labels, fractions, seed=seed)
    for key, lim in (limits or {}).items():
        if key not in split:
            raise ValueError(f"limits: unknown split {key!r}; expected train, val or test")
        split[key] = limit_indices(split[key], lim, labels, seed)
    return split


def holdout_split(labels: Sequence[int], val_fraction: float, *, seed: int, limit_train: int | None = None,
                  limit_val: int | None = None) -> tuple[list[int], list[int]]:
    """Sorted ``(train, val)`` indices: ``val_fraction`` of each class held out for validation (seeded), each
    part cut to its limit keeping class proportions."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    parts = stratified_split(labels, (1 - val_fraction, val_fraction, 0.0), seed=seed)
    train = sorted(parts["train"] + parts["test"])  # stratified_split keeps >= 1 per class in "test"
    return (limit_indices(train, limit_train, labels, seed),
            limit_indices(sorted(parts["val"]), limit_val, labels, seed))


def shapes_in_memory(*, per_class: int, size: int, seed: int, limits: Mapping[str, int | None] | None = None,
                     cache_dir: str | Path | None = None, write: bool = True,
                     log: Callable[[str], None] | None = None) -> ImageSplits:
    """The generated shapes (``per_class`` images of each of the five classes at ``size`` px, drawn once with
    seed 0 into ``cache_dir``, default the data cache), split 80/10/10 stratified with ``seed``, each split
    decoded into memory with the object boxes scaled to ``size``. ``write=False`` (DDP children) reuses the
    folder rank 0 wrote."""
    from vislab.data.generated import default_cache_dir
    from vislab.data.image_folder import load_rgb, read_boxes, scan_image_folder
    from vislab.data.shapes import write_shapes_folder

    root = Path(cache_dir or default_cache_dir()) / f"shapes-{per_class}-{size}"
    if write:
        t0 = time.perf_counter()
        write_shapes_folder(root, per_class=per_class, size=size, seed=0)
        if log:
            log(f"data: shapes folder {root} ready in {time.perf_counter() - t0:.1f} s")
    scan = scan_image_folder(root, verify=False)
    labels = [y for _, y in scan.items]
    split = limited_split(labels, seed=seed, limits=limits)
    boxes_json = read_boxes(root)
    bw, bh = boxes_json.get("_image_size", [size, size])
    scale = (size / bw, size / bh, size / bw, size / bh)
    images, ys, boxes = {}, {}, {}
    for key in SPLITS:
        items = [scan.items[i] for i in split[key]]
        images[key] = torch.stack([load_rgb(root / rel, size) for rel, _ in items])  # (N, 3, S, S) uint8
        ys[key] = torch.tensor([y for _, y in items], dtype=torch.int64)
        boxes[key] = [[v * s for v, s in zip(boxes_json[rel], scale)] if rel in boxes_json else None
                      for rel, _ in items]
    return ImageSplits("embedded-shapes", list(scan.classes), images, ys, boxes, str(root))


def cifar10_in_memory(root: str | Path, *, val_fraction: float, seed: int, image_size: int = 32,
                      limits: Mapping[str, int | None] | None = None, download: bool = False) -> ImageSplits:
    """All ten CIFAR-10 classes: ``val_fraction`` of the training batches held out per class for validation,
    the official test batch for testing, each cut to ``limits`` (class proportions kept), resized (antialiased)
    when ``image_size`` is not 32. ``download`` fetches a missing split through torchvision (md5-checked).

    Raises:
        FileNotFoundError: a split is missing and ``download`` is False (the message says where it looked).
        ValueError: a batch file is not CIFAR-10's format (the message names the split and the file).
    """
    from vislab.data.cifar import _TV, load_cifar10_split, resolve_cifar10_folder

    root = Path(root).expanduser()
    limits = dict(limits or {})
    loaded = {}
    for split in ("train", "test"):
        try:
            resolve_cifar10_folder(root, split)
        except FileNotFoundError:
            if not download:
                raise
            _TV(str(root), train=split == "train", download=True)  # downloads, checks md5, extracts
        try:
            loaded[split] = load_cifar10_split(root, split)
        except ValueError as exc:
            raise ValueError(f"CIFAR-10 {split}: {exc}") from None
    train_x, train_y, names = loaded["train"]
    test_x, test_y, _ = loaded["test"]
    tr, va = holdout_split(train_y.tolist(), val_fraction, seed=seed, limit_train=limits.get("train"),
                           limit_val=limits.get("val"))
    te = limit_indices(list(range(len(test_y))), limits.get("test"), test_y.tolist(), seed)
    images = {"train": train_x[tr], "val": train_x[va], "test": test_x[te]}  # (N, 3, 32, 32) uint8
    ys = {"train": train_y[tr], "val": train_y[va], "test": test_y[te]}
    if image_size != 32:
        from torchvision.transforms.v2 import functional as TF

        images = {k: TF.resize(v, [image_size, image_size], antialias=True) for k, v in images.items()}
    boxes: dict[str, list[list[float] | None]] = {k: [None] * len(v) for k, v in ys.items()}
    return ImageSplits("cifar10", list(names), images, ys, boxes, str(root))
