"""Two-class image sets of the transfer experiment, split once and seeded: the embedded faces vs non-faces
crops (scikit-image ``lfw_subset``) and two CIFAR-10 classes.

Each loader returns a :class:`TwoClassData`: the three splits (datasets yielding ``(image, label)``), their
label tensors, the class names and one sentence that describes the data for a report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from vislab.data.image_folder import limit_indices, stratified_split
from vislab.errors import UserError

__all__ = ["TwoClassData", "cifar_binary_splits", "lfw_binary_splits", "stratified_subsample"]


@dataclass
class TwoClassData:
    name: str
    class_names: tuple[str, ...]
    splits: dict[str, Dataset]  # train / val / test: (image Tensor[3, S, S], label)
    labels: dict[str, Tensor]  # per split, Tensor[N] int64
    root: str | None = None
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # name, classes, split sizes, image size, description

    def __post_init__(self) -> None:
        self.info.update({"name": self.name, "root": self.root, "classes": list(self.class_names),
                          **{k: len(v) for k, v in self.labels.items()}})

    def per_class(self, split: str) -> dict[str, int]:
        """``{class name: number of images}`` of one split."""
        return {n: int((self.labels[split] == c).sum()) for c, n in enumerate(self.class_names)}


def stratified_subsample(labels: Tensor, n: int, seed: int) -> Tensor:
    """At most ``n`` indices of ``labels``, class-stratified and seeded (all of them when there are few)."""
    if len(labels) <= n:
        return torch.arange(len(labels))
    return torch.tensor(limit_indices(list(range(len(labels))), n, labels.tolist(), seed), dtype=torch.int64)


def _limits(limits: dict[str, int | None] | None) -> dict[str, int | None]:
    return {k: (limits or {}).get(k) for k in ("train", "val", "test")}


def lfw_binary_splits(*, image_size: int, fractions: tuple[float, ...], seed: int, transform: Any = None,
                      limits: dict[str, int | None] | None = None) -> TwoClassData:
    """Faces vs non-faces (200 real 25×25 crops), split ``fractions`` (train/val/test) stratified with ``seed``;
    ``limits`` caps each split (class-balanced)."""
    from vislab.data.lfw import TensorImageDataset, lfw_faces_vs_nonfaces

    images, labels, names = lfw_faces_vs_nonfaces(image_size=image_size, seed=seed)
    split = stratified_split(labels.tolist(), tuple(fractions), seed=seed)
    lab = labels.tolist()
    for key, lim in _limits(limits).items():
        split[key] = limit_indices(split[key], lim, lab, seed)
    splits = {k: TensorImageDataset(images[idx], labels[idx], transform=transform) for k, idx in split.items()}
    note = ("Data: scikit-image `lfw_subset` — 100 face crops from Labeled Faces in the Wild and 100 non-face crops "
            "of the same photos (25×25 gray, repeated to RGB and upscaled); split "
            f"{'/'.join(f'{f:g}' for f in fractions)} stratified with seed {seed}.")
    return TwoClassData("embedded-lfw-faces", tuple(names), splits, {k: labels[idx] for k, idx in split.items()},
                        notes=[note])


def cifar_binary_splits(root: str, classes: tuple[str, str], *, image_size: int, val_fraction: float, seed: int,
                        transform: Any = None, download: bool = False,
                        limits: dict[str, int | None] | None = None) -> TwoClassData:
    """Two CIFAR-10 classes (first = label 0): ``val_fraction`` of the training split held out for validation
    (stratified, seeded), the official test split for testing. Missing files or a split without both classes
    are one :class:`UserError` line."""
    from vislab.data.cifar import CifarBinary

    lim = _limits(limits)
    try:
        full = CifarBinary(root, "train", classes=classes, image_size=image_size, download=download,
                           transform=transform)
        test = CifarBinary(root, "test", classes=classes, image_size=image_size, download=download,
                           transform=transform, limit=lim["test"], seed=seed)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    lab = full.labels.tolist()
    parts = stratified_split(lab, (1 - val_fraction, val_fraction, 0.0), seed=seed)
    train_idx = sorted(parts["train"] + parts["test"])  # stratified_split keeps >= 1 per class in "test"
    train_idx = limit_indices(train_idx, lim["train"], lab, seed)
    val_idx = limit_indices(parts["val"], lim["val"], lab, seed)
    for split, idx in (("train", train_idx), ("val", val_idx)):
        present = {lab[i] for i in idx}
        if present != {0, 1}:
            raise UserError(f"the CIFAR-10 {split} split has no image of class(es) "
                            f"{[classes[c] for c in (0, 1) if c not in present]} (too few images? check "
                            f"limit_{split})")
    if set(test.labels.tolist()) != {0, 1}:
        raise UserError(f"the CIFAR-10 test split holds {len(test)} image(s) of {list(classes)}; both classes needed")
    splits = {"train": Subset(full, train_idx), "val": Subset(full, val_idx), "test": test}
    labels = {"train": full.labels[train_idx], "val": full.labels[val_idx], "test": test.labels}
    note = (f"Data: CIFAR-10 classes {classes[0]} (label 0) and {classes[1]} (label 1) from {root}; "
            f"{val_fraction:.0%} of the training split held out for validation (stratified, seed {seed}), the "
            f"official test split for testing; 32×32 images resized to {image_size}×{image_size}.")
    return TwoClassData("cifar10-binary", tuple(classes), splits, labels, root=str(root), notes=[note])
