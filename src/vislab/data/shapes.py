"""The embedded default of the folder classifier: generated images of five shape classes.

Each image holds one object (circle, square, triangle, star or cross) of random colour, size,
position and rotation on a textured background (a random colour gradient, a sinusoidal grating,
noise and a few thin clutter strokes). The class is the shape; colour and size vary within every
class, so a model must look at the object's outline. The object's box is recorded in
``boxes.json`` for the Grad-CAM pointing game.

``write_shapes_folder`` writes it as an ImageFolder (``ROOT/CLASS/NNNN.png``) so the demo and a
user's real folder go through one code path.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vislab.data.generated import building, is_complete
from vislab.io.files import atomic_write_text

SHAPE_CLASSES = ("circle", "cross", "square", "star", "triangle")
_VERSION = 1


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        pts = [(math.cos(a), math.sin(a)) for a in np.linspace(math.pi / 4, 2 * math.pi + math.pi / 4, 5)[:-1]]
    elif kind == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in np.linspace(-math.pi / 2, 1.5 * math.pi, 4)[:-1]]
    elif kind == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rr = 1.0 if k % 2 == 0 else 0.45
            pts.append((rr * math.cos(a), rr * math.sin(a)))
    elif kind == "cross":
        w = 0.33
        base = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w),
                (-w, -w)]
        pts = [(x, y) for x, y in base]
    else:
        raise ValueError(f"unknown shape {kind!r}")
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(0.15, 0.85, 3), rng.uniform(0.15, 0.85, 3)
    t = (xx * math.cos(rng.uniform(0, 2 * math.pi)) + yy * math.sin(rng.uniform(0, 2 * math.pi)))
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    freq, theta = rng.uniform(3, 12), rng.uniform(0, math.pi)
    grating = np.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)) + rng.uniform(0, 6.3))
    img += rng.uniform(0.03, 0.12) * grating[..., None]
    img += rng.normal(0, rng.uniform(0.02, 0.06), img.shape)
    return np.clip(img, 0, 1)


def render_shape(kind: str, rng: np.random.Generator, size: int = 96) -> tuple[np.ndarray, list[float]]:
    """One image ``uint8[size, size, 3]`` with one ``kind`` object; returns it and its box [x0, y0, x1, y1]."""
    ss = 2  # draw at 2× and downsample: antialiased edges
    big = size * ss
    bg = (_background(rng, big) * 255).astype(np.uint8)
    im = Image.fromarray(bg)
    draw = ImageDraw.Draw(im)
    for _ in range(rng.integers(2, 6)):  # clutter strokes
        x0, y0, x1, y1 = rng.uniform(0, big, 4)
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.line([(x0, y0), (x1, y1)], fill=col, width=int(rng.integers(1, 3)) * ss)
    r = rng.uniform(0.17, 0.33) * big
    margin = r * 1.05
    cx, cy = rng.uniform(margin, big - margin, 2)
    hue = rng.uniform(0, 1)
    sat, val = rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0)
    col = tuple(int(255 * v) for v in _hsv_to_rgb(hue, sat, val))
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col, outline=(0, 0, 0), width=ss)
        box = [cx - r, cy - r, cx + r, cy + r]
    else:
        pts = _polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi))
        draw.polygon(pts, fill=col, outline=(0, 0, 0))
        xs, ys = zip(*pts)
        box = [min(xs), min(ys), max(xs), max(ys)]
    im = im.resize((size, size), Image.LANCZOS)
    return np.asarray(im), [round(v / ss, 2) for v in box]


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb(h, s, v)


def write_shapes_folder(root: str | Path, *, per_class: int = 160, size: int = 96, seed: int = 0,
                        corrupt: int = 0) -> Path:
    """Write the dataset as ``root/CLASS/NNNN.png`` plus ``boxes.json``; reuse it if already complete.

    ``corrupt`` > 0 also writes that many undecodable ``.png`` files (for tests of the skip path).
    The folder is built in a temporary sibling and renamed, so a killed run never leaves half of it.
    """
    root = Path(root)
    stamp = {"version": _VERSION, "per_class": per_class, "size": size, "seed": seed, "corrupt": corrupt}
    if is_complete(root, stamp):
        return root
    with building(root, stamp) as tmp:
        rng = np.random.default_rng(seed)
        boxes: dict[str, object] = {"_image_size": [size, size]}
        for kind in SHAPE_CLASSES:
            (tmp / kind).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img, box = render_shape(kind, rng, size)
                rel = f"{kind}/{i:04d}.png"
                Image.fromarray(img).save(tmp / rel)
                boxes[rel] = box
        for i in range(corrupt):
            bad = tmp / SHAPE_CLASSES[i % len(SHAPE_CLASSES)] / f"corrupt_{i}.png"
            bad.write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
        atomic_write_text(tmp / "boxes.json", json.dumps(boxes))
    return root
