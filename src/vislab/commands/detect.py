"""``vislab detect --checkpoint CKPT IMAGE... [--score 0.5] [--out DIR]``: run a detector trained by the
``detection`` experiment on image files.

For every image it writes ``DIR/<name>_det.png`` (the image with its boxes, class names and scores) and,
for all images together, ``DIR/detections.json`` in the COCO results format::

    [{"image_id": 139, "file_name": "000000000139.jpg", "category_id": 3, "category_name": "car",
      "bbox": [x, y, width, height], "score": 0.93}, ...]

``image_id`` is the file name's number when it is one (COCO's ``000000000139.jpg`` → 139), otherwise the
image's 1-based position on the command line; ``category_id`` is the dataset's own id (COCO's sparse ids),
read from the checkpoint. Boxes are in the pixels of the original image. Only detections with a score
of at least ``--score`` are drawn and written (use ``--score 0.05`` for a COCO evaluation).

The model sees each image as it saw its training images: resized to the checkpoint's square
``image_size``; boxes are scaled back to the original size.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from vislab.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `vislab detect` (the CLI builds its parser from this)."""
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a checkpoint written by `vislab run detection`")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--score", type=float, default=0.5, help="keep detections with at least this score (default 0.5)")
    p.add_argument("--out", default="detections", metavar="DIR",
                   help="folder for the images with boxes and detections.json (COCO results format)")

_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _open_images(paths: list[str]) -> list[Image.Image]:
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise UserError(f"image {str(path)!r} not found")
        try:
            with Image.open(path) as im:
                out.append(im.convert("RGB"))
        except OSError as exc:
            raise UserError(f"cannot read image {str(path)!r} ({exc})") from None
    return out


def _image_id(path: Path, position: int) -> int:
    return int(path.stem) if path.stem.isdigit() else position


def draw_detections(img: Image.Image, boxes: np.ndarray, labels: list[int], scores: list[float],
                    names: list[str]) -> Image.Image:
    """A copy of ``img`` with boxes ``ndarray[D, 4]`` (xyxy, image pixels) and ``name score`` tags."""
    out = img.copy()
    draw = ImageDraw.Draw(out)
    width = max(1, round(min(img.size) / 150))
    for (x0, y0, x1, y1), lab, s in zip(boxes.tolist(), labels, scores):
        color = _PALETTE[(lab - 1) % len(_PALETTE)]
        draw.rectangle([x0, y0, x1, y1], outline=color, width=width)
        text = f"{names[lab - 1] if 0 < lab <= len(names) else lab} {s:.2f}"
        tx0, ty0, tx1, ty1 = draw.textbbox((x0, y0), text)
        y = max(0.0, y0 - (ty1 - ty0) - 2)
        draw.rectangle([x0, y, x0 + (tx1 - tx0) + 4, y + (ty1 - ty0) + 2], fill=color)
        draw.text((x0 + 2, y), text, fill=(255, 255, 255))
    return out


def detect_command(args: Any) -> int:
    """Entry point: ``args.checkpoint`` (str), ``args.images`` (list of str), ``args.score`` (float),
    ``args.out`` (str). Returns the exit code (0)."""
    import torch

    from vislab.engine.run_dir import atomic_write_bytes, atomic_write_text
    from vislab.experiments.detection import load_detector_checkpoint

    score = float(getattr(args, "score", 0.5))
    if not 0.0 <= score <= 1.0:
        raise UserError(f"--score must be in [0, 1], got {score}")
    if not args.images:
        raise UserError("give at least one IMAGE")
    if not Path(args.checkpoint).is_file():
        raise UserError(f"checkpoint {args.checkpoint} does not exist")
    images = _open_images(list(args.images))  # every image is checked before the model is loaded
    model, meta = load_detector_checkpoint(args.checkpoint)
    size = int(meta["image_size"])
    names = list(meta["label_names"])
    category_ids = list(meta.get("category_ids") or range(1, len(names) + 1))
    out_dir = Path(getattr(args, "out", None) or "detections")
    results: list[dict[str, Any]] = []
    for k, (p, img) in enumerate(zip(args.images, images), start=1):
        path = Path(p)
        W, H = img.size
        x = torch.from_numpy(np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), np.float32) / 255.0)
        x = x.permute(2, 0, 1).contiguous()  # (3, S, S)
        with torch.no_grad():
            det = model([x])[0]
        keep = det["scores"] >= score
        boxes = det["boxes"][keep].numpy() * np.array([W / size, H / size, W / size, H / size])  # (D, 4) original
        labels, scores = det["labels"][keep].tolist(), det["scores"][keep].tolist()
        img_id = _image_id(path, k)
        for (x0, y0, x1, y1), lab, s in zip(boxes.tolist(), labels, scores):
            results.append({"image_id": img_id, "file_name": path.name, "category_id": int(category_ids[lab - 1]),
                            "category_name": names[lab - 1], "bbox": [round(v, 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                            "score": round(float(s), 5)})
        drawn = draw_detections(img, boxes, labels, scores, names)
        target = out_dir / f"{path.stem}_det.png"
        buf = io.BytesIO()
        drawn.save(buf, format="PNG")
        atomic_write_bytes(target, buf.getvalue())
        print(f"{path}: {len(labels)} detection(s) with score >= {score:g} -> {target}")
    atomic_write_text(out_dir / "detections.json", json.dumps(results, indent=1) + "\n")
    print(f"wrote {out_dir / 'detections.json'} ({len(results)} detections, COCO results format)")
    return 0
