"""``vislab segment --checkpoint CKPT IMAGE [--point x,y[,1|0] ...] [--box x0,y0,x1,y1] [--multimask] [--out DIR]``:
masks from point and/or box prompts with a model fine-tuned by the ``sam-finetune`` experiment.

Prompts, in the image's pixels:

* ``--point x,y[,1|0]`` (repeatable): the pixel at column ``x``, row ``y`` (SAM's convention for points:
  the top-left pixel is ``0,0``; fractions allowed), positive (``1``, the default) or negative (``0``).
  It must lie inside the image.
* ``--box x0,y0,x1,y1``: continuous coordinates (a box around pixel columns 0..9 is ``x0 = 0, x1 = 10``),
  as the experiment's boxes; a box reaching past the image is clipped to it (and the clipped box is printed).

Negative numbers need the ``=`` form (``--box=-5,0,10,10``, ``--point=-3,4``): argparse would take ``-5,...``
for an option. At least one ``--point`` or ``--box`` is required.

Writes ``DIR/<stem>_mask.png`` (0/255, the image's size) and ``DIR/<stem>_overlay.png`` (the mask tinted, the box
in yellow, positive points green, negative points red); with ``--multimask`` SAM's three candidates,
``<stem>_mask_<k>.png`` and ``<stem>_overlay_<k>.png`` for k = 0, 1, 2. ``DIR/<stem>_masks.json`` lists each mask
with the model's predicted IoU, and the prompts; both are printed. A checkpoint whose IoU head or multimask
outputs were never trained (a decoder built from scratch trains its single-mask output; older checkpoints did
not train the IoU head) gets a ``note:`` line saying so, and the JSON records it. The model sees the image as it saw its
training images: resized to the checkpoint's square ``image_size``; prompts are scaled with it and the mask
logits are resized back. An official-SAM checkpoint needs the SAM weights file it was trained on (recorded in
the checkpoint; ``--sam-checkpoint PTH`` overrides the path).
"""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path
from typing import Any

from vislab.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `vislab segment` (the CLI builds its parser from this)."""
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="a checkpoint written by `vislab run sam-finetune`")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--point", action="append", default=None, metavar="x,y[,1|0]",
                   help="a point prompt: pixel column x, row y (0,0 is the top-left pixel), 1 positive (default) or "
                        "0 negative; repeat for more points; negative numbers as --point=-3,4")
    p.add_argument("--box", default=None, metavar="x0,y0,x1,y1",
                   help="a box prompt in the image's pixels (continuous: columns 0..9 are x0=0, x1=10); clipped to "
                        "the image; negative numbers as --box=-5,0,10,10")
    p.add_argument("--multimask", action="store_true",
                   help="write SAM's three candidate masks with their predicted IoU instead of one mask")
    p.add_argument("--sam-checkpoint", default=None, metavar="PTH", dest="sam_checkpoint",
                   help="the official SAM weights for a checkpoint fine-tuned on SAM's own encoder, when the file "
                        "is no longer where training found it (not needed for the offline encoder)")
    p.add_argument("--out", default="segment", metavar="DIR", help="folder for the mask PNGs, overlays and JSON")

# numpy, PIL and torch are imported where they are used: a bad argument fails fast, without loading torch.


def _numbers(text: str) -> list[float] | None:
    try:
        vals = [float(p.strip()) for p in str(text).split(",")]
    except ValueError:
        return None
    return vals if all(math.isfinite(v) for v in vals) else None


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` → four floats with ``x1 > x0`` and ``y1 > y0`` (UserError otherwise)."""
    vals = _numbers(text)
    if vals is None or len(vals) != 4:
        raise UserError(f"--box must be four numbers x0,y0,x1,y1, got {text!r}")
    x0, y0, x1, y1 = vals
    if not (x1 > x0 and y1 > y0):
        raise UserError(f"--box needs x1 > x0 and y1 > y0, got {text!r}")
    return x0, y0, x1, y1


def parse_point(text: str) -> tuple[float, float, int]:
    """``"x,y"`` or ``"x,y,1"`` / ``"x,y,0"`` → ``(x, y, label)`` (UserError naming the value otherwise)."""
    vals = _numbers(text)
    if vals is None or len(vals) not in (2, 3):
        raise UserError(f"--point must be x,y or x,y,1 (positive) or x,y,0 (negative), got {text!r}")
    if len(vals) == 3 and vals[2] not in (0.0, 1.0):
        raise UserError(f"--point label must be 1 (positive) or 0 (negative), got {text!r}")
    return vals[0], vals[1], int(vals[2]) if len(vals) == 3 else 1


def check_prompts(points: list[tuple[float, float, int]], box: tuple[float, float, float, float] | None,
                  size: tuple[int, int], texts: list[str]) -> tuple[float, float, float, float] | None:
    """Points inside the ``(W, H)`` image (UserError naming the first that is not); the box clipped to the
    image (UserError if nothing of it is left). Returns the clipped box."""
    w, h = size
    for (x, y, _), text in zip(points, texts):
        if not (0 <= x < w and 0 <= y < h):
            raise UserError(f"--point {text} lies outside the {w}×{h} image (0 <= x < {w}, 0 <= y < {h})")
    if box is None:
        return None
    x0, y0, x1, y1 = box
    clipped = (max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1))
    if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
        raise UserError(f"--box {','.join(f'{v:g}' for v in box)} lies outside the {w}×{h} image")
    return clipped


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def overlay(image: Any, mask: Any, box: tuple[float, float, float, float] | None = None,
            points: list[tuple[float, float, int]] | None = None) -> Any:
    """The image (PIL) with ``mask`` (bool ``ndarray[H, W]``) tinted red-orange, the box outlined in yellow and
    the points drawn as dots: green positive, red negative (white rim)."""
    import numpy as np
    from PIL import Image, ImageDraw

    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    tint = np.array([255.0, 80.0, 30.0])
    arr[mask] = 0.45 * arr[mask] + 0.55 * tint
    out = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    width = max(1, round(min(image.size) / 200))
    if box is not None:
        x0, y0, x1, y1 = box
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=(255, 230, 0), width=width)
    r = max(2.0, min(image.size) / 60)
    for x, y, label in points or []:
        fill = (40, 220, 40) if label == 1 else (230, 30, 30)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=(255, 255, 255), width=max(1, width // 2))
    return out


def checkpoint_outputs(checkpoint: str | Path) -> dict[str, Any]:
    """What a sam-finetune checkpoint trained beyond its single mask: ``{"iou_head_trained": bool,
    "multimask_outputs": "untrained" | "pretrained by SAM, not fine-tuned"}`` (from its metadata; checkpoints
    written before these keys existed never trained the IoU head)."""
    from vislab.models.sam import read_finetuned

    _, meta = read_finetuned(checkpoint)
    official = meta.get("kind") == "official"
    return {"iou_head_trained": bool(meta.get("iou_head_trained", False)),
            "multimask_outputs": meta.get("multimask_outputs",
                                          "pretrained by SAM, not fine-tuned" if official else "untrained")}


def output_notes(trained: dict[str, Any], *, multimask: bool) -> list[str]:
    """One line per output of the checkpoint whose numbers do not mean what they say."""
    notes = []
    if not trained["iou_head_trained"]:
        notes.append("this checkpoint's IoU head was never trained (written before sam-finetune trained it, or with "
                     "iou_weight 0): its IoU numbers below are not a quality estimate")
    if multimask and trained["multimask_outputs"] == "untrained":
        notes.append("--multimask: this checkpoint's decoder was built from scratch and trained on its single-mask "
                     "output only; the three multimask outputs were never trained (the single mask, without "
                     "--multimask, is the trained one)")
    return notes


def segment_image(model: Any, image: Any, box: tuple[float, float, float, float] | None = None,
                  points: list[tuple[float, float, int]] | None = None, *, multimask: bool = False) -> tuple[Any, Any]:
    """``(logits float32 ndarray[C, H, W], predicted IoU ndarray[C])`` of a PIL ``image`` for a box (continuous
    image pixels) and/or points (``(x, y, label)``, pixel column and row) with a
    :class:`vislab.models.sam.BoxPromptSam`; ``C = 3`` with ``multimask``, else 1."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from vislab.models.sam import SamPrompter

    if box is None and not points:
        raise ValueError("give a box or at least one point")
    w, h = image.size
    s = model.image_size
    rgb = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, H, W)
    x = F.interpolate(rgb[None].float(), (s, s), mode="bilinear", align_corners=False, antialias=True)
    prompter = SamPrompter(model, coords="pixel")
    prompter.set_image(x[0].round().clamp(0, 255).to(torch.uint8))  # uint8, as the training images
    sx, sy = s / w, s / h
    kw: dict[str, Any] = {}
    if box is not None:
        kw["box"] = np.array(box, dtype=np.float64) * np.array([sx, sy, sx, sy])
    if points:
        kw["point_coords"] = np.array([[(px + 0.5) * sx, (py + 0.5) * sy] for px, py, _ in points])
        kw["point_labels"] = np.array([lab for _, _, lab in points])
    logits, iou_pred, _ = prompter.predict(**kw, multimask_output=multimask, return_logits=True)  # (C, S, S)
    up = F.interpolate(torch.from_numpy(logits)[None], (h, w), mode="bilinear", align_corners=False)[0]
    return up.numpy(), iou_pred


def segment_command(args: Any) -> int:
    import numpy as np
    from PIL import Image

    point_texts = list(getattr(args, "point", None) or [])
    box_text = getattr(args, "box", None)
    if not point_texts and box_text is None:
        raise UserError("give at least one prompt: --point x,y[,1|0] (repeatable) and/or --box x0,y0,x1,y1")
    points = [parse_point(t) for t in point_texts]
    box = parse_box(box_text) if box_text is not None else None
    path = Path(args.image)
    if not path.is_file():
        raise UserError(f"image {str(path)!r} not found")
    if not Path(args.checkpoint).is_file():
        raise UserError(f"checkpoint {args.checkpoint} does not exist")
    try:
        with Image.open(path) as im:
            image = im.convert("RGB")
    except OSError as exc:
        raise UserError(f"cannot read image {str(path)!r} ({exc})") from None
    clipped = check_prompts(points, box, image.size, point_texts)
    from vislab.io.files import atomic_write_bytes
    from vislab.models.sam import load_finetuned

    model = load_finetuned(args.checkpoint, sam_checkpoint=getattr(args, "sam_checkpoint", None))
    multimask = bool(getattr(args, "multimask", False))
    trained = checkpoint_outputs(args.checkpoint)
    for note in output_notes(trained, multimask=multimask):
        print(f"note: {note}")
    logits, iou_pred = segment_image(model, image, clipped, points, multimask=multimask)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if clipped is not None and box is not None and clipped != box:
        print(f"box clipped to the {image.size[0]}×{image.size[1]} image: {','.join(f'{v:g}' for v in clipped)}")
    entries = []
    for k in range(logits.shape[0]):
        mask = logits[k] > 0
        suffix = f"_{k}" if multimask else ""
        mask_path, over_path = out / f"{path.stem}_mask{suffix}.png", out / f"{path.stem}_overlay{suffix}.png"
        atomic_write_bytes(mask_path, _png(Image.fromarray((mask * 255).astype(np.uint8))))
        atomic_write_bytes(over_path, _png(overlay(image, mask, clipped, points)))
        entries.append({"mask": mask_path.name, "overlay": over_path.name, "predicted_iou": float(iou_pred[k]),
                        "area_fraction": float(mask.mean())})
        print(f"{mask_path}  (predicted IoU {float(iou_pred[k]):.3f}, {mask.mean():.1%} of the image)")
        print(over_path)
    facts = {"image": str(path), "checkpoint": str(args.checkpoint), "size": list(image.size),
             "points": [{"x": x, "y": y, "label": lab} for x, y, lab in points],
             "box": list(clipped) if clipped is not None else None, "box_given": list(box) if box else None,
             "multimask": multimask, **trained, "masks": entries,
             "best": int(np.argmax(iou_pred)) if multimask else 0}
    json_path = out / f"{path.stem}_masks.json"
    atomic_write_bytes(json_path, (json.dumps(facts, indent=2) + "\n").encode())
    print(json_path)
    return 0
