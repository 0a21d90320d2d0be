"""``vislab detect --checkpoint CKPT INPUT... [--score 0.5] [--out DIR] [--json]``: run a detector trained by the
``detection`` experiment on image files, folders (every image file under them) or glob patterns (``"shots/*.jpg"``,
``"**"`` recursive; quote them), in one process.

For every image it writes ``DIR/<path>_det.png`` (the image with its boxes, class names and scores), where
``<path>`` keeps the image's folders relative to the common folder of all the inputs (two ``img.jpg`` of
different folders get two pictures; an index is added if names would still repeat), and, for all images
together, ``DIR/detections.json`` in the COCO results format::

    [{"image_id": 139, "file_name": "000000000139.jpg", "category_id": 3, "category_name": "car",
      "bbox": [x, y, width, height], "score": 0.93}, ...]

``image_id`` is the file name's number when it is one (COCO's ``000000000139.jpg`` → 139), otherwise the
image's 1-based position among the inputs; if that gives two images the same id (``a/1.jpg`` and ``b/1.jpg``),
every image gets its position instead, so ids are always unique. ``category_id`` is the dataset's own id
(COCO's sparse ids), read from the checkpoint. Boxes are in the pixels of the original image (EXIF-oriented,
as :mod:`vislab.io.images` reads it). Only detections with a score of at least ``--score`` are drawn and
written (use ``--score 0.05`` for a COCO evaluation).

Every input is checked (exists, has a readable image header) before the model is loaded. Each image's line is
printed after its picture is written (with ``--json``: one JSON object per image with its detections), and
the last line after ``detections.json``; a progress bar goes to stderr. A reader that closes stdout early
stops the printing, not the work: every file is still written, and the exit code is then 141.

The model sees each image as it saw its training images: resized to the checkpoint's square
``image_size``; boxes are scaled back to the original size.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from vislab.commands._inputs import expand_inputs, image_ids, output_names, progress_enabled
from vislab.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `vislab detect` (the CLI builds its parser from this)."""
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a checkpoint written by `vislab run detection`")
    p.add_argument("images", nargs="+", metavar="INPUT",
                   help="image files, folders (every image under them) or quoted glob patterns ('shots/*.jpg')")
    p.add_argument("--score", type=float, default=0.5, help="keep detections with at least this score (default 0.5)")
    p.add_argument("--out", default="detections", metavar="DIR",
                   help="folder for the images with boxes (keeping the inputs' subfolders) and detections.json "
                        "(COCO results format)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per image on stdout: image, image_id, picture, detections")

_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _check_inputs(paths: list[Path]) -> None:
    """Every input has a readable image header (cheap; the pixels are decoded one image at a time later)."""
    from vislab.io.images import image_size

    for p in paths:
        image_size(p)


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
    """Entry point: ``args.checkpoint`` (str), ``args.images`` (files, folders or patterns), ``args.score``
    (float), ``args.out`` (str), optionally ``args.json``. Returns the exit code (0; 141 if stdout closed)."""
    import torch
    from tqdm import tqdm

    from vislab.commands._console import LineWriter
    from vislab.io.files import atomic_write_bytes, atomic_write_text
    from vislab.io.images import open_image
    from vislab.models.detection.builder import load_detector_checkpoint

    score = float(getattr(args, "score", 0.5))
    if not 0.0 <= score <= 1.0:
        raise UserError(f"--score must be in [0, 1], got {score}")
    if not args.images:
        raise UserError("give at least one IMAGE")
    if not Path(args.checkpoint).is_file():
        raise UserError(f"checkpoint {args.checkpoint} does not exist"
                        + (" (it is a folder; give the .ckpt file inside it)" if Path(args.checkpoint).is_dir()
                           else ""))
    paths = expand_inputs(list(args.images))
    _check_inputs(paths)  # every image is checked before the model is loaded
    try:
        model, meta = load_detector_checkpoint(args.checkpoint)
    except (KeyError, TypeError, RuntimeError) as exc:  # model facts or weights of another vislab version
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {args.checkpoint} does not fit this vislab's detector "
                        f"({type(exc).__name__}: {reason[:200]})") from None
    size = int(meta["image_size"])
    names = list(meta["label_names"])
    category_ids = list(meta.get("category_ids") or range(1, len(names) + 1))
    out_dir = Path(getattr(args, "out", None) or "detections")
    as_json = bool(getattr(args, "json", False))
    emit = LineWriter()
    results: list[dict[str, Any]] = []
    for path, img_id, rel in tqdm(list(zip(paths, image_ids(paths), output_names(paths))), file=sys.stderr,
                                  unit="image", desc="detect", disable=not progress_enabled(), dynamic_ncols=True):
        img = open_image(path, "rgb")
        W, H = img.size
        x = torch.from_numpy(np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), np.float32) / 255.0)
        x = x.permute(2, 0, 1).contiguous()  # (3, S, S)
        with torch.no_grad():
            det = model([x])[0]
        keep = det["scores"] >= score
        boxes = det["boxes"][keep].numpy() * np.array([W / size, H / size, W / size, H / size])  # (D, 4) original
        labels, scores = det["labels"][keep].tolist(), det["scores"][keep].tolist()
        mine = [{"image_id": img_id, "file_name": path.name, "category_id": int(category_ids[lab - 1]),
                 "category_name": names[lab - 1], "bbox": [round(v, 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                 "score": round(float(s), 5)} for (x0, y0, x1, y1), lab, s in zip(boxes.tolist(), labels, scores)]
        results += mine
        target = out_dir / rel
        buf = io.BytesIO()
        draw_detections(img, boxes, labels, scores, names).save(buf, format="PNG")
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, buf.getvalue())
        if as_json:
            emit(json.dumps({"image": str(path), "image_id": img_id, "picture": str(target),
                             "detections": [{k: d[k] for k in ("category_id", "category_name", "bbox", "score")}
                                            for d in mine]}))
        else:
            emit(f"{path}: {len(labels)} detection(s) with score >= {score:g} -> {target}")
    atomic_write_text(out_dir / "detections.json", json.dumps(results, indent=1) + "\n")
    summary = f"wrote {out_dir / 'detections.json'} ({len(results)} detections, COCO results format)"
    if as_json:
        print(summary, file=sys.stderr)
    else:
        emit(summary)
    return emit.exit_code()
