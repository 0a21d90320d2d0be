"""Object-detection data in one in-memory structure: COCO-format JSON.

Three sources, one code path (:class:`CocoDetectionDataset` over a COCO-format dict):

* **COCO-format folders** (``--data coco --root DIR``, or ``--data DIR``)::

      DIR/annotations/instances_train2017.json   DIR/train2017/...   (the MS COCO layout)
      DIR/annotations/instances_val2017.json     DIR/val2017/...
      DIR/annotations/instances_test2017.json    DIR/test2017/...    (optional)

  The year suffix is optional (``instances_train.json`` + ``train/``). With a test file, the three
  files are the three splits. Without one (the usual COCO download), ``val`` is the **test** split
  and a seeded ``val_fraction`` of ``train`` the validation split. A folder holding a single COCO
  JSON (images next to it, or in ``images/``) is split 80/10/10 by a seeded permutation.
* **Pascal VOC 2007** (``--data voc --root DIR`` with ``DIR/VOCdevkit/VOC2007/{Annotations,
  JPEGImages, ImageSets/Main/{train,val,test}.txt}``, or ``DIR`` being ``VOC2007`` itself): the XML
  files are converted to the same COCO structure (categories 1..20 in the usual order, boxes
  ``[xmin − 1, ymin − 1, xmax, ymax]``: VOC counts pixels from 1). ``difficult`` objects become crowd
  boxes (``iscrowd=1``): the training task drops crowd boxes and COCOeval ignores detections on them,
  which is how VOC ignores difficult objects. Without ``test.txt``, ``val`` is the test split and a
  seeded part of ``train`` the validation split (the COCO rule).
* **Embedded scenes** (:func:`write_detection_scenes`): generated multi-object images on crops of
  real scikit-image photographs, written as a COCO-format folder.

Conventions of the items (torchvision's detection contract):

* image ``Tensor[3, S, S]`` float in ``[0, 1]`` (RGB; the model normalises), resized to the square
  ``image_size`` (aspect ratio not kept; boxes are rescaled with the image) or kept as is with
  ``image_size=None``;
* target ``{"boxes": Tensor[N, 4] xyxy float32 (pixels of the returned image), "labels":
  Tensor[N] int64 in 1..C (0 is the background), "iscrowd": Tensor[N] int64, "id": int image id}``.

Sparse category ids (COCO's 1..90 with gaps) map to contiguous labels ``1..C`` in id order:
``category_ids[j]`` and ``label_names[j]`` belong to label ``j + 1``. Boxes are clipped to the
image; a box whose width or height is below 1 pixel after clipping is **dropped and counted**
(``dropped_degenerate``): torchvision's detectors raise on such boxes. Images without any box are
kept (negatives). A missing or malformed annotation file raises :class:`vislab.errors.UserError`
with one line naming the file.

Content checks (:func:`check_coco_dict`, :func:`check_coco_images`, and :func:`check_detection_source`, which
runs them all before a run folder exists): the file parses; it has the three lists; categories are listed,
with unique ids; image ids are unique; every annotation has a bbox of 4 finite numbers with a width and
height that are not negative, an ``image_id`` among the images and a ``category_id`` among the
categories; every image file exists; VOC objects name one of the 20 classes and have a box with
``xmin <= xmax`` and ``ymin <= ymax``. Boxes of zero width or height are not an error: they are dropped and
counted as degenerate with the sub-pixel ones (MS COCO itself holds a few). Images are read by
:mod:`vislab.io.images` (EXIF orientation, 16-bit scaled, alpha on black).
"""

from __future__ import annotations

import colorsys
import contextlib
import io
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torch.utils.data import Dataset

from vislab.data.generated import building, is_complete
from vislab.errors import UserError
from vislab.io.files import atomic_write_text
from vislab.io.images import image_size as _image_size
from vislab.io.images import open_image

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
SCENE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
SPLITS = ("train", "val", "test")
_SCENE_VERSION = 1


# ------------------------------------------------------------------------------------------------
# COCO-format annotation files
# ------------------------------------------------------------------------------------------------
def load_coco_json(path: str | Path) -> dict[str, Any]:
    """Read and check a COCO-format detection file: ``{"images", "annotations", "categories"}``.

    Raises :class:`UserError` (one line) when the file is missing, is not JSON, or lacks the
    records or fields detection needs (image ``id``/``file_name``, annotation ``image_id``/
    ``category_id``/``bbox`` of 4 numbers, category ``id``/``name``).
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"annotation file {str(path)!r} is a folder, not a COCO JSON file")
    if not path.is_file():
        raise UserError(f"annotation file {str(path)!r} not found")
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _CHECKED_JSON:  # parsed and checked by the scan before the run: not twice
        return _CHECKED_JSON[key]
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"annotation file {str(path)!r} is not valid JSON ({exc})") from None
    check_coco_dict(d, str(path))
    if len(_CHECKED_JSON) >= 3:  # the splits of one source; older entries go
        _CHECKED_JSON.pop(next(iter(_CHECKED_JSON)))
    _CHECKED_JSON[key] = d
    return d


_CHECKED_JSON: dict[tuple[str, int, int], dict[str, Any]] = {}


def check_coco_dict(d: Any, where: str = "annotations") -> None:
    """Raise :class:`UserError` unless ``d`` is a usable COCO-format detection dict."""
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected a COCO JSON object with images/annotations/categories, got "
                        f"{type(d).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(d.get(key), list):
            raise UserError(f"{where}: missing the list {key!r} of a COCO detection file")
    if not d["categories"]:
        raise UserError(f"{where}: 'categories' is empty; a detection file lists its object classes")
    for c in d["categories"]:
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise UserError(f"{where}: every category needs 'id' and 'name', got {c!r}")
    ids = [c["id"] for c in d["categories"]]
    if len(set(ids)) != len(ids):
        raise UserError(f"{where}: category ids must be unique, got {sorted(ids)}")
    image_ids: set[Any] = set()
    for im in d["images"]:
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise UserError(f"{where}: every image needs 'id' and 'file_name', got {_short(im)}")
        if im["id"] in image_ids:
            raise UserError(f"{where}: image id {im['id']!r} appears twice (e.g. {im['file_name']!r}); image ids "
                            "must be unique")
        image_ids.add(im["id"])
    cats = set(ids)
    for a in d["annotations"]:
        if not isinstance(a, dict) or not {"image_id", "category_id", "bbox"} <= set(a):
            missing = sorted({"image_id", "category_id", "bbox"} - set(a)) if isinstance(a, dict) else []
            raise UserError(f"{where}: every annotation needs 'image_id', 'category_id' and 'bbox'; "
                            f"{_short(a)} lacks {', '.join(map(repr, missing)) or 'them'}")
        b = a["bbox"]
        if (not isinstance(b, (list, tuple)) or len(b) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)):
            raise UserError(f"{where}: annotation {a.get('id')} has bbox {b!r}; expected [x, y, width, height]")
        if not all(math.isfinite(v) for v in b):
            raise UserError(f"{where}: annotation {a.get('id')} (image {a['image_id']!r}) has a non-finite bbox "
                            f"{_box_text(b)}; expected 4 finite numbers [x, y, width, height]")
        if b[2] < 0 or b[3] < 0:
            raise UserError(f"{where}: annotation {a.get('id')} (image {a['image_id']!r}) has bbox {_box_text(b)} "
                            "with a negative width or height; expected [x, y, width, height]")
        if a["category_id"] not in cats:
            raise UserError(f"{where}: annotation {a.get('id')} has category_id {a['category_id']}, which is not "
                            f"among the file's categories")
        if a["image_id"] not in image_ids:
            raise UserError(f"{where}: annotation {a.get('id')} refers to image_id {a['image_id']!r}, which is not "
                            "among the file's images")


def _short(v: Any, n: int = 120) -> str:
    text = repr(v)
    return text if len(text) <= n else text[:n - 3] + "..."


def _box_text(b: Sequence[float]) -> str:
    return "[" + ", ".join(str(v) for v in b) + "]"


def check_coco_images(d: dict[str, Any], image_dir: str | Path, where: str = "annotations",
                      image_ids: Sequence[int] | None = None) -> None:
    """Raise :class:`UserError` unless every image file of ``d`` (or of ``image_ids``) exists in ``image_dir``
    (one ``stat`` per file, no decoding). The message counts the missing files and names the first."""
    image_dir = Path(image_dir)
    keep = None if image_ids is None else set(image_ids)
    missing = [im["file_name"] for im in d["images"] if (keep is None or im["id"] in keep)
               and not (image_dir / im["file_name"]).is_file()]
    if missing:
        raise UserError(f"{where}: {len(missing)} image file(s) not found in {str(image_dir)!r}, e.g. "
                        f"{missing[0]!r}")


def category_mapping(categories: list[dict[str, Any]]) -> tuple[list[int], list[str]]:
    """``(category_ids, label_names)`` sorted by id: label ``j + 1`` is category ``category_ids[j]``."""
    ordered = sorted(categories, key=lambda c: int(c["id"]))
    return [int(c["id"]) for c in ordered], [str(c["name"]) for c in ordered]


def coco_object(d: dict[str, Any]) -> Any:
    """A ``pycocotools.coco.COCO`` over an in-memory dict (indexes built, progress lines silenced)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = d
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


# ------------------------------------------------------------------------------------------------
# The dataset
# ------------------------------------------------------------------------------------------------
class CocoDetectionDataset(Dataset):
    """Detection images and targets from a COCO-format dict (see the module docstring).

    Args:
        annotations: a COCO-format dict or the path of a JSON file.
        image_dir: folder the images' ``file_name`` are relative to.
        image_size: side ``S`` of the square images are resized to; ``None`` keeps the original size.
        image_ids: keep only these images (in this order); default: all, sorted by id.
        categories: the category records that define the labels (e.g. the training file's, so that
            every split shares one mapping); default: the file's own.
        hflip: flip each item horizontally with probability 0.5 (boxes too); for training.
        name: shown in messages.
        coco: an index already built over ``annotations`` (:func:`coco_object`), shared by the splits of
            one file; the dict is then taken as checked.

    Attributes:
        category_ids, label_names: of labels ``1..C`` (index ``j`` is label ``j + 1``).
        image_ids: ``list[int]`` of the items. ``dropped_degenerate``: boxes dropped because their
        width or height was below 1 pixel after clipping; ``num_boxes``, ``num_crowd``,
        ``num_empty`` (images without boxes); ``coco`` (pycocotools object of the whole dict).
    """

    def __init__(self, annotations: dict[str, Any] | str | Path, image_dir: str | Path, *,
                 image_size: int | None = None, image_ids: Sequence[int] | None = None,
                 categories: list[dict[str, Any]] | None = None, hflip: bool = False,
                 name: str = "detection", coco: Any | None = None) -> None:
        if image_size is not None and not (isinstance(image_size, int) and image_size > 0):
            raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
        if isinstance(annotations, (str, Path)):
            d = load_coco_json(annotations)
            name = str(annotations)
        else:
            if coco is None:
                check_coco_dict(annotations, name)
            d = annotations
        self.name = name
        self.image_dir = Path(image_dir)
        self.image_size = image_size
        self.hflip = hflip
        self.coco = coco if coco is not None else coco_object(d)
        self.category_ids, self.label_names = category_mapping(categories if categories is not None
                                                               else d["categories"])
        label_of = {cid: j + 1 for j, cid in enumerate(self.category_ids)}
        if image_ids is None:
            image_ids = sorted(self.coco.imgs)
        missing = [i for i in image_ids if i not in self.coco.imgs]
        if missing:
            raise ValueError(f"image ids {missing[:5]} are not in {name}")
        self.image_ids = [int(i) for i in image_ids]

        self.dropped_degenerate = 0
        self._records: list[dict[str, Any]] = []
        for img_id in self.image_ids:
            rec = self.coco.imgs[img_id]
            w, h = rec.get("width"), rec.get("height")
            if not w or not h:  # not in the file: read the image header (EXIF-oriented, as the pixels are read)
                w, h = _image_size(self.image_dir / rec["file_name"])
            boxes, labels, crowd = [], [], []
            for a in self.coco.imgToAnns.get(img_id, []):
                if a["category_id"] not in label_of:
                    raise UserError(f"{name}: annotation {a.get('id')} has category_id {a['category_id']}, which "
                                    f"is not among the training categories {self.category_ids}")
                x, y, bw, bh = (float(v) for v in a["bbox"])
                x0, y0 = min(max(x, 0.0), w), min(max(y, 0.0), h)
                x1, y1 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
                if x1 - x0 < 1.0 or y1 - y0 < 1.0:
                    self.dropped_degenerate += 1
                    continue
                boxes.append([x0, y0, x1, y1])
                labels.append(label_of[a["category_id"]])
                crowd.append(int(a.get("iscrowd", 0)))
            self._records.append({"file_name": rec["file_name"], "width": int(w), "height": int(h),
                                  "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
                                  "labels": np.asarray(labels, np.int64), "iscrowd": np.asarray(crowd, np.int64)})
        self.num_boxes = sum(len(r["labels"]) for r in self._records)
        self.num_crowd = sum(int(r["iscrowd"].sum()) for r in self._records)
        self.num_empty = sum(1 for r in self._records if len(r["labels"]) == 0)

    @property
    def num_classes(self) -> int:
        """Object classes ``C`` (labels ``1..C``; a detector needs ``C + 1`` outputs with the background)."""
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, i: int) -> Path:
        return self.image_dir / self._records[i]["file_name"]

    def load_image(self, i: int) -> Image.Image:
        """The ``i``-th image as RGB ``PIL.Image`` at its original size."""
        path = self.image_path(i)
        if not path.is_file():
            raise UserError(f"image {str(path)!r} of {self.name} (id {self.image_ids[i]}) not found")
        return open_image(path, "rgb")

    def target(self, i: int) -> dict[str, Any]:
        """The ``i``-th target in the returned image's pixels (before any flip)."""
        r = self._records[i]
        boxes = torch.from_numpy(r["boxes"].copy())  # (N, 4) xyxy, original pixels
        if self.image_size is not None:
            sx, sy = self.image_size / r["width"], self.image_size / r["height"]
            boxes = boxes * torch.tensor([sx, sy, sx, sy])
        return {"boxes": boxes, "labels": torch.from_numpy(r["labels"].copy()),
                "iscrowd": torch.from_numpy(r["iscrowd"].copy()), "id": self.image_ids[i]}

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Any]]:
        img = self.load_image(i)
        r = self._records[i]
        if img.size != (r["width"], r["height"]):  # the boxes are in the annotation's frame: never rescale silently
            raise UserError(f"image {str(self.image_path(i))!r} of {self.name} is {img.size[0]}×{img.size[1]} "
                            f"(after its EXIF orientation) but its annotation says {r['width']}×{r['height']}")
        if self.image_size is not None:
            img = img.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1).contiguous()  # (3, H, W)
        t = self.target(i)
        if self.hflip and torch.rand(()) < 0.5:
            W = x.shape[-1]
            x = x.flip(-1)
            b = t["boxes"]
            t["boxes"] = torch.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], dim=1)  # (N, 4)
        return x, t

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, images={len(self)}, classes={self.num_classes}, "
                f"boxes={self.num_boxes}, crowd={self.num_crowd}, empty={self.num_empty}, "
                f"dropped_degenerate={self.dropped_degenerate}, image_size={self.image_size})")


def collate_fn(batch: list[tuple[Tensor, dict[str, Any]]]) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """``[(image, target), ...]`` → ``(list of images, list of targets)`` (images may differ in size)."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


# ------------------------------------------------------------------------------------------------
# Pascal VOC 2007 → COCO structure
# ------------------------------------------------------------------------------------------------
def voc_root(root: str | Path) -> Path:
    """The ``VOC2007`` folder under ``root`` (``root/VOCdevkit/VOC2007``, ``root/VOC2007`` or ``root``)."""
    root = Path(root)
    for cand in (root / "VOCdevkit" / "VOC2007", root / "VOC2007", root):
        if (cand / "Annotations").is_dir() and (cand / "ImageSets" / "Main").is_dir():
            return cand
    raise UserError(f"--data voc: no Pascal VOC 2007 folder under {str(root)!r}; expected "
                    "ROOT/VOCdevkit/VOC2007/{Annotations,JPEGImages,ImageSets/Main/{train,val,test}.txt}")


def _voc_ids(voc: Path, split: str) -> list[str]:
    path = voc / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise UserError(f"Pascal VOC split file {str(path)!r} not found")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def voc_to_coco(voc: str | Path, names: Sequence[str], *, first_id: int = 1) -> dict[str, Any]:
    """Convert the VOC XML annotations of images ``names`` (e.g. ``"000005"``) to a COCO-format dict.

    Categories are the 20 VOC classes with ids 1..20; image ids are ``first_id, first_id + 1, ...``
    in the order of ``names``; ``difficult`` objects get ``iscrowd=1``. A missing or malformed XML
    file, or an unknown class name, raises :class:`UserError`.
    """
    voc = Path(voc)
    cat_id = {n: i + 1 for i, n in enumerate(VOC_CLASSES)}
    images, anns = [], []
    for k, stem in enumerate(names):
        path = voc / "Annotations" / f"{stem}.xml"
        if not path.is_file():
            raise UserError(f"Pascal VOC annotation file {str(path)!r} not found")
        try:
            root = ET.parse(path).getroot()
            size = root.find("size")
            width = int(float(size.findtext("width")))  # type: ignore[union-attr, arg-type]
            height = int(float(size.findtext("height")))  # type: ignore[union-attr, arg-type]
            file_name = root.findtext("filename") or f"{stem}.jpg"
            img_id = first_id + k
            images.append({"id": img_id, "file_name": file_name, "width": width, "height": height})
            for obj in root.iter("object"):
                cls = (obj.findtext("name") or "").strip()
                if cls not in cat_id:
                    raise UserError(f"Pascal VOC annotation {str(path)!r} has an object of unknown class {cls!r}; "
                                    f"expected one of the 20 VOC classes")
                bb = obj.find("bndbox")
                if bb is None:
                    raise UserError(f"Pascal VOC annotation {str(path)!r} has an object ({cls}) without a bndbox")
                x0, y0, x1, y1 = (float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore
                if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 < x0 or y1 < y0:
                    raise UserError(f"Pascal VOC annotation {str(path)!r} has a {cls} box [xmin {x0:g}, ymin {y0:g}, "
                                    f"xmax {x1:g}, ymax {y1:g}] that is not finite or has xmax < xmin or ymax < ymin")
                x0, y0 = x0 - 1, y0 - 1  # 1-based inclusive pixels -> continuous coordinates
                anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat_id[cls],
                             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                             "iscrowd": int((obj.findtext("difficult") or "0").strip() == "1")})
        except UserError:
            raise
        except (ET.ParseError, AttributeError, TypeError, ValueError) as exc:
            raise UserError(f"Pascal VOC annotation file {str(path)!r} is malformed ({exc})") from None
    return {"images": images, "annotations": anns,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(VOC_CLASSES)]}


# ------------------------------------------------------------------------------------------------
# Finding the splits of a source
# ------------------------------------------------------------------------------------------------
@dataclass
class DetectionData:
    """The three splits of a detection source and what the report says about it."""

    train: CocoDetectionDataset
    val: CocoDetectionDataset
    test: CocoDetectionDataset
    name: str
    description: str
    split_rule: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def splits(self) -> dict[str, CocoDetectionDataset]:
        return {"train": self.train, "val": self.val, "test": self.test}

    @property
    def label_names(self) -> list[str]:
        return list(self.train.label_names)

    def counts(self) -> dict[str, dict[str, int]]:
        """Per split: images, boxes, crowd boxes, images without boxes, degenerate boxes dropped."""
        return {k: {"images": len(ds), "boxes": ds.num_boxes, "crowd": ds.num_crowd, "empty": ds.num_empty,
                    "dropped_degenerate": ds.dropped_degenerate} for k, ds in self.splits.items()}


def find_coco_files(root: str | Path) -> dict[str, tuple[Path, Path]]:
    """``{split: (annotation_file, image_dir)}`` of a COCO-format folder (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"detection data folder {str(root)!r} does not exist")
    found: dict[str, tuple[Path, Path]] = {}
    for split in SPLITS:
        for suffix in ("2017", ""):
            ann = root / "annotations" / f"instances_{split}{suffix}.json"
            if ann.is_file():
                img = root / f"{split}{suffix}"
                if not img.is_dir():
                    raise UserError(f"{str(ann)!r} exists but its image folder {str(img)!r} does not")
                found[split] = (ann, img)
                break
    if found:
        if "train" not in found or ("val" not in found and "test" not in found):
            raise UserError(f"{str(root)!r}: found {', '.join(str(a) for a, _ in found.values())}; expected "
                            "annotations/instances_train2017.json and instances_val2017.json (the MS COCO layout)")
        return found
    single = sorted(root.glob("*.json"))
    if len(single) == 1:
        img = root / "images" if (root / "images").is_dir() else root
        return {"all": (single[0], img)}
    raise UserError(f"no COCO annotation file under {str(root)!r}; expected annotations/instances_train2017.json + "
                    "instances_val2017.json with train2017/ and val2017/, or one COCO .json in the folder")


def _seeded_split(ids: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split ``ids`` into ``(rest, part)`` with ``part`` a seeded ``fraction`` (at least one, sorted)."""
    ids = sorted(int(i) for i in ids)
    if len(ids) < 2:
        raise UserError(f"cannot hold out a validation split from {len(ids)} image(s)")
    order = np.random.default_rng(seed).permutation(len(ids))
    n = min(max(1, int(round(fraction * len(ids)))), len(ids) - 1)
    part = sorted(ids[k] for k in order[:n])
    rest = sorted(ids[k] for k in order[n:])
    return rest, part


def _limited(ids: list[int], limit: int | None, seed: int) -> list[int]:
    if limit is None or limit >= len(ids):
        return ids
    keep = np.random.default_rng(seed + 17).choice(len(ids), size=limit, replace=False)
    return sorted(ids[k] for k in keep)


def load_detection_data(data: str | None, root: str | None, *, image_size: int | None, seed: int = 0,
                        val_fraction: float = 0.1, limits: dict[str, int | None] | None = None,
                        hflip: bool = False, scenes: dict[str, Any] | None = None) -> DetectionData:
    """The train/val/test datasets of ``--data``/``--root``.

    ``data``: ``None``/``"scenes"`` (embedded scenes, options ``scenes`` for
    :func:`write_detection_scenes`), ``"coco"`` or ``"voc"`` (with ``root``), or a COCO-format
    folder. ``limits``: at most this many images per split (a seeded subset). ``hflip``: random
    horizontal flips of the training items.
    """
    limits = limits or {}
    if data in (None, "scenes"):
        from vislab.data.generated import default_cache_dir

        opts = {"n_train": 1200, "n_val": 200, "n_test": 300, "max_objects": 6, **(scenes or {})}
        size = int(opts.pop("size", image_size or 128))
        folder = default_cache_dir() / ("det-scenes-v{}-{}-{n_train}-{n_val}-{n_test}-{max_objects}"
                                        .format(_SCENE_VERSION, size, **opts))
        write_detection_scenes(folder, size=size, seed=0, **opts)
        out = _from_coco_folder(folder, image_size=image_size, seed=seed, val_fraction=val_fraction,
                                limits=limits, hflip=hflip, name="embedded-scenes")
        out.description = (f"generated scenes ({size}×{size} px): 0–{opts.get('max_objects', 6)} objects of "
                           f"{len(SCENE_CLASSES)} classes ({', '.join(SCENE_CLASSES)}) at varied scale and aspect "
                           "ratio, some overlapping, on crops of scikit-image photographs; the test scenes use "
                           "photographs held out of training (" + ", ".join(_TEST_BACKGROUNDS) + ")")
        return out
    if data == "voc":
        if not root:
            raise UserError("--data voc needs --root DIR (with VOCdevkit/VOC2007)")
        return _from_voc(voc_root(root), image_size=image_size, seed=seed, val_fraction=val_fraction,
                         limits=limits, hflip=hflip)
    if data == "coco":
        if not root:
            raise UserError("--data coco needs --root DIR (with annotations/instances_{train,val}2017.json)")
        return _from_coco_folder(Path(root), image_size=image_size, seed=seed, val_fraction=val_fraction,
                                 limits=limits, hflip=hflip, name="coco")
    return _from_coco_folder(Path(data), image_size=image_size, seed=seed, val_fraction=val_fraction,
                             limits=limits, hflip=hflip, name=Path(data).name)


def check_detection_source(data: str | None, root: str | None, *, content: bool = True) -> None:
    """Check, before any run folder exists, that ``--data``/``--root`` can work; :class:`UserError` if not.

    The paths first; then, with ``content`` (the default), the content scan of the module docstring: every
    annotation file parsed and checked (COCO JSON, or the VOC XML of every image of the split lists) and
    every image file's existence (one ``stat`` each, no decoding). Parsed COCO files are kept, so the data
    step that follows does not parse them again. The embedded scenes are generated by vislab: not scanned.
    """
    if data in (None, "scenes"):
        return
    if data == "voc":
        if not root:
            raise UserError("--data voc needs --root DIR (with VOCdevkit/VOC2007)")
        voc = voc_root(root)
        for split in ("train", "val"):
            if not (voc / "ImageSets" / "Main" / f"{split}.txt").is_file():
                raise UserError(f"Pascal VOC split file {str(voc / 'ImageSets' / 'Main' / f'{split}.txt')!r} "
                                "not found")
        if not (voc / "JPEGImages").is_dir():
            raise UserError(f"Pascal VOC image folder {str(voc / 'JPEGImages')!r} not found")
        if content:
            splits = [s for s in SPLITS if (voc / "ImageSets" / "Main" / f"{s}.txt").is_file()]
            names = sorted({n for s in splits for n in _voc_ids(voc, s)})
            if not names:
                raise UserError(f"Pascal VOC split files under {str(voc / 'ImageSets' / 'Main')!r} list no images")
            check_coco_images(voc_to_coco(voc, names), voc / "JPEGImages", f"Pascal VOC {voc}")
        return
    if data == "coco":
        if not root:
            raise UserError("--data coco needs --root DIR (with annotations/instances_{train,val}2017.json)")
        folder = Path(root)
    else:
        folder = Path(data)
        if not folder.is_dir():
            raise UserError(f"unknown --data {data!r}: expected coco, voc (with --root) or a folder with a COCO "
                            "annotation file")
    files = find_coco_files(folder)
    if content:
        for ann, img_dir in files.values():
            d = load_coco_json(ann)
            check_coco_images(d, img_dir, str(ann))


def _from_coco_folder(root: Path, *, image_size: int | None, seed: int, val_fraction: float,
                      limits: dict[str, int | None], hflip: bool, name: str) -> DetectionData:
    files = find_coco_files(root)
    if "all" in files:
        ann, img_dir = files["all"]
        d = load_coco_json(ann)
        ids = [int(im["id"]) for im in d["images"]]
        rest, test_ids = _seeded_split(ids, 0.1, seed)
        train_ids, val_ids = _seeded_split(rest, 1 / 9, seed + 1)
        parts = {"train": (d, img_dir, train_ids), "val": (d, img_dir, val_ids), "test": (d, img_dir, test_ids)}
        rule = f"one file ({ann.name}) split 80/10/10 by a seeded permutation (seed {seed})"
    else:
        loaded = {k: load_coco_json(a) for k, (a, _) in files.items()}
        train_d = loaded["train"]
        train_ids = sorted(int(im["id"]) for im in train_d["images"])
        if "val" in files and "test" in files:
            parts = {k: (loaded[k], files[k][1], None) for k in SPLITS}
            rule = "the train, val and test annotation files"
        else:
            held = "val" if "val" in files else "test"
            rest, val_ids = _seeded_split(train_ids, val_fraction, seed)
            parts = {"train": (train_d, files["train"][1], rest), "val": (train_d, files["train"][1], val_ids),
                     "test": (loaded[held], files[held][1], None)}
            rule = (f"{files[held][0].name} is the test split; a seeded {val_fraction:.0%} of "
                    f"{files['train'][0].name} (seed {seed}) is the validation split")
    categories = parts["train"][0]["categories"]
    index: dict[int, Any] = {}  # one pycocotools index per file, shared by the splits drawn from it
    out = {}
    for split, (d, img_dir, ids) in parts.items():
        if ids is None:
            ids = sorted(int(im["id"]) for im in d["images"])
        ids = _limited(list(ids), limits.get(split), seed)
        if id(d) not in index:
            index[id(d)] = coco_object(d)
        out[split] = CocoDetectionDataset(d, img_dir, image_size=image_size, image_ids=ids, categories=categories,
                                          hflip=hflip and split == "train", name=f"{name}/{split}",
                                          coco=index[id(d)])
    return DetectionData(out["train"], out["val"], out["test"], name=name,
                         description=f"COCO-format detection data from {root}", split_rule=rule)


def _from_voc(voc: Path, *, image_size: int | None, seed: int, val_fraction: float,
              limits: dict[str, int | None], hflip: bool) -> DetectionData:
    img_dir = voc / "JPEGImages"
    if not img_dir.is_dir():
        raise UserError(f"Pascal VOC image folder {str(img_dir)!r} not found")
    names = {s: _voc_ids(voc, s) for s in ("train", "val")}
    has_test = (voc / "ImageSets" / "Main" / "test.txt").is_file()
    if has_test:
        names["test"] = _voc_ids(voc, "test")
    all_names = sorted({n for v in names.values() for n in v})
    d = voc_to_coco(voc, all_names)
    coco = coco_object(d)
    id_of = {n: i + 1 for i, n in enumerate(all_names)}
    ids = {k: sorted(id_of[n] for n in v) for k, v in names.items()}
    if has_test:
        rule = "ImageSets/Main/train.txt, val.txt and test.txt"
    else:
        ids["test"] = ids["val"]
        ids["train"], ids["val"] = _seeded_split(ids["train"], val_fraction, seed)
        rule = (f"no test.txt: val.txt is the test split, a seeded {val_fraction:.0%} of train.txt (seed {seed}) the "
                "validation split")
    out = {k: CocoDetectionDataset(d, img_dir, image_size=image_size, image_ids=_limited(ids[k], limits.get(k), seed),
                                   hflip=hflip and k == "train", name=f"voc2007/{k}", coco=coco) for k in SPLITS}
    return DetectionData(out["train"], out["val"], out["test"], name="voc2007",
                         description=f"Pascal VOC 2007 from {voc} (20 classes; difficult objects ignored as crowd)",
                         split_rule=rule)


# ------------------------------------------------------------------------------------------------
# Embedded scenes
# ------------------------------------------------------------------------------------------------
_TRAIN_BACKGROUNDS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "grass", "gravel", "hubble_deep_field")
_TEST_BACKGROUNDS = ("motorcycle", "brick", "immunohistochemistry", "moon")


def _background_photos(names: Sequence[str]) -> list[np.ndarray]:
    """scikit-image's bundled photographs as ``float32[H, W, 3]`` in [0, 1] (no download)."""
    from skimage import data as skdata

    out = []
    for n in names:
        img = skdata.stereo_motorcycle()[0] if n == "motorcycle" else getattr(skdata, n)()
        img = np.asarray(img, np.float32) / 255.0
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out.append(img[..., :3])
    return out


def _background(rng: np.random.Generator, photos: list[np.ndarray], size: int) -> np.ndarray:
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.3, 1.0) * min(h, w))
    y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = photo[y0:y0 + side, x0:x0 + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    im = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR),
                    np.float32) / 255.0
    if np.allclose(im[..., 0], im[..., 1]):  # a grey photograph: tint it
        im = im * rng.uniform(0.6, 1.0, 3)[None, None]
    contrast, brightness = rng.uniform(0.6, 1.1), rng.uniform(-0.1, 0.1)
    return np.clip((im - 0.5) * contrast + 0.5 + brightness, 0, 1)


def _unit_polygon(kind: str) -> np.ndarray:
    """Vertices ``float[V, 2]`` of a shape filling the square [-1, 1]²."""
    if kind == "square":
        pts = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], float)
    elif kind == "triangle":
        pts = np.array([(0, -1), (1, 1), (-1, 1)], float)
    elif kind == "star":
        a = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        pts = np.stack([r * np.cos(a), r * np.sin(a)], 1)
    elif kind == "cross":
        t = 0.34
        pts = np.array([(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t),
                        (-1, -t), (-t, -t)], float)
    else:
        raise ValueError(f"unknown polygon shape {kind!r}")
    lo, hi = pts.min(0), pts.max(0)
    return (pts - lo) / (hi - lo) * 2 - 1


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0


def _covered(a: Sequence[float], by: Sequence[float]) -> float:
    """Fraction of box ``a`` covered by box ``by``."""
    iw = max(0.0, min(a[2], by[2]) - max(a[0], by[0]))
    ih = max(0.0, min(a[3], by[3]) - max(a[1], by[1]))
    return iw * ih / max((a[2] - a[0]) * (a[3] - a[1]), 1e-9)


def render_scene(rng: np.random.Generator, photos: list[np.ndarray], *, size: int = 128, max_objects: int = 6,
                 min_size: float = 0.12, max_size: float = 0.42) -> tuple[np.ndarray, list[tuple[int, list[float]]]]:
    """One scene ``uint8[size, size, 3]`` and its objects ``[(class index, [x0, y0, x1, y1]), ...]``.

    0..``max_objects`` objects (mostly 1–5), each of a random class, colour, size (its box side
    between ``min_size`` and ``max_size`` of the image, log-uniform), aspect ratio (0.6–1.7) and small
    rotation, drawn in order over a crop of one of ``photos``. A new object may overlap earlier ones
    (box IoU up to 0.35) but may not cover more than half of one.
    """
    ss = 2  # draw at 2× and downsample: antialiased edges
    bg = _background(rng, photos, size * ss)
    im = Image.fromarray((bg * 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    weights = np.array([0.5, 1.5, 2, 2, 1.8, 1.2, 0.8])[:max_objects + 1]
    n = int(rng.choice(len(weights), p=weights / weights.sum()))
    objects: list[tuple[int, list[float]]] = []
    for _ in range(n):
        for _attempt in range(30):
            cls = int(rng.integers(len(SCENE_CLASSES)))
            side = math.exp(rng.uniform(math.log(min_size), math.log(max_size))) * size
            aspect = math.exp(rng.uniform(math.log(0.6), math.log(1.7)))  # w / h
            w, h = side * math.sqrt(aspect), side / math.sqrt(aspect)
            kind = SCENE_CLASSES[cls]
            cx, cy = rng.uniform(w / 2, size - w / 2), rng.uniform(h / 2, size - h / 2)
            if kind == "circle":
                verts = None
                box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
            else:
                angle = rng.uniform(-0.35, 0.35)
                p = _unit_polygon(kind) * np.array([w / 2, h / 2])
                c, s = math.cos(angle), math.sin(angle)
                verts = p @ np.array([[c, s], [-s, c]]) + np.array([cx, cy])  # (V, 2) rotated
                verts[:, 0] = np.clip(verts[:, 0], 0, size)
                verts[:, 1] = np.clip(verts[:, 1], 0, size)
                box = [float(verts[:, 0].min()), float(verts[:, 1].min()), float(verts[:, 0].max()),
                       float(verts[:, 1].max())]
            if all(_iou(box, b) <= 0.35 and _covered(b, box) <= 0.5 for _, b in objects):
                break
        else:
            continue
        hue = rng.uniform(0, 1)
        fill = tuple(int(255 * v) for v in colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1), rng.uniform(0.6, 1)))
        edge = tuple(int(v * 0.35) for v in fill)
        if verts is None:
            draw.ellipse([v * ss for v in box], fill=fill, outline=edge, width=ss)
        else:
            draw.polygon([(float(x) * ss, float(y) * ss) for x, y in verts], fill=fill, outline=edge, width=ss)
        objects.append((cls, [round(v, 2) for v in box]))
    out = np.asarray(im.resize((size, size), Image.Resampling.LANCZOS), np.float32) / 255.0
    out = np.clip(out + rng.normal(0, 0.02, out.shape), 0, 1)
    return (out * 255).round().astype(np.uint8), objects


def write_detection_scenes(root: str | Path, *, n_train: int = 1200, n_val: int = 200, n_test: int = 300,
                           size: int = 128, seed: int = 0, max_objects: int = 6) -> Path:
    """Write the embedded scenes as a COCO-format folder; reuse it if it is already complete.

    Layout: ``root/annotations/instances_{train,val,test}.json`` + ``root/{train,val,test}/NNNNN.png``.
    Training and validation scenes use crops of ``_TRAIN_BACKGROUNDS``, test scenes crops of the
    held-out ``_TEST_BACKGROUNDS``. Deterministic for a given ``seed`` (one generator per split).
    The folder is built in a temporary sibling and renamed, so a killed run never leaves half of it.
    """
    for key, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test), ("size", size)):
        if int(v) < 1:
            raise ValueError(f"{key} must be >= 1, got {v}")
    if not 0 <= max_objects <= 6:
        raise ValueError(f"max_objects must be in 0..6, got {max_objects}")
    root = Path(root)
    stamp = {"version": _SCENE_VERSION, "n": [n_train, n_val, n_test], "size": size, "seed": seed,
             "max_objects": max_objects}
    if is_complete(root, stamp):
        return root
    with building(root, stamp) as tmp:
        categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SCENE_CLASSES)]
        train_photos, test_photos = _background_photos(_TRAIN_BACKGROUNDS), _background_photos(_TEST_BACKGROUNDS)
        for k, (split, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
            rng = np.random.default_rng([seed, k])
            photos = test_photos if split == "test" else train_photos
            (tmp / split).mkdir(parents=True, exist_ok=True)
            images, anns = [], []
            for i in range(n):
                img, objects = render_scene(rng, photos, size=size, max_objects=max_objects)
                name = f"{i:05d}.png"
                Image.fromarray(img).save(tmp / split / name)
                images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
                for cls, (x0, y0, x1, y1) in objects:
                    anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cls + 1,
                                 "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                                 "area": round((x1 - x0) * (y1 - y0), 2), "iscrowd": 0})
            atomic_write_text(tmp / "annotations" / f"instances_{split}.json",
                              json.dumps({"info": {"description": "vislab embedded detection scenes", "seed": seed},
                                          "images": images, "annotations": anns, "categories": categories}))
    return root
