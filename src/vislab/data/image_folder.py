"""Image folders (one subfolder per class): scanning, a stratified seeded split saved as a manifest,
and a Dataset that decodes once and caches the resized image.

Non-image files are ignored; files with an image extension that cannot be decoded are skipped and
listed (``ScanResult.skipped``) so the report can show them; a missing or empty folder, or a class
with fewer than three images, is a clear error.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from vislab.errors import UserError
from vislab.io.files import atomic_write_text
from vislab.io.images import check_image, open_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MIN_PER_CLASS = 3


@dataclass
class ScanResult:
    root: Path
    classes: list[str]
    items: list[tuple[str, int]]  # (path relative to root, class index)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    ignored: int = 0  # non-image files

    def counts(self) -> dict[str, int]:
        c = {name: 0 for name in self.classes}
        for _, y in self.items:
            c[self.classes[y]] += 1
        return c


def _check_image(path: Path) -> str | None:
    """None if ``path`` decodes as an image (:func:`vislab.io.images.check_image`), else the reason."""
    return check_image(path)


def scan_image_folder(root: str | Path, *, verify: bool = True, min_per_class: int = MIN_PER_CLASS) -> ScanResult:
    """List the images of an ImageFolder-style directory ``root/CLASS/*.png``.

    Raises:
        UserError: missing folder, no class subfolders, no images, or a class with fewer than
            ``min_per_class`` readable images (a stratified 80/10/10 split needs three).
    """
    root = Path(root)
    if not root.exists():
        raise UserError(f"data folder {root} does not exist; expected a folder with one subfolder per class")
    if not root.is_dir():
        raise UserError(f"data path {root} is not a folder; expected a folder with one subfolder per class")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise UserError(f"data folder {root} has no class subfolders; expected ROOT/CLASS_NAME/IMAGE files")
    classes = [d.name for d in class_dirs]
    if len(classes) < 2:
        raise UserError(f"data folder {root} has one class subfolder ({classes[0]!r}); a classifier needs at least "
                        "two classes, one subfolder each")
    items: list[tuple[str, int]] = []
    skipped: list[tuple[str, str]] = []
    ignored = 0
    for y, d in enumerate(class_dirs):
        for p in sorted(d.rglob("*")):
            if not p.is_file() or p.name.startswith("."):
                continue
            rel = str(p.relative_to(root))
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                ignored += 1
                continue
            reason = _check_image(p) if verify else None
            if reason:
                skipped.append((rel, reason))
                continue
            items.append((rel, y))
    if not items:
        raise UserError(f"data folder {root} holds no readable images (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    result = ScanResult(root=root, classes=classes, items=items, skipped=skipped, ignored=ignored)
    few = {c: n for c, n in result.counts().items() if n < min_per_class}
    if few:
        bad = {c: [r for r, _ in skipped if Path(r).parts[0] == c] for c in few}
        desc = ", ".join(f"{c!r} has {n}" + (f" ({len(bad[c])} file(s) that do not decode, e.g. {bad[c][0]})"
                                             if bad[c] else "") for c, n in few.items())
        raise UserError(f"every class needs at least {min_per_class} readable images for a train/val/test split: "
                        f"{desc}")
    return result


def stratified_split(labels: Sequence[int], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), *,
                     seed: int = 0) -> dict[str, list[int]]:
    """Indices of a per-class shuffled split; every class gets at least one val and one test sample.

    Deterministic for a given ``seed`` and label list.
    """
    if abs(sum(fractions) - 1.0) > 1e-6 or any(f < 0 for f in fractions):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    split: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for y in sorted(by_class):
        idx = by_class[y][:]
        rng.shuffle(idx)
        n = len(idx)
        n_val = max(1, round(fractions[1] * n)) if n >= 3 else 0
        n_test = max(1, round(fractions[2] * n)) if n >= 3 else 0
        n_train = n - n_val - n_test
        split["train"] += idx[:n_train]
        split["val"] += idx[n_train:n_train + n_val]
        split["test"] += idx[n_train + n_val:]
    for k in split:
        split[k].sort()
    return split


def write_manifest(path: Path, scan: ScanResult, split: dict[str, list[int]], *, seed: int) -> None:
    """The split as JSON: class names and, per split, relative paths with labels (no copying)."""
    doc = {
        "root": str(scan.root.resolve()),
        "seed": seed,
        "classes": scan.classes,
        "splits": {k: [[scan.items[i][0], scan.items[i][1]] for i in idx] for k, idx in split.items()},
        "skipped": [list(s) for s in scan.skipped],
    }
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def limit_indices(idx: list[int], limit: int | None, labels: Sequence[int], seed: int) -> list[int]:
    """At most ``limit`` indices, keeping class proportions (stratified subsample, deterministic)."""
    if limit is None or limit >= len(idx):
        return idx
    sub = stratified_split([labels[i] for i in idx], (limit / len(idx), 0.0, 1 - limit / len(idx)), seed=seed)
    return sorted(idx[j] for j in sub["train"])


def load_rgb(path: str | Path, size: int) -> Tensor:
    """Decode to RGB with the one image reader (:func:`vislab.io.images.open_image`: EXIF orientation,
    16-bit scaled, alpha on black) and resize (bilinear, antialiased) to ``size×size``: ``Tensor[3, S, S]`` uint8."""
    im = open_image(path, "rgb").resize((size, size), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class ImageListDataset(Dataset):
    """``(image Tensor[3, S, S] float, label)`` for a list of ``(path, label)``.

    Each image is decoded and resized once, then kept in memory as uint8 (small folders are the use
    case; 10k images at 128 px take ~0.5 GB). ``transform`` gets the uint8 tensor and must return a
    float tensor (see ``vislab.data.transforms``).
    """

    def __init__(self, root: str | Path, items: Sequence[tuple[str, int]], *, image_size: int,
                 transform: Callable[[Tensor], Tensor], cache: bool = True) -> None:
        self.root = Path(root)
        self.items = list(items)
        self.image_size = image_size
        self.transform = transform
        self.cache = cache
        self._cache: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self.items)

    def raw(self, i: int) -> Tensor:
        if i in self._cache:
            return self._cache[i]
        img = load_rgb(self.root / self.items[i][0], self.image_size)
        if self.cache:
            self._cache[i] = img
        return img

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(self.raw(i)), self.items[i][1]

    @property
    def labels(self) -> list[int]:
        return [y for _, y in self.items]


def read_boxes(root: str | Path) -> dict[str, Any]:
    """Object boxes recorded next to a generated folder (``boxes.json``: relative path -> [x0, y0, x1, y1]
    in the original image's pixels, plus the image size), or ``{}`` if the folder has none."""
    p = Path(root) / "boxes.json"
    return json.loads(p.read_text()) if p.exists() else {}
