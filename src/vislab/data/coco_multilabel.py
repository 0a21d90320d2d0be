"""MS COCO as a multi-label classification dataset (which of the 80 categories appear in an image).

Reads the official layout through pycocotools::

    ROOT/annotations/instances_train2017.json     ROOT/train2017/000000000009.jpg ...
    ROOT/annotations/instances_val2017.json       ROOT/val2017/000000000139.jpg ...

Labels: COCO numbers its 80 object categories with sparse ids between 1 and 90 (ten ids are
unused, see :data:`COCO_CATEGORIES`). The dataset maps the categories of the annotation file,
sorted by id, to contiguous indices ``0..L-1`` (``L = 80`` for the official files; id 1
"person" → 0, id 90 "toothbrush" → 79); ``category_ids[j]`` and ``label_names[j]`` give the id and
name of label ``j``. An image's target is the multi-hot vector of the categories annotated in it.

Crowd annotations (``iscrowd=1``: one region covering many instances, e.g. a crowd of people) mean
the category *is* present, so by default they count as positives (``crowd_as_positive=True``);
with ``False`` they are ignored. Images without any (counted) annotation are kept as all-negative
samples (``keep_empty=True``, about 1% of COCO) or dropped (``keep_empty=False``).

The annotation files are parsed and checked as the detection data's (:func:`vislab.data.detection.load_coco_json`);
:func:`scan_coco_multilabel` runs those checks and the image files' existence before a run starts. Images are
read by :func:`vislab.io.images.open_image` (EXIF orientation, 16-bit scaled, alpha on black), resized to a
square ``image_size × image_size`` (aspect ratio not kept: every category stays visible, which a centre
crop would not guarantee) and normalised with the ImageNet mean and std.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from vislab.errors import UserError
from vislab.io.images import open_image

# The 80 categories of COCO 2014/2017 detection, (id, name), in id order.
# Facts from the official instances_*.json files (also listed in detectron2's builtin_meta.py).
COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"),
    (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"),
    (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"),
    (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports ball"),
    (38, "kite"), (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"),
    (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
    (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"),
    (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"),
    (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"),
    (75, "remote"), (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"),
    (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"),
    (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(i for i, _ in COCO_CATEGORIES)
COCO_LABEL_NAMES: tuple[str, ...] = tuple(n for _, n in COCO_CATEGORIES)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val")
_LAYOUT = "ROOT/annotations/instances_{split}{year}.json and ROOT/{split}{year}/ (the MS COCO layout)"


def coco_paths(root: str | Path, split: str, *, year: str = "2017") -> tuple[Path, Path]:
    """``(annotation_file, image_dir)`` of a COCO split, checked to exist.

    Raises:
        ValueError: ``split`` is not ``"train"`` or ``"val"``.
        FileNotFoundError: the root, the annotation file or the image folder is missing; the
            message names the path and the expected layout.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    layout = _LAYOUT.format(split=split, year=year)
    if not root.is_dir():
        raise FileNotFoundError(f"COCO root {str(root)!r} is not a directory; expected {layout}")
    ann_file = root / "annotations" / f"instances_{split}{year}.json"
    if not ann_file.is_file():
        raise FileNotFoundError(f"COCO annotation file {str(ann_file)!r} not found; expected {layout}")
    image_dir = root / f"{split}{year}"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"COCO image folder {str(image_dir)!r} not found; expected {layout}")
    return ann_file, image_dir


def scan_coco_multilabel(root: str | Path, splits: tuple[str, ...] = SPLITS, *, year: str = "2017") -> None:
    """The content checks of a COCO root before any run folder exists; :class:`UserError` (one line) on the first
    fault: the layout, each annotation file parsed and checked (:func:`vislab.data.detection.check_coco_dict`:
    schema, categories, finite boxes, unique image ids) and every image file's existence (no decoding). The
    parsed files are kept, so the dataset does not parse them again."""
    from vislab.data.detection import check_coco_images, load_coco_json

    for split in splits:
        try:
            ann_file, image_dir = coco_paths(root, split, year=year)
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from None
        check_coco_images(load_coco_json(ann_file), image_dir, str(ann_file))


def category_mapping(categories: list[dict]) -> tuple[list[int], list[str]]:
    """Contiguous labels from COCO ``categories`` records: ``(ids, names)`` sorted by id.

    Label ``j`` is category ``ids[j]``; for the official files ``ids == COCO_CATEGORY_IDS``.
    """
    if not categories:
        raise ValueError("the annotation file lists no categories; expected COCO 'categories' records")
    ids = [int(c["id"]) for c in categories]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"category ids must be unique, got duplicates {dup}")
    ordered = sorted(categories, key=lambda c: int(c["id"]))
    return [int(c["id"]) for c in ordered], [str(c["name"]) for c in ordered]


def multilabel_targets(annotations: list[dict], image_ids: list[int], category_ids: list[int], *,
                       crowd_as_positive: bool = True) -> np.ndarray:
    """Multi-hot targets ``uint8 ndarray[len(image_ids), len(category_ids)]`` from COCO annotations.

    An image's row has a 1 for every category with at least one annotation on it; crowd
    annotations (``iscrowd=1``) count only with ``crowd_as_positive``. Annotations of images not
    in ``image_ids`` are ignored; an unknown ``category_id`` raises ``ValueError``.
    """
    row = {int(i): r for r, i in enumerate(image_ids)}
    col = {int(c): j for j, c in enumerate(category_ids)}
    targets = np.zeros((len(image_ids), len(category_ids)), np.uint8)
    for ann in annotations:
        r = row.get(int(ann["image_id"]))
        if r is None or (ann.get("iscrowd", 0) and not crowd_as_positive):
            continue
        j = col.get(int(ann["category_id"]))
        if j is None:
            raise ValueError(f"annotation {ann.get('id')} has category_id {ann['category_id']}, which is not "
                             f"among the file's categories {category_ids}")
        targets[r, j] = 1
    return targets


class CocoMultiLabel(Dataset):
    """COCO images with their multi-hot category vectors.

    Args:
        root: folder with ``annotations/`` and ``{split}2017/`` (see the module docstring).
        split: ``"train"`` or ``"val"``.
        image_size: side ``S`` of the square the images are resized to.
        limit: keep at most this many images, a random subset drawn with ``seed`` (after the
            ``keep_empty`` filter); ``None`` keeps all.
        keep_empty: keep images without any counted annotation as all-negative samples.
        crowd_as_positive: crowd annotations make their category positive.
        transform: replaces the default resize + normalise: a callable from the RGB ``PIL.Image``
            to ``Tensor[3, H, W]`` (e.g. a torchvision augmentation pipeline).
        seed: randomness of the ``limit`` subset.
        year: the ``2017`` of the file names.

    Items are ``(Tensor[3, S, S] float32, Tensor[L] float32 multi-hot)``. Attributes:
    ``category_ids``, ``label_names`` (length ``L``), ``image_ids`` (``int64 ndarray[N]``, sorted),
    ``labels`` (``float32 ndarray[N, L]``), ``coco`` (the ``pycocotools.coco.COCO`` object).
    """

    def __init__(self, root: str | Path, split: str = "train", *, image_size: int = 224,
                 limit: int | None = None, keep_empty: bool = True, crowd_as_positive: bool = True,
                 transform: Callable[[Image.Image], Tensor] | None = None, seed: int = 0,
                 year: str = "2017") -> None:
        if not (isinstance(image_size, int) and image_size > 0):
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        if limit is not None and not (isinstance(limit, int) and limit > 0):
            raise ValueError(f"limit must be None or a positive int, got {limit!r}")
        self.ann_file, self.image_dir = coco_paths(root, split, year=year)
        from vislab.data.detection import coco_object, load_coco_json

        self.coco = coco_object(load_coco_json(self.ann_file))  # parsed and checked once (UserError if bad)
        self.root, self.split = Path(root), split
        self.image_size, self.transform = image_size, transform
        self.category_ids, self.label_names = category_mapping(self.coco.dataset.get("categories", []))

        image_ids = sorted(int(i) for i in self.coco.imgs)
        targets = multilabel_targets(self.coco.dataset.get("annotations", []), image_ids, self.category_ids,
                                     crowd_as_positive=crowd_as_positive)
        keep = np.arange(len(image_ids)) if keep_empty else np.flatnonzero(targets.any(axis=1))
        if limit is not None and limit < keep.size:
            keep = np.sort(np.random.default_rng(seed).choice(keep, size=limit, replace=False))
        self.image_ids = np.asarray(image_ids, np.int64)[keep]
        self.labels = targets[keep].astype(np.float32)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return self.image_ids.size

    def image_path(self, i: int) -> Path:
        """Path of the ``i``-th image."""
        return self.image_dir / self.coco.imgs[int(self.image_ids[i])]["file_name"]

    def load_image(self, i: int) -> Image.Image:
        """The ``i``-th image as an RGB ``PIL.Image`` (original size)."""
        path = self.image_path(i)
        if not path.is_file():
            raise FileNotFoundError(f"COCO image {str(path)!r} (image id {int(self.image_ids[i])}) not found; "
                                    f"expected every image of {self.ann_file.name} in {str(self.image_dir)!r}")
        return open_image(path, "rgb")

    def default_transform(self, img: Image.Image) -> Tensor:
        """Square resize (bilinear, antialiased) to ``Tensor[3, S, S]``, ImageNet-normalised."""
        img = img.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1)  # (3, S, S)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return (x - mean) / std

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        img = self.load_image(i)
        x = self.transform(img) if self.transform is not None else self.default_transform(img)
        return x, torch.from_numpy(self.labels[i])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, images={len(self)}, "
                f"labels={self.num_classes}, image_size={self.image_size})")
