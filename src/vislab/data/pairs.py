"""Image pairs with a known change (displacement and/or scaling), from any images.

The convention (the same in the whole project): ``img2`` is ``img1`` scaled by ``s`` about the image
centre ``c = ((S - 1) / 2, (S - 1) / 2)``, then shifted by ``t = (dx, dy)`` pixels (x right, y down).
A point ``p`` of ``img1`` appears at ``s·(p − c) + c + t`` in ``img2``. Change types, in this order
(the class indices): ``none``, ``shift``, ``scale``, ``both``.

How a pair is built (:func:`make_pairs`):

1. **Sources.** The embedded default is the real photographs shipped with scikit-image
   (:data:`EMBEDDED_PHOTOS`: 16 of them — astronaut, camera, coffee, a cat, the Hubble deep field, brick,
   grass, a retina, a page of text...);
   ``--data DIR`` takes every readable image under a folder. Each source is converted to grayscale in
   [0, 1] and kept at a few resolutions (short side ``zoom × S`` for each ``zoom`` of
   :attr:`PairConfig.zooms`, anti-aliased), so a crop shows a whole
   object at one zoom and fine texture at another.
2. **Split by source image.** A seeded permutation of the sources gives disjoint train / val / test
   sources (:func:`split_sources`): test pairs come from images the network never saw.
3. **The change.** Types are balanced (a quarter each). ``shift``: ``dx, dy`` uniform in
   ``[-max_shift, max_shift]`` with ``|t| >= min_shift`` (rejection), else ``t = 0``. ``scale``:
   ``log s`` uniform in ``±[log min_scale, log max_scale]``, else ``s = 1``. So every change that is
   there is well away from zero, and ``none`` (``t = 0, s = 1`` exactly) is distinguishable.
4. **Crop and warp.** A crop centre is drawn where the regions that both images need (``img2`` looks
   at ``img1``'s frame through ``(q − c − t) / s + c``) lie inside the source with a margin: both images
   are resampled from the larger source, never from a padded border, so no black border gives the
   answer away. Crops with little texture (standard deviation below ``min_std``) are redrawn.
   Both images are sampled the same way: bicubic interpolation on a ``supersample ×`` finer grid,
   then a box filter (area averaging), which anti-aliases the shrunk image of ``s < 1``.
5. **Photometric noise**, independently per image: Gaussian blur (σ uniform in ``[0, blur]``),
   contrast (gain ``1 ± contrast`` about the mean), brightness (offset ``± brightness``), Gaussian
   noise (σ uniform in ``[0, noise]``), clipped to [0, 1]. ``none`` pairs therefore differ too.

Everything is drawn from ``numpy.random.default_rng((seed, split))`` and a seeded ``torch.Generator``:
the same seed gives the same pairs. The pairs are rendered once, as tensors (fast epochs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from vislab.errors import UserError

CHANGE_TYPES = ("none", "shift", "scale", "both")
# scikit-image's real photographs; ``cell`` is left out: an out-of-focus micrograph with nothing to register at
# pixel scale (phase correlation missed by > 1 px on 60 % of its unchanged/shifted pairs, on none of the others').
EMBEDDED_PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
                   "immunohistochemistry", "moon", "motorcycle", "page", "retina", "rocket", "text")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MIN_SOURCES = 3  # one each for train, val and test
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PairConfig:
    """How pairs are drawn (see the module docstring). Lengths are pixels of the ``size × size`` pair."""

    size: int = 128  # side of each image of a pair
    max_shift: float = 16.0  # |dx|, |dy| <= max_shift
    min_shift: float = 4.0  # a shifted pair has |t| = sqrt(dx² + dy²) >= min_shift
    max_scale: float = 1.3  # s in [1 / max_scale, max_scale]
    min_scale: float = 1.08  # a scaled pair has s >= min_scale or s <= 1 / min_scale
    zooms: tuple[float, ...] = (2.0, 3.0, 4.5)  # source resolutions: short side = zoom × size (capped at native)
    supersample: int = 2  # bicubic samples per pixel and axis, averaged (anti-aliasing)
    min_std: float = 0.04  # crops of img1 with a lower standard deviation are redrawn (flat sky, background)
    blur: float = 0.8  # Gaussian blur σ uniform in [0, blur] px, per image
    contrast: float = 0.2  # gain uniform in [1 - contrast, 1 + contrast] about the image mean, per image
    brightness: float = 0.08  # offset uniform in [-brightness, brightness], per image
    noise: float = 0.02  # Gaussian noise σ uniform in [0, noise], per image

    def check(self) -> None:
        """Raise ``ValueError`` for settings that cannot work."""
        if self.size < 16:
            raise ValueError(f"size must be >= 16, got {self.size}")
        if not 0 < self.min_shift < self.max_shift:
            raise ValueError(f"need 0 < min_shift < max_shift, got min_shift={self.min_shift}, "
                             f"max_shift={self.max_shift}")
        if self.max_shift > self.size / 4:
            raise ValueError(f"max_shift must be <= size / 4 = {self.size / 4:g}, got {self.max_shift}")
        if math.hypot(self.max_shift, self.max_shift) <= self.min_shift:
            raise ValueError("min_shift must be below sqrt(2)·max_shift")
        if not 1 < self.min_scale < self.max_scale <= 2:
            raise ValueError(f"need 1 < min_scale < max_scale <= 2, got min_scale={self.min_scale}, "
                             f"max_scale={self.max_scale}")
        if not self.zooms or min(self.zooms) <= 0:
            raise ValueError(f"zooms must be positive numbers, got {self.zooms}")
        if self.supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {self.supersample}")
        for name in ("blur", "contrast", "brightness", "noise", "min_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.contrast >= 1:
            raise ValueError(f"contrast must be < 1 (gain 1 ± contrast), got {self.contrast}")

    @property
    def window(self) -> int:
        """Side of the source window both images of a pair are sampled from (with the bicubic margin)."""
        half = self.size * self.max_scale / 2 + self.max_shift * self.max_scale + 3
        return 2 * math.ceil(half) + 2


# -----------------------------------------------------------------------------------------------
# Sources
# -----------------------------------------------------------------------------------------------


@dataclass
class Source:
    """One source image: its name and grayscale pixels, ``float32[H, W]`` in [0, 1]."""

    name: str
    image: np.ndarray


def _to_gray(img: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2gray

    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.float32)
    if img.ndim == 3:
        if img.shape[-1] == 4:
            img = img[..., :3]
        if img.shape[-1] == 1:
            img = img[..., 0]
        else:
            img = rgb2gray(img)  # float64 in [0, 1]
    if img.dtype == np.uint8:
        img = img / 255.0
    elif img.dtype == np.uint16:
        img = img / 65535.0
    img = img.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    if hi > 1.0 or lo < 0.0:  # other ranges (float images, 32-bit TIFF): stretch to [0, 1]
        img = (img - lo) / max(hi - lo, 1e-12)
    return img


def embedded_sources(names: Sequence[str] = EMBEDDED_PHOTOS) -> list[Source]:
    """scikit-image's real photographs (shipped inside the package; nothing is downloaded)."""
    from skimage import data

    out = []
    for name in names:
        if name == "motorcycle":
            img = data.stereo_motorcycle()[0]  # the left view only (the right one is the same scene)
        else:
            if name not in EMBEDDED_PHOTOS:
                raise ValueError(f"unknown embedded photo {name!r}; expected one of {', '.join(EMBEDDED_PHOTOS)}")
            img = getattr(data, name)()
        out.append(Source(name, _to_gray(img)))
    return out


def list_image_files(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursively, by extension, sorted)."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def scan_folder_sources(root: str | Path, *, min_images: int = MIN_SOURCES) -> list[tuple[str, str]]:
    """The content check of a ``--data`` folder before any run folder exists: the folder exists and at least
    ``min_images`` of its image files decode (:func:`vislab.io.images.check_image`; nothing is kept in memory).
    Returns the skipped ``(relative path, reason)``; :class:`UserError` (one line) otherwise, naming an
    undecodable file when there are some."""
    from vislab.io.images import check_image

    root = Path(root)
    if not root.exists():
        raise UserError(f"--data folder {root} does not exist")
    if not root.is_dir():
        raise UserError(f"--data {root} is not a folder (expected a folder of images)")
    files = list_image_files(root)
    skipped = [(str(p.relative_to(root)), reason) for p in files if (reason := check_image(p))]
    if len(files) - len(skipped) < min_images:
        bad = f"; {len(skipped)} file(s) do not decode, e.g. {skipped[0][1]}" if skipped else ""
        raise UserError(f"--data {root} holds {len(files) - len(skipped)} readable image(s); change detection needs "
                        f"at least {min_images} (disjoint source images for train, val and test){bad}")
    return skipped


def folder_sources(root: str | Path, *, min_images: int = MIN_SOURCES) -> tuple[list[Source], list[tuple[str, str]]]:
    """Every readable image under ``root`` as a source; returns ``(sources, skipped)`` where ``skipped``
    lists ``(relative path, reason)`` of files with an image extension that do not decode.

    Raises:
        UserError: ``root`` is missing or not a folder, or holds fewer than ``min_images`` readable images.
    """
    from vislab.io.images import ImageReadError, read_image

    root = Path(root)
    if not root.exists():
        raise UserError(f"--data folder {root} does not exist")
    if not root.is_dir():
        raise UserError(f"--data {root} is not a folder (expected a folder of images)")
    sources, skipped = [], []
    for path in list_image_files(root):
        rel = str(path.relative_to(root))
        try:  # the one image reader: EXIF orientation, 16-bit scaled, alpha on black
            arr = read_image(path, "gray", np.uint8)
        except ImageReadError as exc:
            skipped.append((rel, str(exc)))
            continue
        sources.append(Source(rel, _to_gray(arr)))
    if len(sources) < min_images:
        raise UserError(f"--data {root} holds {len(sources)} readable image(s); change detection needs at least "
                        f"{min_images} (disjoint source images for train, val and test)")
    return sources, skipped


def split_sources(n: int, *, seed: int, val_fraction: float = 0.15,
                  test_fraction: float = 0.2) -> dict[str, list[int]]:
    """Disjoint source indices per split (seeded permutation); each split gets at least one source."""
    if n < MIN_SOURCES:
        raise ValueError(f"need at least {MIN_SOURCES} sources for a train/val/test split, got {n}")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 < val_fraction, test_fraction and val_fraction + test_fraction < 1, got "
                         f"{val_fraction}, {test_fraction}")
    order = np.random.default_rng((seed, 7)).permutation(n).tolist()
    n_test = max(1, round(test_fraction * n))
    n_val = max(1, round(val_fraction * n))
    while n_test + n_val > n - 1:
        if n_val >= n_test and n_val > 1:
            n_val -= 1
        else:
            n_test -= 1
    return {"test": sorted(order[:n_test]), "val": sorted(order[n_test:n_test + n_val]),
            "train": sorted(order[n_test + n_val:])}


def source_levels(image: np.ndarray, cfg: PairConfig) -> list[np.ndarray]:
    """The resolutions a source is cropped from: short side ``zoom × size`` (never above the native
    resolution, never below what a pair needs: smaller images are enlarged to that). Resized with
    torch's anti-aliased bilinear interpolation (``antialias=True``: a triangle filter as wide as the
    reduction when shrinking)."""
    h, w = image.shape
    need = cfg.window + 2
    sides = sorted({max(need, min(round(z * cfg.size), min(h, w))) for z in cfg.zooms})
    src = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]  # (1, 1, H, W)
    out = []
    for side in sides:
        f = side / min(h, w)
        shape = (max(need, round(h * f)), max(need, round(w * f)))
        if shape == (h, w):
            out.append(image.astype(np.float32))
        else:
            lv = F.interpolate(src, size=shape, mode="bilinear", align_corners=False, antialias=True)
            out.append(lv[0, 0].clamp(0, 1).numpy())
    return out


# -----------------------------------------------------------------------------------------------
# Changes and rendering
# -----------------------------------------------------------------------------------------------


def sample_changes(n: int, rng: np.random.Generator, cfg: PairConfig) -> dict[str, np.ndarray]:
    """``n`` changes with balanced types: ``{"type": int64[n], "dx", "dy", "log_s": float64[n]}``."""
    types = np.resize(np.arange(len(CHANGE_TYPES)), n)
    rng.shuffle(types)
    dx, dy, log_s = np.zeros(n), np.zeros(n), np.zeros(n)
    lo, hi = math.log(cfg.min_scale), math.log(cfg.max_scale)
    for i, k in enumerate(types):
        if CHANGE_TYPES[k] in ("shift", "both"):
            while True:
                t = rng.uniform(-cfg.max_shift, cfg.max_shift, size=2)
                if math.hypot(*t) >= cfg.min_shift:
                    break
            dx[i], dy[i] = t
        if CHANGE_TYPES[k] in ("scale", "both"):
            log_s[i] = rng.uniform(lo, hi) * (1 if rng.random() < 0.5 else -1)
    return {"type": types.astype(np.int64), "dx": dx, "dy": dy, "log_s": log_s}


def _sample_grid(centre: Tensor, dx: Tensor, dy: Tensor, scale: Tensor, *, size: int, window: int,
                 supersample: int) -> Tensor:
    """grid_sample coordinates of the sub-pixel samples of ``img2`` (``img1``: ``dx = dy = 0``, ``s = 1``).

    ``centre``: ``Tensor[G, 2]`` the window position (x, y) of the pairs' centre ``c``. Output pixel ``q``
    of img2 shows the img1 point ``(q − c − t) / s + c``, i.e. window point ``centre + (q − c − t) / s``.
    Returns ``Tensor[G, k·S, k·S, 2]`` normalised for ``align_corners=False``.
    """
    k = supersample
    u = (torch.arange(k * size, dtype=torch.float64) + 0.5) / k - 0.5  # sub-sample positions in output pixels
    c = (size - 1) / 2
    gx = (u[None, :] - c - dx[:, None]) / scale[:, None] + centre[:, 0, None]  # (G, kS) window x of each column
    gy = (u[None, :] - c - dy[:, None]) / scale[:, None] + centre[:, 1, None]  # (G, kS) window y of each row
    gx = ((2 * gx + 1) / window - 1).float()  # normalised for align_corners=False
    gy = ((2 * gy + 1) / window - 1).float()
    G, n = gx.shape
    grid = torch.stack([gx[:, None, :].expand(G, n, n), gy[:, :, None].expand(G, n, n)], dim=-1)  # (G, kS, kS, 2)
    return grid


def render(windows: Tensor, centre: Tensor, dx: Tensor, dy: Tensor, scale: Tensor, *, size: int,
           supersample: int = 2) -> Tensor:
    """Sample one view per window: bicubic on a ``supersample ×`` grid, then area averaging.

    Args:
        windows: ``Tensor[G, 1, R, R]`` source windows.
        centre: ``Tensor[G, 2]`` (x, y) window coordinates of img1's centre pixel.
        dx, dy, scale: ``Tensor[G]`` the change of this view relative to img1 (0, 0, 1 for img1 itself).
    Returns:
        ``Tensor[G, S, S]``.
    """
    G, _, R, R2 = windows.shape
    if R != R2:
        raise ValueError(f"windows must be square Tensor[G, 1, R, R], got {tuple(windows.shape)}")
    grid = _sample_grid(centre.double(), dx.double(), dy.double(), scale.double(), size=size, window=R,
                        supersample=supersample)
    fine = F.grid_sample(windows, grid, mode="bicubic", padding_mode="border", align_corners=False)  # (G, 1, kS, kS)
    if supersample > 1:
        fine = F.avg_pool2d(fine, supersample)  # (G, 1, S, S)
    return fine[:, 0]


def render_pair(source: np.ndarray, centre: tuple[float, float], *, dx: float, dy: float, scale: float,
                size: int, supersample: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """One noise-free pair from a grayscale ``source`` ``[H, W]``: ``img1`` is the ``size × size`` crop whose
    centre pixel sits at source point ``centre = (x, y)``; ``img2`` follows the convention (module docstring).
    Raises ``ValueError`` when the pair would need pixels outside the source."""
    src = np.asarray(source, dtype=np.float32)
    if src.ndim != 2:
        raise ValueError(f"source must be a grayscale array [H, W], got shape {src.shape}")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    c = (size - 1) / 2
    half = max(c + 0.5, (c + 0.5 + math.hypot(dx, dy)) / scale) + 3  # bicubic margin included
    x, y = centre
    H, W = src.shape
    if x - half < 0 or y - half < 0 or x + half > W - 1 or y + half > H - 1:
        raise ValueError(f"the pair needs source pixels within {half:.1f} of centre {centre}; the source is {W}×{H}")
    win = torch.from_numpy(src)[None, None]
    ctr = torch.tensor([[x, y]], dtype=torch.float64)
    side = max(H, W)
    if H != W:  # grid_sample normalises each axis by its own length: pad to a square (never sampled)
        win = F.pad(win, (0, side - W, 0, side - H))
    one = torch.ones(1, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    img1 = render(win, ctr, zero, zero, one, size=size, supersample=supersample)[0]
    img2 = render(win, ctr, torch.tensor([dx], dtype=torch.float64), torch.tensor([dy], dtype=torch.float64),
                  torch.tensor([scale], dtype=torch.float64), size=size, supersample=supersample)[0]
    return img1.numpy(), img2.numpy()


def _gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Per-image Gaussian blur: ``x`` ``Tensor[N, S, S]``, ``sigma`` ``Tensor[N]`` (0 = unchanged)."""
    N, S, _ = x.shape
    r = min(S - 1, max(1, int(math.ceil(3 * float(sigma.max()))))) if N else 1
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    s = sigma.clamp_min(1e-3)[:, None]
    k = torch.exp(-0.5 * (t[None] / s) ** 2)
    k = k / k.sum(1, keepdim=True)  # (N, 2r+1); sigma ~0 gives a delta
    # as matrices: blurred = B X Bᵀ with B[n, i, j] = Σ_taps k[n, tap] over reflect(i + tap − r) = j
    i = torch.arange(S)[:, None] + torch.arange(-r, r + 1)[None, :]  # (S, 2r+1) source row of each tap
    i = i.abs()
    i = torch.where(i > S - 1, 2 * (S - 1) - i, i)  # reflect at both ends (r < S)
    B = torch.zeros(N, S, S)
    B.scatter_add_(2, i[None].expand(N, S, 2 * r + 1), k[:, None, :].expand(N, S, 2 * r + 1).contiguous())
    return B @ x @ B.transpose(1, 2)  # (N, S, S)


def photometric(x: Tensor, cfg: PairConfig, gen: torch.Generator) -> Tensor:
    """Blur, contrast, brightness and Gaussian noise, drawn independently per image: ``Tensor[N, S, S]``."""
    N = x.shape[0]
    if N == 0:
        return x

    def u(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(N, generator=gen)

    if cfg.blur > 0:
        x = _gaussian_blur(x, u(0.0, cfg.blur))
    gain, offset = u(1 - cfg.contrast, 1 + cfg.contrast), u(-cfg.brightness, cfg.brightness)
    mean = x.mean(dim=(1, 2), keepdim=True)
    x = (x - mean) * gain[:, None, None] + mean + offset[:, None, None]
    if cfg.noise > 0:
        x = x + torch.randn(x.shape, generator=gen) * u(0.0, cfg.noise)[:, None, None]
    return x.clamp(0.0, 1.0)


# -----------------------------------------------------------------------------------------------
# Pair sets
# -----------------------------------------------------------------------------------------------


@dataclass
class PairSet:
    """Rendered pairs: ``images`` ``Tensor[N, 2, S, S]`` (img1, img2) float32 in [0, 1], and per pair the
    change (``dx``, ``dy`` px, ``log_s``), its ``type`` (index in :data:`CHANGE_TYPES`), the ``source``
    index (into ``source_names``), the source resolution ``level`` and img1's ``centre`` in that level."""

    images: Tensor
    dx: Tensor
    dy: Tensor
    log_s: Tensor
    type: Tensor
    source: Tensor
    level: Tensor
    centre: Tensor  # (N, 2) x, y
    source_names: list[str]
    config: dict[str, Any]

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _draw_centre(level: np.ndarray, rng: np.random.Generator, cfg: PairConfig, tries: int = 12) -> tuple[float, float]:
    H, W = level.shape
    half = cfg.window / 2
    best, best_std = None, -1.0
    r = cfg.size // 2
    for _ in range(tries):
        x = rng.uniform(half, W - 1 - half)
        y = rng.uniform(half, H - 1 - half)
        xi, yi = int(round(x)), int(round(y))
        std = float(level[yi - r:yi + r, xi - r:xi + r].std())
        if std > best_std:
            best, best_std = (x, y), std
        if std >= cfg.min_std:
            break
    assert best is not None
    return best


def make_pairs(sources: Sequence[Source], n: int, *, seed: int, cfg: PairConfig, split: str = "train",
               levels: dict[int, list[np.ndarray]] | None = None, chunk: int = 256) -> PairSet:
    """Render ``n`` pairs from ``sources`` (all of them belong to this split), deterministic per
    ``(seed, split)``. ``levels`` may pass precomputed :func:`source_levels` per source index."""
    cfg.check()
    if not sources:
        raise ValueError("make_pairs needs at least one source")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    split_code = SPLITS.index(split) if split in SPLITS else 3 + sum(map(ord, split))
    rng = np.random.default_rng((seed, 1000 + split_code))
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    if levels is None:
        levels = {i: source_levels(s.image, cfg) for i, s in enumerate(sources)}
    ch = sample_changes(n, rng, cfg)
    src_idx = rng.integers(0, len(sources), size=n)
    lvl_idx = np.array([rng.integers(0, len(levels[int(i)])) for i in src_idx], dtype=np.int64)
    centres = np.array([_draw_centre(levels[int(s)][int(v)], rng, cfg) for s, v in zip(src_idx, lvl_idx)])
    centres = centres.reshape(n, 2)
    R = cfg.window
    S = cfg.size
    images = torch.empty(n, 2, S, S)
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        wins, local = [], []
        for k in range(sl.start, sl.stop):
            lv = levels[int(src_idx[k])][int(lvl_idx[k])]
            x0 = int(math.floor(centres[k, 0])) - R // 2 + 1
            y0 = int(math.floor(centres[k, 1])) - R // 2 + 1
            x0 = min(max(x0, 0), lv.shape[1] - R)
            y0 = min(max(y0, 0), lv.shape[0] - R)
            wins.append(torch.from_numpy(np.ascontiguousarray(lv[y0:y0 + R, x0:x0 + R])))
            local.append((centres[k, 0] - x0, centres[k, 1] - y0))
        win = torch.stack(wins)[:, None]  # (G, 1, R, R)
        ctr = torch.tensor(local, dtype=torch.float64)  # (G, 2)
        G = win.shape[0]
        zero, one = torch.zeros(G, dtype=torch.float64), torch.ones(G, dtype=torch.float64)
        dx = torch.from_numpy(ch["dx"][sl])
        dy = torch.from_numpy(ch["dy"][sl])
        s = torch.from_numpy(np.exp(ch["log_s"][sl]))
        images[sl, 0] = render(win, ctr, zero, zero, one, size=S, supersample=cfg.supersample)
        images[sl, 1] = render(win, ctr, dx, dy, s, size=S, supersample=cfg.supersample)
    flat = photometric(images.reshape(2 * n, S, S), cfg, gen)  # (2N, S, S): each image its own noise
    images = flat.reshape(n, 2, S, S)
    return PairSet(images=images.contiguous(), dx=torch.from_numpy(ch["dx"]).float(),
                   dy=torch.from_numpy(ch["dy"]).float(), log_s=torch.from_numpy(ch["log_s"]).float(),
                   type=torch.from_numpy(ch["type"]), source=torch.from_numpy(src_idx.astype(np.int64)),
                   level=torch.from_numpy(lvl_idx), centre=torch.from_numpy(centres).float(),
                   source_names=[s.name for s in sources], config=asdict(cfg))


class ChangePairs(Dataset):
    """A Dataset over a :class:`PairSet`.

    ``dataset[i] = (x, y)``: ``x`` ``Tensor[2, S, S]`` (img1, img2 stacked, grayscale in [0, 1]) and
    ``y`` ``Tensor[4]`` = ``(dx, dy, log_s, type)`` (type as a float; :meth:`target` gives the dict
    ``{"dx", "dy", "log_s", "type", "id"}``).
    """

    def __init__(self, pairs: PairSet) -> None:
        self.pairs = pairs
        self.targets = torch.stack([pairs.dx, pairs.dy, pairs.log_s, pairs.type.float()], dim=1)  # (N, 4)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.pairs.images[i], self.targets[i]

    def target(self, i: int) -> dict[str, Any]:
        p = self.pairs
        return {"dx": float(p.dx[i]), "dy": float(p.dy[i]), "log_s": float(p.log_s[i]), "type": int(p.type[i]),
                "id": int(i)}

    def subset(self, n: int | None) -> ChangePairs:
        """The first ``n`` pairs (types stay balanced up to one: they were shuffled)."""
        if n is None or n >= len(self):
            return self
        p = self.pairs
        sl = slice(0, n)
        return ChangePairs(PairSet(images=p.images[sl], dx=p.dx[sl], dy=p.dy[sl], log_s=p.log_s[sl], type=p.type[sl],
                                   source=p.source[sl], level=p.level[sl], centre=p.centre[sl],
                                   source_names=p.source_names, config=p.config))


def make_pair_splits(sources: Sequence[Source], *, sizes: dict[str, int], seed: int, cfg: PairConfig,
                     val_fraction: float = 0.15, test_fraction: float = 0.2) -> tuple[dict[str, ChangePairs],
                                                                                     dict[str, list[str]]]:
    """Pairs for train / val / test from disjoint source images. Returns the datasets and the source
    names per split."""
    cfg.check()
    idx = split_sources(len(sources), seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    out, names = {}, {}
    for split in SPLITS:
        srcs = [sources[i] for i in idx[split]]
        out[split] = ChangePairs(make_pairs(srcs, sizes[split], seed=seed, cfg=cfg, split=split))
        names[split] = [s.name for s in srcs]
    return out, names
