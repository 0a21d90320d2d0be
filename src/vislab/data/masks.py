"""Images with binary (or instance) masks for promptable segmentation, and the embedded scenes.

A mask folder ``DIR`` holds ``DIR/images/`` and ``DIR/masks/``; an image and its mask share a file stem
(``images/cat_01.jpg`` + ``masks/cat_01.png``), any image format on both sides. A mask is a label image
(0 = background):

* values in {0, 1} or {0, 255}: a binary mask (the usual case);
* small integer labels 1..K (< 128, no 255): an instance mask, each value one object (the embedded scenes
  are written this way);
* anything else (e.g. a 0/255 mask saved as JPEG, whose edges hold in-between values): thresholded at 128.

Objects become prompts in one of two ways (``prompt``): ``"component"`` -- every 8-connected component of
every mask value (at least ``min_area`` pixels at the working size) is one object; ``"mask"`` -- every mask
value is one object (a binary mask is then one object per image, however many pieces it has).

Images without a mask, masks without an image, files that do not decode, masks of another size than
their image and masks with no object are skipped and listed (:class:`MaskFolder`.skipped), never fatal;
a folder with no usable pair is a :class:`vislab.errors.UserError`.

The embedded default (:func:`write_scene_folder`) generates scenes whose objects are *not* boxes --
rings with holes, thin curved bands (like rivers), lumpy blobs and stars -- several per image, on crops
of the real photographs that ship inside scikit-image, each object filled with a tinted texture cut
from another photo. They are written as such a folder (instance masks + ``shapes.json`` with each
instance's shape), so the embedded data and a user's folder go through one code path.

Boxes are in continuous pixel coordinates, torchvision's ``XYXY`` convention: a box around pixel columns
0..9 is ``x0 = 0, x1 = 10`` (so flips move boxes and masks together exactly). :func:`jitter_boxes` moves
each side outward by a seeded 0..``max_shift`` px (MedSAM: 0-20 px at 1024 px).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError
from torch import Tensor

from vislab.data.generated import building, is_complete
from vislab.data.image_folder import IMAGE_EXTENSIONS
from vislab.errors import UserError
from vislab.io.files import atomic_write_text

__all__ = ["PROMPT_MODES", "SCENE_SHAPES", "JointAugment", "MaskFolder", "MaskSample", "check_mask_folder",
           "default_scene_dir",
           "instances_from_labels", "jitter_boxes", "jitter_for_size", "load_mask_folder", "mask_boxes",
           "pair_mask_folder", "read_mask", "render_scene", "split_samples", "write_scene_folder"]

PROMPT_MODES = ("component", "mask")
SCENE_SHAPES = ("ring", "band", "blob", "star")
BACKGROUND_PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
                     "hubble_deep_field", "immunohistochemistry", "moon", "motorcycle", "retina", "rocket", "cell")
MEDSAM_JITTER_PX = 20.0  # MedSAM's box perturbation: each side out by 0-20 px on 1024-px images
_SCENE_VERSION = 1
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity for scipy.ndimage.label


# ---------------------------------------------------------------------------------------------
# boxes
# ---------------------------------------------------------------------------------------------


def mask_boxes(masks: Tensor) -> Tensor:
    """Tight boxes of binary masks: ``Tensor[N, H, W]`` (bool or 0/1) → ``Tensor[N, 4]`` float XYXY.

    Continuous pixel coordinates (torchvision's convention): ``x0`` = first foreground column,
    ``x1`` = last foreground column + 1. An empty mask gives ``[0, 0, 0, 0]``.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be Tensor[N, H, W], got {tuple(masks.shape)}")
    m = masks.bool()
    n = m.shape[0]
    out = torch.zeros(n, 4, dtype=torch.float32)
    if n == 0:
        return out
    cols = m.any(dim=1)  # (N, W)
    rows = m.any(dim=2)  # (N, H)
    for i in range(n):
        xs = torch.nonzero(cols[i]).flatten()
        ys = torch.nonzero(rows[i]).flatten()
        if len(xs):
            out[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    return out


def jitter_for_size(size: int | tuple[int, int]) -> float:
    """MedSAM's 20-px box jitter scaled to an image of ``size`` (its longer side): 20 · size / 1024."""
    side = max(size) if isinstance(size, tuple) else size
    return MEDSAM_JITTER_PX * float(side) / 1024.0


def jitter_boxes(boxes: Tensor, *, image_size: tuple[int, int], max_shift: float,
                 generator: torch.Generator | None = None) -> Tensor:
    """Move every side of every box outward by an independent uniform 0..``max_shift`` px, clipped.

    Args:
        boxes: ``Tensor[N, 4]`` XYXY.
        image_size: ``(H, W)``; boxes are clipped to ``[0, W] × [0, H]``.
        max_shift: the largest outward move of one side, in pixels (>= 0).
        generator: seeds the shifts (``torch.Generator``); the same generator state gives the same boxes.

    Returns:
        ``Tensor[N, 4]`` float32.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be Tensor[N, 4], got {tuple(boxes.shape)}")
    if not max_shift >= 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    h, w = image_size
    shift = torch.rand(boxes.shape[0], 4, generator=generator) * max_shift  # (N, 4)
    sign = torch.tensor([-1.0, -1.0, 1.0, 1.0])
    out = boxes.float() + sign * shift
    lo = torch.zeros(4)
    hi = torch.tensor([w, h, w, h], dtype=torch.float32)
    return torch.minimum(torch.maximum(out, lo), hi)


# ---------------------------------------------------------------------------------------------
# masks and instances
# ---------------------------------------------------------------------------------------------


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as a label image ``int64[H, W]`` (0 = background), by the rules of the module docstring.

    Raises:
        OSError, ValueError, SyntaxError, UnidentifiedImageError: the file does not decode.
    """
    with Image.open(path) as im:
        im.load()
        if im.mode == "P":  # palette image: the indices are the labels
            arr = np.asarray(im)
        elif im.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L"):
            arr = np.asarray(im)
        else:
            arr = np.asarray(im.convert("L"))
    arr = arr.astype(np.int64)
    values = set(np.unique(arr).tolist())
    if values <= {0, 1} or values <= {0, 255}:
        return (arr > 0).astype(np.int64)
    if max(values) < 128:
        return arr  # an instance label image
    return (arr >= 128).astype(np.int64)


def instances_from_labels(labels: np.ndarray, *, prompt: str = "component",
                          min_area: int = 1) -> tuple[np.ndarray, list[int]]:
    """Objects of a label image, one per prompt.

    Args:
        labels: ``int[H, W]``, 0 = background, every other value a mask.
        prompt: ``"component"`` (each 8-connected component of each value) or ``"mask"`` (each value).
        min_area: objects with fewer pixels are dropped (e.g. specks of a noisy mask).

    Returns:
        ``(instances, source)``: ``instances`` ``int32[H, W]`` with objects numbered 1..N (0 elsewhere, also
        where a dropped object was), and ``source[k]`` the label value object ``k + 1`` came from.
    """
    from scipy import ndimage

    if prompt not in PROMPT_MODES:
        raise ValueError(f"prompt must be one of {', '.join(PROMPT_MODES)}, got {prompt!r}")
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D label image, got shape {labels.shape}")
    out = np.zeros(labels.shape, dtype=np.int32)
    source: list[int] = []
    for value in sorted(int(v) for v in np.unique(labels) if v != 0):
        region = labels == value
        if prompt == "mask":
            pieces = [region]
        else:
            comp, n = ndimage.label(region, structure=_EIGHT)
            pieces = [comp == k for k in range(1, n + 1)]
        for piece in pieces:
            if int(piece.sum()) >= min_area:
                source.append(value)
                out[piece] = len(source)
    return out, source


# ---------------------------------------------------------------------------------------------
# mask folders
# ---------------------------------------------------------------------------------------------


@dataclass
class MaskSample:
    """One usable image of a mask folder, at the working size ``S``."""

    stem: str
    image: Tensor  # Tensor[3, S, S] uint8
    instances: Tensor  # Tensor[S, S] int32: objects 1..N (the prompts), 0 = background
    kinds: list[str]  # per object: its shape label (shapes.json) or "object"


@dataclass
class MaskFolder:
    root: Path
    samples: list[MaskSample]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path relative to root, reason)
    has_shapes: bool = False  # shapes.json labelled every instance (the embedded scenes)

    @property
    def num_objects(self) -> int:
        return sum(len(s.kinds) for s in self.samples)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def check_mask_folder(root: str | Path) -> tuple[Path, Path, Path]:
    """``(root, root/images, root/masks)``, or a UserError that says what is missing."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"--data folder {root} does not exist")
    if not root.is_dir():
        raise UserError(f"--data {root} is not a folder (expected a folder with images/ and masks/)")
    images, masks = root / "images", root / "masks"
    missing = [p.name + "/" for p in (images, masks) if not p.is_dir()]
    if missing:
        raise UserError(f"--data {root} has no {' and no '.join(missing)} folder; a mask folder holds images/ and "
                        "masks/ with files paired by stem (images/a.jpg + masks/a.png)")
    return root, images, masks


def pair_mask_folder(root: str | Path) -> tuple[list[tuple[str, Path, Path]], list[tuple[str, str]]]:
    """Pair ``images/`` and ``masks/`` by file stem, without decoding anything.

    Returns:
        ``(pairs, skipped)``: ``pairs`` = ``(stem, image path, mask path)`` sorted by stem; ``skipped`` =
        ``(relative path, reason)`` of images without a mask, masks without an image and stems that several
        files of one side share.
    """
    root, images, masks = check_mask_folder(root)
    skipped: list[tuple[str, str]] = []

    def by_stem(folder: Path) -> dict[str, Path]:
        groups: dict[str, list[Path]] = {}
        for p in _image_files(folder):
            groups.setdefault(p.stem, []).append(p)
        out = {}
        for stem, paths in groups.items():
            if len(paths) > 1:
                for p in paths:
                    skipped.append((str(p.relative_to(root)), f"{len(paths)} files in {folder.name}/ share the stem "
                                                              f"{stem!r}"))
            else:
                out[stem] = paths[0]
        return out

    imgs, msks = by_stem(images), by_stem(masks)
    for stem in sorted(set(imgs) - set(msks)):
        skipped.append((str(imgs[stem].relative_to(root)), "no mask with this stem in masks/"))
    for stem in sorted(set(msks) - set(imgs)):
        skipped.append((str(msks[stem].relative_to(root)), "no image with this stem in images/"))
    pairs = [(stem, imgs[stem], msks[stem]) for stem in sorted(set(imgs) & set(msks))]
    return pairs, skipped


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else "cannot decode"
    return f"{type(exc).__name__}: {text}"


def load_mask_folder(root: str | Path, *, image_size: int, prompt: str = "component",
                     min_area: int | None = None) -> MaskFolder:
    """Decode, resize and split into objects every usable pair of a mask folder.

    Images are resized to ``image_size × image_size`` (bilinear, antialiased), masks with nearest
    neighbour; objects are found at that size (:func:`instances_from_labels`; ``min_area`` defaults to
    0.1 % of the image area, at least 4 px). ``shapes.json`` (``{stem: {label value: shape}}``), when
    present, names each object's shape; otherwise every object is an ``"object"``.

    Raises:
        UserError: the folder is missing pieces, or no pair is usable (the reasons are listed).
    """
    from torchvision.transforms.v2 import functional as TF

    if prompt not in PROMPT_MODES:
        raise UserError(f"prompt must be one of {', '.join(PROMPT_MODES)}, got {prompt!r}")
    pairs, skipped = pair_mask_folder(root)
    root = Path(root)
    if min_area is None:
        min_area = max(4, round(1e-3 * image_size * image_size))
    shapes: dict[str, dict[str, str]] = {}
    if (root / "shapes.json").exists():
        shapes = json.loads((root / "shapes.json").read_text())
    samples: list[MaskSample] = []
    for stem, ipath, mpath in pairs:
        try:
            with Image.open(ipath) as im:
                im.load()
                rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            skipped.append((str(ipath.relative_to(root)), _reason(exc)))
            continue
        try:
            labels = read_mask(mpath)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            skipped.append((str(mpath.relative_to(root)), _reason(exc)))
            continue
        if labels.shape != rgb.shape[:2]:
            skipped.append((str(mpath.relative_to(root)), f"mask is {labels.shape[1]}×{labels.shape[0]} px, its image "
                                                          f"{rgb.shape[1]}×{rgb.shape[0]}"))
            continue
        image = torch.from_numpy(rgb.copy()).permute(2, 0, 1)  # (3, H, W)
        lab = torch.from_numpy(labels)[None]  # (1, H, W)
        if image.shape[1:] != (image_size, image_size):
            image = TF.resize(image, [image_size, image_size], antialias=True)
            lab = TF.resize(lab, [image_size, image_size], interpolation=TF.InterpolationMode.NEAREST)
        inst, source = instances_from_labels(lab[0].numpy(), prompt=prompt, min_area=min_area)
        if not source:
            skipped.append((str(mpath.relative_to(root)), f"no object of at least {min_area} px at "
                                                          f"{image_size}×{image_size}"))
            continue
        names = shapes.get(stem, {})
        kinds = [names.get(str(v), "object") for v in source]
        samples.append(MaskSample(stem, image.contiguous(), torch.from_numpy(inst), kinds))
    if not samples:
        shown = "; ".join(f"{p}: {r}" for p, r in skipped[:3]) or "the folders are empty"
        raise UserError(f"--data {root}: no usable image/mask pair ({len(skipped)} file(s) skipped: {shown}"
                        f"{' ...' if len(skipped) > 3 else ''})")
    has_shapes = bool(shapes) and all(k != "object" for s in samples for k in s.kinds)
    return MaskFolder(root, samples, skipped, has_shapes)


def split_samples(n: int, *, seed: int, test_fraction: float = 0.1,
                  val_fraction: float = 0.1) -> dict[str, list[int]]:
    """Seeded split of ``n`` images: ``test_fraction`` held out for testing (the 90/10 split), then
    ``val_fraction`` of the rest for validation. Every split gets at least one image (needs ``n >= 3``)."""
    if n < 3:
        raise ValueError(f"a train/val/test split needs at least 3 images, got {n}")
    if not 0 < test_fraction < 1 or not 0 < val_fraction < 1:
        raise ValueError(f"test_fraction and val_fraction must lie in (0, 1), got {test_fraction}, {val_fraction}")
    perm = np.random.default_rng(seed).permutation(n).tolist()
    n_test = min(max(1, round(test_fraction * n)), n - 2)
    n_val = min(max(1, round(val_fraction * (n - n_test))), n - n_test - 1)
    return {"train": sorted(perm[n_test + n_val:]), "val": sorted(perm[n_test:n_test + n_val]),
            "test": sorted(perm[:n_test])}


# ---------------------------------------------------------------------------------------------
# joint augmentation
# ---------------------------------------------------------------------------------------------


class JointAugment:
    """Horizontal/vertical flips and brightness/contrast with ``torchvision.transforms.v2``, applied to an
    image, its instance mask and its boxes together (``tv_tensors.Image``/``Mask``/``BoundingBoxes``).

    ``__call__(image uint8 Tensor[3, H, W], instances Tensor[H, W], boxes Tensor[N, 4] XYXY, seed)`` returns
    the three transformed; colour changes touch only the image; the draw is seeded by ``seed``.
    """

    def __init__(self, *, hflip: float = 0.5, vflip: float = 0.5, brightness: float = 0.25,
                 contrast: float = 0.25) -> None:
        from torchvision.transforms import v2

        self.transform = v2.Compose([
            v2.RandomHorizontalFlip(hflip),
            v2.RandomVerticalFlip(vflip),
            v2.ColorJitter(brightness=brightness, contrast=contrast),
        ])

    def __call__(self, image: Tensor, instances: Tensor, boxes: Tensor, *, seed: int) -> tuple[Tensor, Tensor, Tensor]:
        from torchvision import tv_tensors

        h, w = image.shape[-2:]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            img, inst, bx = self.transform(tv_tensors.Image(image), tv_tensors.Mask(instances),
                                           tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)))
        return img.as_subclass(Tensor), inst.as_subclass(Tensor), bx.as_subclass(Tensor)


# ---------------------------------------------------------------------------------------------
# the embedded scenes
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """scikit-image's real photographs, RGB uint8 (shipped in the package; nothing is downloaded)."""
    from skimage import data

    out = []
    for name in BACKGROUND_PHOTOS:
        img = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
    return tuple(out)


def _crop(rng: np.random.Generator, photo: np.ndarray, size: int, *, min_frac: float = 0.35) -> np.ndarray:
    """A random square crop of ``photo`` resized to ``size`` (float32 in [0, 1], H×W×3), randomly flipped."""
    h, w = photo.shape[:2]
    side = int(rng.uniform(min_frac, 0.95) * min(h, w))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    im = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR, reducing_gap=3.0)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr)


def _shape_alpha(kind: str, rng: np.random.Generator, size: int, scale: float = 1.0) -> np.ndarray:
    """Coverage ``float32[size, size]`` in [0, 1] of one object of ``kind`` (drawn at 3×, area-averaged)."""
    ss = 3
    big = size * ss
    im = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(im)
    s = float(big)
    if kind == "ring":
        r_out = rng.uniform(0.09, 0.17) * scale * s
        r_in = r_out * rng.uniform(0.45, 0.68)
        cx, cy = rng.uniform(r_out * 1.1, s - r_out * 1.1, 2)
        ecc, ang = rng.uniform(0.75, 1.0), rng.uniform(0, math.pi)
        t = np.linspace(0, 2 * math.pi, 160, endpoint=False)

        def ellipse(r: float) -> list[tuple[float, float]]:
            x, y = r * np.cos(t), r * ecc * np.sin(t)
            return list(zip(cx + x * math.cos(ang) - y * math.sin(ang), cy + x * math.sin(ang) + y * math.cos(ang)))

        draw.polygon(ellipse(r_out), fill=255)
        draw.polygon(ellipse(r_in), fill=0)
    elif kind == "band":
        width = rng.uniform(0.022, 0.04) * scale * s
        length = min(0.95, rng.uniform(0.45, 0.8) * scale) * s
        n = 80
        heading = rng.uniform(0, 2 * math.pi)
        bend = rng.uniform(1.2, 3.0) * rng.choice([-1, 1])
        freq, phase = rng.uniform(0.8, 2.0), rng.uniform(0, 2 * math.pi)
        u = np.linspace(0, 1, n)
        theta = heading + bend * np.sin(2 * math.pi * freq * u + phase) * 0.5
        step = length / n
        x = np.concatenate([[0.0], np.cumsum(step * np.cos(theta[1:]))])
        y = np.concatenate([[0.0], np.cumsum(step * np.sin(theta[1:]))])
        margin = width + 0.03 * s
        span_x, span_y = x.max() - x.min(), y.max() - y.min()
        fit = min(1.0, (s - 2 * margin) / max(span_x, 1e-6), (s - 2 * margin) / max(span_y, 1e-6))
        x, y = (x - x.min()) * fit, (y - y.min()) * fit
        x += rng.uniform(margin, max(margin, s - margin - (x.max() - x.min())))  # max(): float round-off
        y += rng.uniform(margin, max(margin, s - margin - (y.max() - y.min())))
        pts = list(zip(x.tolist(), y.tolist()))
        draw.line(pts, fill=255, width=max(1, int(width)), joint="curve")
        for px, py in (pts[0], pts[-1]):
            draw.ellipse([px - width / 2, py - width / 2, px + width / 2, py + width / 2], fill=255)
    elif kind == "blob":
        r = rng.uniform(0.08, 0.15) * scale * s
        cx, cy = rng.uniform(r * 1.5, s - r * 1.5, 2)
        t = np.linspace(0, 2 * math.pi, 180, endpoint=False)
        rad = np.ones_like(t)
        for k in range(2, 6):
            rad += rng.uniform(0.04, 0.2) / (k / 2) * np.cos(k * t + rng.uniform(0, 2 * math.pi))
        rad = r * np.clip(rad, 0.45, None)
        draw.polygon(list(zip(cx + rad * np.cos(t), cy + rad * np.sin(t))), fill=255)
    elif kind == "star":
        r = rng.uniform(0.09, 0.16) * scale * s
        cx, cy = rng.uniform(r * 1.05, s - r * 1.05, 2)
        points = int(rng.integers(5, 9))
        inner = rng.uniform(0.38, 0.55)
        a0 = rng.uniform(0, 2 * math.pi)
        pts = []
        for k in range(2 * points):
            a = a0 + k * math.pi / points
            rr = r if k % 2 == 0 else r * inner
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        draw.polygon(pts, fill=255)
    else:
        raise ValueError(f"unknown scene shape {kind!r}; expected one of {', '.join(SCENE_SHAPES)}")
    return np.asarray(im.resize((size, size), Image.BOX), dtype=np.float32) / 255.0  # area average


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    import colorsys

    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)


def render_scene(rng: np.random.Generator, size: int = 256, *, objects: tuple[int, int] = (2, 5),
                 scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One scene: ``(image uint8[S, S, 3], instances uint8[S, S] with objects 1..K, shapes[K])``.

    The background is a crop of a scikit-image photograph; each object (shape drawn uniformly from
    :data:`SCENE_SHAPES`, its size ``scale`` times the base size) is a texture cut from another photo,
    partly tinted with a random colour (so object and background colours often overlap) and alpha-blended
    with antialiased edges; its mask is where its coverage is at least 1/2. Objects keep
    a gap of at least 2 px from each other, so every object is also one connected component.
    """
    from scipy import ndimage

    photos = _photos()
    bg_idx = int(rng.integers(len(photos)))
    img = _crop(rng, photos[bg_idx], size)
    gray = img.mean(axis=2, keepdims=True)
    img = np.clip(gray + rng.uniform(0.6, 1.1) * (img - gray), 0, 1)  # vary the saturation a little
    inst = np.zeros((size, size), dtype=np.uint8)
    taken = np.zeros((size, size), dtype=bool)
    kinds: list[str] = []
    want = int(rng.integers(objects[0], objects[1] + 1))
    for _ in range(want * 8):
        if len(kinds) == want:
            break
        kind = SCENE_SHAPES[int(rng.integers(len(SCENE_SHAPES)))]
        alpha = _shape_alpha(kind, rng, size, scale)
        m = alpha >= 0.5
        if m.sum() < 0.002 * size * size:
            continue
        if (ndimage.binary_dilation(m, structure=_EIGHT, iterations=2) & taken).any():
            continue
        others = [i for i in range(len(photos)) if i != bg_idx]
        tex = _crop(rng, photos[others[int(rng.integers(len(others)))]], size, min_frac=0.2)
        tint = _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.25, 0.8), rng.uniform(0.5, 1.0))
        tex_gray = tex.mean(axis=2, keepdims=True)
        mix = rng.uniform(0.3, 0.65)  # how much of the object is the tint vs the texture: colours overlap
        obj = mix * tint[None, None] * (0.55 + 0.9 * tex_gray) + (1 - mix) * tex
        a = alpha[..., None] * rng.uniform(0.85, 1.0)
        a = np.where(m[..., None], np.maximum(a, 0.5), a)  # the masked pixels are at least half object
        img = img * (1 - a) + np.clip(obj, 0, 1) * a
        kinds.append(kind)
        inst[m] = len(kinds)
        taken |= m
    img = np.clip(img + rng.normal(0, 0.012, img.shape), 0, 1)
    return (img * 255 + 0.5).astype(np.uint8), inst, kinds


def default_scene_dir(*, num_images: int, size: int, seed: int, objects: tuple[int, int] = (2, 5),
                      scale: float = 1.0) -> Path:
    """Where the embedded scenes live: ``$VISLAB_CACHE`` (or ``~/.cache/vislab``)``/sam-scenes-...``."""
    from vislab.data.generated import default_cache_dir

    return default_cache_dir() / (f"sam-scenes-v{_SCENE_VERSION}-n{num_images}-s{size}-seed{seed}"
                                  f"-obj{objects[0]}-{objects[1]}-x{scale:g}")


def write_scene_folder(root: str | Path, *, num_images: int = 400, size: int = 256, seed: int = 0,
                       objects: tuple[int, int] = (2, 5), scale: float = 1.0) -> Path:
    """Write ``num_images`` scenes as a mask folder: ``images/NNNN.png``, ``masks/NNNN.png`` (instance
    labels 1..K), ``shapes.json`` (``{stem: {label: shape}}``). Deterministic in (num_images, size, seed,
    objects, scale: the objects' size relative to the image); an existing complete folder with the same
    settings is reused. Built in a temporary sibling folder and renamed, so a killed run never leaves half of it."""
    if num_images < 1 or size < 32:
        raise ValueError(f"need num_images >= 1 and size >= 32, got {num_images}, {size}")
    if not 1 <= objects[0] <= objects[1]:
        raise ValueError(f"objects must be (min, max) with 1 <= min <= max, got {objects}")
    if not 0.25 <= scale <= 2.5:
        raise ValueError(f"scale must lie in [0.25, 2.5], got {scale}")
    root = Path(root)
    stamp = {"version": _SCENE_VERSION, "num_images": num_images, "size": size, "seed": seed,
             "objects": list(objects), "scale": scale}
    if is_complete(root, stamp):
        return root
    with building(root, stamp) as tmp:
        (tmp / "images").mkdir(parents=True)
        (tmp / "masks").mkdir()
        rng = np.random.default_rng(seed)
        shapes: dict[str, dict[str, str]] = {}
        for i in range(num_images):
            img, inst, kinds = render_scene(rng, size, objects=objects, scale=scale)
            stem = f"{i:04d}"
            Image.fromarray(img).save(tmp / "images" / f"{stem}.png")
            Image.fromarray(inst).save(tmp / "masks" / f"{stem}.png")
            shapes[stem] = {str(k + 1): kind for k, kind in enumerate(kinds)}
        atomic_write_text(tmp / "shapes.json", json.dumps(shapes))
    return root


