"""CIFAR-10 restricted to two named classes (airplane vs automobile by default), relabelled 0/1.

Files are the standard ``cifar-10-batches-py`` pickle layout (``data_batch_1`` .. ``data_batch_5``,
``test_batch``, ``batches.meta``; names taken from ``torchvision.datasets.CIFAR10``). Each batch is
a dict with ``data`` (``uint8[N, 3072]``, the red plane then green then blue, each 32x32 row-major)
and ``labels`` (``list[int]``); ``batches.meta`` has ``label_names``. The real files were pickled
under Python 2: they load with ``encoding="latin1"`` and keys may come back as ``str`` or ``bytes``
depending on who wrote the file; both are accepted.

Why our own reader instead of ``torchvision.datasets.CIFAR10(root, download=False)``: torchvision's
constructor checks the md5 of *all six* batch files and of ``batches.meta`` before loading anything
and raises ``RuntimeError("Dataset not found or corrupted...")`` otherwise (``_check_integrity`` and
``_load_meta`` in ``torchvision/datasets/cifar.py``), so a miniature folder of the same format, or
one split alone, cannot be read by it. Downloading still goes through torchvision
(``CIFAR10(root, download=True)``, which verifies the archive's md5 and extracts it); loading does not
re-check md5 sums.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

__all__ = ["CIFAR10_CLASSES", "CifarBinary", "load_cifar10_split", "resolve_cifar10_folder"]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_TV = torchvision.datasets.CIFAR10
BASE_FOLDER = _TV.base_folder  # "cifar-10-batches-py"
SPLIT_FILES = {
    "train": tuple(name for name, _md5 in _TV.train_list),  # data_batch_1 .. data_batch_5
    "test": tuple(name for name, _md5 in _TV.test_list),  # test_batch
}
META_FILE = _TV.meta["filename"]  # batches.meta


def _text(x: object) -> object:
    return x.decode("latin1") if isinstance(x, bytes) else x


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, KeyError,
            ValueError, TypeError) as exc:  # what truncated or foreign bytes raise from the unpickler
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path} is not a CIFAR-10 batch: it does not unpickle ({reason})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a CIFAR-10 batch: expected a pickled dict, got {type(obj).__name__}")
    return {_text(k): v for k, v in obj.items()}


def _check_split(split: object) -> None:
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def resolve_cifar10_folder(root: str | Path, split: str) -> Path:
    """The folder holding the split's batch files: ``ROOT/cifar-10-batches-py`` or ``ROOT`` itself.

    Raises:
        FileNotFoundError: neither holds all of the split's files and ``batches.meta``; the message
            lists where it looked and what was missing.
    """
    _check_split(split)
    root = Path(root).expanduser()
    needed = (*SPLIT_FILES[split], META_FILE)
    candidates = (root / BASE_FOLDER, root)
    for folder in candidates:
        if all((folder / name).is_file() for name in needed):
            return folder
    missing = [name for name in needed if not (candidates[0] / name).is_file()]
    raise FileNotFoundError(
        f"CIFAR-10 {split} data not found: looked in {candidates[0]} (and {candidates[1]}) for "
        f"{', '.join(needed)}; missing {', '.join(missing)}. Pass --download to fetch it "
        f"(about 170 MB) or --root DIR pointing at the folder that contains {BASE_FOLDER}/"
    )


def scan_cifar10(root: str | Path, splits: tuple[str, ...] = ("train", "test")) -> None:
    """The content checks of a CIFAR-10 folder before any run folder exists: every batch file of ``splits`` is
    there, unpickles, and holds ``data [N, 3072]`` with ``N`` labels, and ``batches.meta`` its label names.
    :class:`UserError` (one line naming the file) on the first fault; reads the batches once (~0.5 s for the real
    set)."""
    from vislab.errors import UserError

    for split in splits:
        try:
            load_cifar10_split(root, split)
        except (FileNotFoundError, ValueError) as exc:
            raise UserError(str(exc).strip().splitlines()[0]) from None


def load_cifar10_split(root: str | Path, split: str = "train") -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """Read one split of the CIFAR-10 pickle batches.

    Args:
        root: folder containing ``cifar-10-batches-py/`` (or that folder itself).
        split: ``"train"`` (5 batches, 50 000 images for the real set) or ``"test"`` (10 000).

    Returns:
        ``(images, labels, label_names)``: ``images`` ``Tensor[N, 3, 32, 32]`` uint8, ``labels``
        ``Tensor[N]`` int64 (CIFAR-10 class ids), ``label_names`` from ``batches.meta``.
    """
    folder = resolve_cifar10_folder(root, split)
    meta = _unpickle(folder / META_FILE)
    if "label_names" not in meta:
        raise ValueError(f"{folder / META_FILE} has no 'label_names'; keys found: {sorted(map(str, meta))}")
    label_names = tuple(str(_text(n)) for n in meta["label_names"])

    chunks, labels = [], []
    for name in SPLIT_FILES[split]:
        batch = _unpickle(folder / name)
        if "data" not in batch or "labels" not in batch:
            raise ValueError(
                f"{folder / name} is not a CIFAR-10 batch: expected keys 'data' and 'labels', "
                f"got {sorted(map(str, batch))}"
            )
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != len(batch["labels"]):
            raise ValueError(
                f"{folder / name}: expected 'data' of shape [N, 3072] with N = len(labels) = "
                f"{len(batch['labels'])}, got {data.shape}"
            )
        chunks.append(data)
        labels.extend(int(y) for y in batch["labels"])
    images = torch.from_numpy(np.concatenate(chunks).reshape(-1, 3, 32, 32))  # (N, 3, 32, 32) planes R, G, B
    return images, torch.tensor(labels, dtype=torch.int64), label_names


def _check_classes(classes: object) -> tuple[str, str]:
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        raise TypeError(
            f"classes must be a sequence of two CIFAR-10 class names such as ('airplane', 'automobile'), "
            f"got {classes!r}"
        )
    names = tuple(str(c).strip().lower() for c in classes)
    unknown = [c for c in names if c not in CIFAR10_CLASSES]
    if unknown:
        valid = ", ".join(CIFAR10_CLASSES)
        raise ValueError(f"unknown CIFAR-10 class name(s) {unknown}; valid names: {valid}")
    if len(names) != 2 or names[0] == names[1]:
        raise ValueError(f"classes must name two different CIFAR-10 classes, got {list(names)}")
    return names[0], names[1]


def _balanced_subset(labels: Tensor, limit: int, seed: int) -> Tensor:
    """At most ``limit`` indices, seeded, taking the classes in turn (balanced while both have samples)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(labels.numel(), generator=g)  # a seeded shuffle
    rank = torch.empty_like(order)  # position of each sample among the shuffled samples of its class
    for c in labels.unique():
        members = order[labels[order] == c]
        rank[members] = torch.arange(members.numel())
    key = rank * 2 + labels  # class 0 then class 1 at each rank
    chosen = torch.argsort(key, stable=True)[:limit]
    return chosen.sort().values


class CifarBinary(Dataset):
    """Two CIFAR-10 classes as a binary dataset; item ``i`` is ``(image, label)``.

    Args:
        root: folder containing ``cifar-10-batches-py/`` (or that folder itself).
        split: ``"train"`` or ``"test"``.
        classes: two CIFAR-10 class names (case-insensitive); the first becomes label 0, the second 1.
        image_size: side S of the square output (bilinear, antialiased resize from 32x32 at access).
        limit: keep at most this many samples (seeded, class-balanced); ``None`` keeps all.
        download: fetch and extract the official archive through torchvision when the split's files
            are missing (needs the internet). Existing files are used as they are (no md5 check).
        transform: callable applied to the resized ``Tensor[3, S, S]`` **uint8** image (as
            ``vislab.data.transforms`` expects), returning a float tensor. Without it the image is
            ``Tensor[3, S, S]`` float32 in [0, 1].
        seed: seeds the ``limit`` subsample.

    Attributes:
        images: ``Tensor[N, 3, 32, 32]`` uint8 (original resolution), labels: ``Tensor[N]`` int64 in
        {0, 1}, class_names: the two names, cifar_ids: their CIFAR-10 class ids.

    Raises:
        ValueError / TypeError: bad ``split``, ``classes``, ``image_size`` or ``limit``.
        FileNotFoundError: the split is missing and ``download`` is False.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        classes: Sequence[str] = ("airplane", "automobile"),
        image_size: int = 224,
        limit: int | None = None,
        download: bool = False,
        transform: Callable[[Tensor], Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        _check_split(split)
        self.class_names = _check_classes(classes)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive int or None, got {limit!r}")
        self.root = Path(root).expanduser()
        self.split = split
        self.image_size = image_size
        self.transform = transform

        if download:
            try:
                resolve_cifar10_folder(self.root, split)
            except FileNotFoundError:
                _TV(str(self.root), train=split == "train", download=True)  # downloads, checks md5, extracts
        images, cifar_labels, label_names = load_cifar10_split(self.root, split)

        missing = [c for c in self.class_names if c not in label_names]
        if missing:
            raise ValueError(f"{self.root}: batches.meta label_names {list(label_names)} lack {missing}")
        self.cifar_ids = tuple(label_names.index(c) for c in self.class_names)
        keep = (cifar_labels == self.cifar_ids[0]) | (cifar_labels == self.cifar_ids[1])  # (N_all,)
        self.images = images[keep]  # (N, 3, 32, 32)
        self.labels = (cifar_labels[keep] == self.cifar_ids[1]).to(torch.int64)  # (N,) 0 / 1
        if limit is not None and limit < len(self.labels):
            idx = _balanced_subset(self.labels, limit, seed)
            self.images, self.labels = self.images[idx], self.labels[idx]

    def __len__(self) -> int:
        return self.labels.numel()

    def raw(self, i: int) -> Tensor:
        """``Tensor[3, S, S]`` uint8: image ``i`` resized, before ``transform``."""
        img = self.images[i]  # (3, 32, 32)
        if self.image_size != img.shape[-1]:
            img = TF.resize(img, [self.image_size, self.image_size], antialias=True)  # (3, S, S)
        return img

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = self.raw(i)
        out = self.transform(img) if self.transform is not None else img.to(torch.float32) / 255.0
        return out, int(self.labels[i])

    def extra_repr(self) -> str:
        return f"split={self.split}, classes={self.class_names}, n={len(self)}, image_size={self.image_size}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
