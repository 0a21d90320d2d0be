"""Digit canvases: real handwritten digits, rotated and scaled, several per image, on clutter.

The embedded multi-label dataset of the deformable-vs-regular experiment (SPEC §4). Each canvas
holds 1–3 *distinct* digits drawn from scikit-learn's ``load_digits`` (1797 real 8×8 scans of
handwritten digits, shipped inside scikit-learn), each upscaled smoothly, rotated by up to
``±max_rotation`` degrees and scaled to ``digit_size`` pixels, placed with little overlap on a
cluttered background: pen strokes (line segments and arcs, the parts digits are made of),
fragments of other digits and pixel noise. The label is the set of digits present, a multi-hot
``[10]`` vector, like COCO's 80-label vectors. Because orientation, size and position vary and the
background is made of digit-like parts, geometry matters — the setting deformable convolution is
meant for.

Honest test split: the 1797 source scans are split once, per class, by ``split_seed`` into
disjoint ``train`` / ``val`` / ``test`` pools; canvases of a split use only that split's scans.

Rendering is vectorised: every digit, fragment and stroke is drawn in a small window around it
by one ``grid_sample`` / distance computation per chunk of items, and composited into its canvas
with a per-pixel maximum (``scatter_reduce``). 3000 canvases of 64×64 take about 1 s of CPU
time on one thread.

Example::

    images, labels, meta = make_digit_canvases(3000, split="train", seed=0)
    images.shape, labels.shape        # (3000, 64, 64) uint8, (3000, 10) float32
    ds = DigitCanvasDataset(3000, split="train", seed=0)
    x, y = ds[0]                      # Tensor[1, 64, 64], Tensor[10]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

LABEL_NAMES: list[str] = [str(d) for d in range(10)]
SPLITS = ("train", "val", "test", "all")
# Normalisation used by DigitCanvasDataset: x = (pixel / 255 - MEAN) / STD.
MEAN, STD = 0.5, 0.5

_SOURCE_RES = 32  # load_digits' 8×8 scans are upsampled (bicubic) to this before rendering
_CHUNK = 1024  # items rendered per call (memory ~ _CHUNK · P² · 40 bytes, P ≤ ~40 by default)


@dataclass(frozen=True)
class DigitPlacement:
    """Where one digit was drawn on its canvas (all in pixels of the canvas).

    ``center`` is ``(x, y)``; ``size`` is the side of the square the 8×8 scan fills before rotation;
    ``angle`` is the counter-clockwise rotation in degrees; ``box`` is ``(x0, y0, x1, y1)``, the
    axis-aligned bounds of the rotated square, clipped to the canvas; ``source_index`` indexes
    ``sklearn.datasets.load_digits()``.
    """

    digit: int
    center: tuple[float, float]
    size: float
    angle: float
    box: tuple[float, float, float, float]
    source_index: int

    @property
    def scale(self) -> float:
        """Magnification of the 8×8 scan (``size / 8``)."""
        return self.size / 8.0


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)  # [1797, 8, 8] in [0, 1]


@functools.lru_cache(maxsize=1)
def _upsampled_scans() -> Tensor:
    """All 1797 scans upsampled (bicubic) to ``Tensor[1797, 1, R, R]``: smooth pen-like edges."""
    scans = torch.from_numpy(_load_digits()[0]).unsqueeze(1)  # (1797, 1, 8, 8)
    return F.interpolate(scans, size=(_SOURCE_RES, _SOURCE_RES), mode="bicubic", align_corners=False).clamp_(0, 1)


def source_split(split: str, *, split_seed: int = 0, val_fraction: float = 0.15,
                 test_fraction: float = 0.25) -> np.ndarray:
    """Indices into ``load_digits()`` of the scans a split may use (sorted).

    Per digit class the scans are permuted by ``split_seed``; the first ``test_fraction`` go to
    ``test``, the next ``val_fraction`` to ``val``, the rest to ``train`` (``all``: every scan).
    The three pools are disjoint and together cover all 1797 scans.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction and test_fraction must be in [0, 1) with a sum below 1, "
                         f"got {val_fraction} and {test_fraction}")
    _, targets = _load_digits()
    if split == "all":
        return np.arange(targets.size)
    rng = np.random.default_rng(split_seed)
    keep = []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(targets == c))
        n_test, n_val = round(test_fraction * idx.size), round(val_fraction * idx.size)
        part = {"test": idx[:n_test], "val": idx[n_test:n_test + n_val], "train": idx[n_test + n_val:]}
        keep.append(part[split])
    return np.sort(np.concatenate(keep))


def _pair(value, name: str, kind=float) -> tuple:
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a (min, max) pair, got {value!r}") from None
    if not (kind(lo) == lo and kind(hi) == hi and 0 < lo <= hi):
        raise ValueError(f"{name} must be a (min, max) pair of positive {kind.__name__}s with min <= max, "
                         f"got {value!r}")
    return kind(lo), kind(hi)


def _coords(origin: Tensor, patch: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates of square patches: ``X`` ``Tensor[M, 1, P]``, ``Y`` ``Tensor[M, P, 1]``.

    ``origin`` (``Tensor[M, 2]``, integer ``(x, y)``) is the top-left pixel of each patch; an origin
    of ``(0, 0)`` with ``patch = S`` covers a whole canvas.
    """
    r = torch.arange(patch, dtype=torch.float32)
    o = origin.to(torch.float32)
    return (o[:, 0].view(-1, 1, 1) + r.view(1, 1, -1)), (o[:, 1].view(-1, 1, 1) + r.view(1, -1, 1))


def _render_sprites(sprites: Tensor, centers: Tensor, sizes: Tensor, angles: Tensor,
                    X: Tensor, Y: Tensor) -> Tensor:
    """Draw square sprites, rotated and scaled, at the pixels ``X``, ``Y`` (see :func:`_coords`).

    Args:
        sprites: ``Tensor[M, 1, R, R]`` intensities in ``[0, 1]``.
        centers: ``Tensor[M, 2]`` ``(x, y)`` canvas pixel coordinates of the sprite centres.
        sizes: ``Tensor[M]`` side in pixels of the square each sprite fills.
        angles: ``Tensor[M]`` counter-clockwise rotation (on screen) in degrees.

    Returns:
        ``Tensor[M, P, P]``, bilinear samples, zero outside every sprite.
    """
    px = X - centers[:, 0].view(-1, 1, 1)  # (M, 1, P)
    py = Y - centers[:, 1].view(-1, 1, 1)  # (M, P, 1)
    a = torch.deg2rad(angles).view(-1, 1, 1)
    half = (sizes / 2).view(-1, 1, 1)
    # inverse rotation of canvas offsets into the sprite frame (image y points down, so a
    # counter-clockwise turn on screen is a clockwise turn in (x, y) maths coordinates)
    u = (torch.cos(a) * px - torch.sin(a) * py) / half  # (M, P, P), -1..1 spans the sprite
    v = (torch.sin(a) * px + torch.cos(a) * py) / half
    grid = torch.stack((u, v), dim=-1)  # (M, P, P, 2)
    out = F.grid_sample(sprites, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, 0]  # (M, P, P)


def _render_lines(p: Tensor, width: Tensor, alpha: Tensor, X: Tensor, Y: Tensor) -> Tensor:
    """Anti-aliased straight pen strokes at the pixels ``X``, ``Y`` (see :func:`_coords`).

    Args:
        p: ``Tensor[K, 4]`` segment end points ``(x0, y0, x1, y1)`` in canvas pixels.
        width: ``Tensor[K]`` pen width in pixels; alpha: ``Tensor[K]`` ink intensity.

    Returns:
        ``Tensor[K, P, P]`` ink in ``[0, alpha]``: full within ``width / 2`` of the segment,
        fading to 0 over one pixel.
    """
    x0, y0, x1, y1 = (p[:, i].view(-1, 1, 1) for i in range(4))
    dx, dy = x1 - x0, y1 - y0
    t = (((X - x0) * dx + (Y - y0) * dy) / (dx * dx + dy * dy).clamp_min(1e-6)).clamp(0, 1)  # (K, P, P)
    d = torch.hypot(X - x0 - t * dx, Y - y0 - t * dy)  # distance to the segment
    return (width.view(-1, 1, 1) / 2 + 0.5 - d).clamp(0, 1) * alpha.view(-1, 1, 1)


def _render_arcs(p: Tensor, width: Tensor, alpha: Tensor, X: Tensor, Y: Tensor) -> Tensor:
    """Anti-aliased circular-arc pen strokes at the pixels ``X``, ``Y`` (see :func:`_coords`).

    Args:
        p: ``Tensor[K, 5]`` ``(cx, cy, r, a0, a1)``: centre and radius in pixels, the arc runs
            from angle ``a0`` to ``a1 > a0`` (radians, measured in image coordinates, y down).
        width: ``Tensor[K]`` pen width in pixels; alpha: ``Tensor[K]`` ink intensity.

    Returns:
        ``Tensor[K, P, P]`` ink in ``[0, alpha]``.
    """
    cx, cy, r, a0, a1 = (p[:, i].view(-1, 1, 1) for i in range(5))
    rx, ry = X - cx, Y - cy  # (K, 1, P), (K, P, 1)
    mid, span = (a0 + a1) / 2, (a1 - a0) / 2
    inside = torch.remainder(torch.atan2(ry, rx) - mid + math.pi, 2 * math.pi).sub(math.pi).abs() <= span
    d_circle = (torch.hypot(rx, ry) - r).abs()  # (K, P, P)
    d_ends = torch.minimum(torch.hypot(rx - r * torch.cos(a0), ry - r * torch.sin(a0)),
                           torch.hypot(rx - r * torch.cos(a1), ry - r * torch.sin(a1)))
    d = torch.where(inside, d_circle, d_ends)  # distance to the arc
    return (width.view(-1, 1, 1) / 2 + 0.5 - d).clamp(0, 1) * alpha.view(-1, 1, 1)


def _draw(canvas: Tensor, owner: Tensor, origin: Tensor, patch: int, render: Callable[..., Tensor],
          *args: Tensor) -> None:
    """Render items on ``patch × patch`` pixel windows and max-composite them into ``canvas`` in place.

    Args:
        canvas: ``Tensor[n, S, S]``, values ``>= 0``.
        owner: ``Tensor[M]`` the canvas each item is drawn on.
        origin: ``Tensor[M, 2]`` integer ``(x, y)`` top-left pixel of each item's window (it may
            stick out of the canvas; those pixels are dropped).
        render: ``render(*args_chunk, X, Y)`` → ``Tensor[m, P, P]`` (see :func:`_coords`).
    """
    n, S, _ = canvas.shape
    flat = canvas.view(-1)
    r = torch.arange(patch)
    for i in range(0, owner.shape[0], _CHUNK):
        sl = slice(i, i + _CHUNK)
        X, Y = _coords(origin[sl], patch)
        layers = render(*(a[sl] for a in args), X, Y)  # (m, P, P)
        xs = origin[sl, 0].view(-1, 1, 1) + r.view(1, 1, -1)  # (m, 1, P) integer pixel columns
        ys = origin[sl, 1].view(-1, 1, 1) + r.view(1, -1, 1)  # (m, P, 1)
        inside = (xs >= 0) & (xs < S) & (ys >= 0) & (ys < S)  # (m, P, P)
        idx = owner[sl].view(-1, 1, 1) * (S * S) + ys.clamp(0, S - 1) * S + xs.clamp(0, S - 1)
        # pixels outside the canvas carry 0, a no-op for a max over values >= 0
        flat.scatter_reduce_(0, idx.reshape(-1), (layers * inside).reshape(-1), "amax", include_self=True)


def _place(size: float, boxes: np.ndarray, canvas_size: int, max_overlap: float,
           rng: np.random.Generator, tries: int = 100) -> np.ndarray:
    """A square ``(x0, y0, x1, y1)`` of side ``size`` inside the canvas overlapping ``boxes`` (``[m, 4]``)
    by at most ``max_overlap`` of the smaller area: the first of ``tries`` random candidates that
    does, else the least overlapping one."""
    c = rng.uniform(size / 2, canvas_size - size / 2, size=(tries, 2))
    sq = np.concatenate([c - size / 2, c + size / 2], axis=1)  # (T, 4)
    if boxes.shape[0] == 0:
        return sq[0]
    w = np.minimum(sq[:, None, 2], boxes[None, :, 2]) - np.maximum(sq[:, None, 0], boxes[None, :, 0])
    h = np.minimum(sq[:, None, 3], boxes[None, :, 3]) - np.maximum(sq[:, None, 1], boxes[None, :, 1])
    inter = w.clip(0) * h.clip(0)  # (T, m)
    smaller = np.minimum(size * size, (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    overlap = (inter / smaller).max(axis=1)  # (T,)
    ok = np.flatnonzero(overlap <= max_overlap)
    return sq[ok[0] if ok.size else int(np.argmin(overlap))]


def make_digit_canvases(
    n: int,
    *,
    seed: int,
    split: str = "train",
    canvas_size: int = 64,
    digits_per_canvas: tuple[int, int] = (1, 3),
    digit_size: tuple[float, float] = (14.0, 26.0),
    max_rotation: float = 45.0,
    clutter: float = 0.5,
    max_overlap: float = 0.1,
    split_seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.25,
) -> tuple[np.ndarray, np.ndarray, list[list[DigitPlacement]]]:
    """Generate ``n`` grayscale canvases of handwritten digits with their multi-hot labels.

    Args:
        n: number of canvases.
        seed: randomness of the canvases; the same ``(seed, split, arguments)`` give the same
            canvases. The split is mixed into the seed, so ``train`` and ``test`` differ even
            with one seed.
        split: ``"train"``, ``"val"``, ``"test"`` (disjoint pools of source scans, see
            :func:`source_split`) or ``"all"``.
        canvas_size: side ``S`` of the square canvas in pixels.
        digits_per_canvas: inclusive ``(min, max)`` number of distinct digits per canvas (≤ 10).
        digit_size: inclusive ``(min, max)`` side in pixels of the square an 8×8 scan fills,
            drawn log-uniformly (the scale is ``size / 8``).
        max_rotation: rotations are uniform in ``[-max_rotation, max_rotation]`` degrees
            (counter-clockwise positive).
        clutter: background clutter in ``[0, 1]``: 0 is a clean black canvas; at 1 each canvas
            gets up to 8 pen strokes (lines and arcs), up to 4 fragments of other scans (a 3×3
            to 4×4 window of the 8×8 scan, any rotation) and pixel noise of σ ≈ 20/255.
        max_overlap: digits are placed so that no two squares intersect by more than this
            fraction of the smaller one (the least overlapping of 100 random tries when that
            cannot be met).
        split_seed, val_fraction, test_fraction: the source-scan split, see :func:`source_split`.

    Returns:
        ``images``: ``uint8 ndarray[n, S, S]`` (one channel, white ink on dark), ``labels``:
        ``float32 ndarray[n, 10]`` multi-hot, ``meta``: per canvas the list of its
        :class:`DigitPlacement` (one per digit, in drawing order).
    """
    if not (isinstance(n, int) and n >= 0):
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not (isinstance(canvas_size, int) and canvas_size >= 8):
        raise ValueError(f"canvas_size must be an int >= 8, got {canvas_size!r}")
    kmin, kmax = _pair(digits_per_canvas, "digits_per_canvas", int)
    if kmax > 10:
        raise ValueError(f"digits_per_canvas allows at most 10 distinct digits, got {digits_per_canvas!r}")
    smin, smax = _pair(digit_size, "digit_size", float)
    if smax > canvas_size:
        raise ValueError(f"digit_size max must not exceed canvas_size={canvas_size}, got {digit_size!r}")
    if not 0.0 <= clutter <= 1.0:
        raise ValueError(f"clutter must lie in [0, 1], got {clutter}")
    if not 0.0 <= max_rotation <= 180.0:
        raise ValueError(f"max_rotation must lie in [0, 180] degrees, got {max_rotation}")
    if not 0.0 <= max_overlap <= 1.0:
        raise ValueError(f"max_overlap must lie in [0, 1], got {max_overlap}")

    _, targets = _load_digits()
    pool = source_split(split, split_seed=split_seed, val_fraction=val_fraction, test_fraction=test_fraction)
    by_class = [pool[targets[pool] == c] for c in range(10)]
    counts = np.array([p.size for p in by_class])
    if (counts == 0).any():
        raise ValueError(f"split {split!r} has no source scan of some digit; lower val/test fractions")
    table = np.zeros((10, counts.max()), np.int64)  # table[c, j]: j-th scan of class c in the pool
    for c, p in enumerate(by_class):
        table[c, :p.size] = p
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    S = canvas_size

    # --- 1. the digits: k distinct classes per canvas, a scan of each, size, angle, position -----
    ks = rng.integers(kmin, kmax + 1, size=n)  # (n,)
    classes = np.argsort(rng.random((n, 10)), axis=1)  # a random permutation per canvas
    take = np.arange(10) < ks[:, None]  # (n, 10): the first k of each permutation
    d_owner = np.repeat(np.arange(n), ks)  # (D,) canvas of each digit
    d_digit = classes[take]  # (D,)
    d_src = table[d_digit, (rng.random(d_digit.size) * counts[d_digit]).astype(np.int64)]
    d_size = np.exp(rng.uniform(np.log(smin), np.log(smax), size=d_digit.size))
    d_angle = rng.uniform(-max_rotation, max_rotation, size=d_digit.size)
    d_square = np.zeros((d_digit.size, 4))
    first = np.r_[0, np.cumsum(ks)]
    for i in range(n):  # positions: sequential rejection sampling within each canvas
        for j in range(first[i], first[i + 1]):
            d_square[j] = _place(d_size[j], d_square[first[i]:j], S, max_overlap, rng)
    d_xy = (d_square[:, :2] + d_square[:, 2:]) / 2  # (D, 2) centres
    labels = np.zeros((n, 10), np.float32)
    labels[d_owner, d_digit] = 1.0

    rad = np.deg2rad(d_angle)
    ext = d_size / 2 * (np.abs(np.cos(rad)) + np.abs(np.sin(rad)))  # half-extent of the rotated square
    d_box = np.stack([d_xy[:, 0] - ext, d_xy[:, 1] - ext, d_xy[:, 0] + ext, d_xy[:, 1] + ext], 1).clip(0, S)
    meta = [[DigitPlacement(int(d_digit[j]), (float(d_xy[j, 0]), float(d_xy[j, 1])), float(d_size[j]),
                            float(d_angle[j]), tuple(float(v) for v in d_box[j]), int(d_src[j]))
             for j in range(first[i], first[i + 1])] for i in range(n)]

    # --- 2. the clutter: strokes (lines, arcs) and fragments of other scans ---------------------
    n_lines = rng.integers(0, round(4 * clutter) + 1, size=n)
    n_arcs = rng.integers(0, round(4 * clutter) + 1, size=n)
    n_frag = rng.integers(0, round(4 * clutter) + 1, size=n)
    L, A, Fn = int(n_lines.sum()), int(n_arcs.sum()), int(n_frag.sum())
    start = rng.uniform(0, S, size=(L, 2))
    length = rng.uniform(0.1, 0.35, size=L) * S
    theta = rng.uniform(0, 2 * np.pi, size=L)
    l_p = np.c_[start, start[:, 0] + length * np.cos(theta), start[:, 1] + length * np.sin(theta)]
    a0 = rng.uniform(-np.pi, np.pi, size=A)
    a_p = np.c_[rng.uniform(0, S, size=(A, 2)), rng.uniform(0.05, 0.18, size=A) * S,
                a0, a0 + rng.uniform(0.4 * np.pi, 1.3 * np.pi, size=A)]
    f_src = rng.choice(pool, size=Fn)
    f_lo = rng.integers(0, 5, size=(Fn, 2))  # window (row, col) start in the 8×8 scan
    f_hw = rng.integers(3, 5, size=(Fn, 2))  # window height, width: 3 or 4 of 8
    f_size = np.exp(rng.uniform(np.log(smin), np.log(smax), size=Fn))
    f_angle = rng.uniform(-180, 180, size=Fn)
    f_xy = rng.uniform(0, S, size=(Fn, 2))

    def t(a, dtype=torch.float32) -> Tensor:
        return torch.as_tensor(np.asarray(a), dtype=dtype)

    # --- 3. render: digits at full ink, clutter dimmer, per-pixel maximum, then noise ----------
    up = _upsampled_scans()  # (1797, 1, R, R)
    cells = torch.arange(_SOURCE_RES) * 8 // _SOURCE_RES  # scan row/column of each upsampled pixel
    lo, hw = t(f_lo, torch.int64), t(f_hw, torch.int64)
    win_r = (cells >= lo[:, :1]) & (cells < lo[:, :1] + hw[:, :1])  # (Fn, R)
    win_c = (cells >= lo[:, 1:]) & (cells < lo[:, 1:] + hw[:, 1:])
    f_alpha = t(rng.uniform(0.5, 1.0, size=Fn))
    frags = up[t(f_src, torch.int64)] * (win_r[:, None, :, None] & win_c[:, None, None, :]) \
        * f_alpha.view(-1, 1, 1, 1)  # (Fn, 1, R, R)

    def floor(a) -> Tensor:
        return t(np.floor(a), torch.int64)

    canvas = torch.zeros(n, S, S)
    # windows: the rotated sprite square (≤ size·√2) or the stroke's bounding box, plus margins
    P = math.ceil(smax * math.sqrt(2)) + 3
    _draw(canvas, t(d_owner, torch.int64), floor(d_xy - P / 2), P, _render_sprites,
          up[t(d_src, torch.int64)], t(d_xy), t(d_size), t(d_angle))
    _draw(canvas, t(np.repeat(np.arange(n), n_frag), torch.int64), floor(f_xy - P / 2), P, _render_sprites,
          frags, t(f_xy), t(f_size), t(f_angle))
    l_w = rng.uniform(1.2, 3.0, size=L)
    margin = 3.0 / 2 + 1
    P = math.ceil(np.abs(l_p[:, 2:] - l_p[:, :2]).max(initial=0.0) + 2 * margin) + 1
    _draw(canvas, t(np.repeat(np.arange(n), n_lines), torch.int64),
          floor(np.minimum(l_p[:, :2], l_p[:, 2:]) - margin), P, _render_lines,
          t(l_p), t(l_w), t(rng.uniform(0.5, 1.0, size=L)))
    a_w = rng.uniform(1.2, 3.0, size=A)
    P = math.ceil(2 * (a_p[:, 2].max(initial=0.0) + margin)) + 1
    _draw(canvas, t(np.repeat(np.arange(n), n_arcs), torch.int64),
          floor(a_p[:, :2] - a_p[:, 2:3] - margin), P, _render_arcs,
          t(a_p), t(a_w), t(rng.uniform(0.5, 1.0, size=A)))
    if clutter > 0:
        canvas += 0.08 * clutter * torch.from_numpy(rng.standard_normal((n, S, S), dtype=np.float32))
    images = canvas.clamp_(0, 1).mul_(255).round_().to(torch.uint8).numpy()
    return images, labels, meta


class DigitCanvasDataset(Dataset):
    """``torch`` dataset over :func:`make_digit_canvases` (generated once, at construction).

    Args:
        n: number of canvases.
        seed, split: see :func:`make_digit_canvases`.
        channels: 1 (grayscale) or 3 (the gray channel repeated, for RGB backbones).
        transform: optional callable on the normalised ``Tensor[C, S, S]`` (e.g. augmentation).
        **kwargs: the other arguments of :func:`make_digit_canvases`.

    Items are ``(Tensor[C, S, S] float32, normalised (pixel / 255 - MEAN) / STD,
    Tensor[10] float32 multi-hot)``. ``images`` (uint8), ``labels`` and ``meta`` keep the raw
    arrays; ``label_names`` is ``["0", ..., "9"]``.
    """

    label_names = LABEL_NAMES

    def __init__(self, n: int, *, seed: int, split: str = "train", channels: int = 1,
                 transform: Callable[[Tensor], Tensor] | None = None, **kwargs) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.images, self.labels, self.meta = make_digit_canvases(n, seed=seed, split=split, **kwargs)
        self.split = split
        self.channels = channels
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(self.images[i]).float().div_(255).sub_(MEAN).div_(STD)  # (S, S)
        x = x.unsqueeze(0).expand(self.channels, -1, -1).contiguous()  # (C, S, S)
        if self.transform is not None:
            x = self.transform(x)
        return x, torch.from_numpy(self.labels[i])

    def __repr__(self) -> str:
        S = self.images.shape[-1]
        return (f"{type(self).__name__}(n={len(self)}, split={self.split!r}, size={S}×{S}, "
                f"channels={self.channels}, mean labels/canvas={self.labels.sum(1).mean():.2f})")
