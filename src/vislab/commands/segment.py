"""``vislab segment --checkpoint CKPT IMAGE --box x0,y0,x1,y1 [--out DIR]``: a mask from one box prompt with
a model fine-tuned by the ``sam-finetune`` experiment.

Writes ``DIR/<stem>_mask.png`` (0/255, the image's size) and ``DIR/<stem>_overlay.png`` (the image with the
mask tinted and the box drawn). The box is in the image's pixels, continuous coordinates (a box around
pixel columns 0..9 is ``x0 = 0, x1 = 10``). The model sees the image as it saw its training images:
resized to the checkpoint's square ``image_size``; the mask logits are resized back to the image.
An official-SAM checkpoint needs the SAM weights file it was trained on (recorded in the checkpoint;
``--sam-checkpoint PTH`` overrides the path).
"""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path
from typing import Any

from vislab.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `vislab segment` (the CLI builds its parser from this)."""
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="a checkpoint written by `vislab run sam-finetune`")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--box", required=True, metavar="x0,y0,x1,y1", help="the prompt box in the image's pixels")
    p.add_argument("--sam-checkpoint", default=None, metavar="PTH", dest="sam_checkpoint",
                   help="the official SAM weights for a checkpoint fine-tuned on SAM's own encoder, when the file "
                        "is no longer where training found it (not needed for the offline encoder)")
    p.add_argument("--out", default="segment", metavar="DIR", help="folder for the mask PNG and the overlay")

# numpy, PIL and torch are imported where they are used: a bad argument fails fast, without loading torch.


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` → four floats with ``x1 > x0`` and ``y1 > y0`` (UserError otherwise)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        raise UserError(f"--box must be four numbers x0,y0,x1,y1, got {text!r}")
    x0, y0, x1, y1 = vals
    if not (x1 > x0 and y1 > y0):
        raise UserError(f"--box needs x1 > x0 and y1 > y0, got {text!r}")
    return x0, y0, x1, y1


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def overlay(image: Any, mask: Any, box: tuple[float, float, float, float]) -> Any:
    """The image (PIL) with ``mask`` (bool ``ndarray[H, W]``) tinted red-orange and the box outlined in yellow."""
    import numpy as np
    from PIL import Image, ImageDraw

    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    tint = np.array([255.0, 80.0, 30.0])
    arr[mask] = 0.45 * arr[mask] + 0.55 * tint
    out = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    x0, y0, x1, y1 = box
    ImageDraw.Draw(out).rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=(255, 230, 0),
                                  width=max(1, round(min(image.size) / 200)))
    return out


def segment_image(model: Any, image: Any, box: tuple[float, float, float, float]) -> Any:
    """Mask logits ``float32 ndarray[H, W]`` of a PIL ``image`` for ``box`` (image pixels) with a
    :class:`vislab.models.sam.BoxPromptSam`."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    w, h = image.size
    s = model.image_size
    rgb = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, H, W)
    x = F.interpolate(rgb[None].float(), (s, s), mode="bilinear", align_corners=False, antialias=True)
    scale = torch.tensor([s / w, s / h, s / w, s / h])
    b = torch.tensor(box, dtype=torch.float32) * scale
    with torch.no_grad():
        logits = model(x, b[None])  # (1, 1, S, S)
        logits = F.interpolate(logits, (h, w), mode="bilinear", align_corners=False)
    return logits[0, 0].numpy()


def segment_command(args: Any) -> int:
    import numpy as np
    from PIL import Image

    box = parse_box(args.box)
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
    w, h = image.size
    x0, y0, x1, y1 = box
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise UserError(f"--box {args.box} lies outside the {w}×{h} image (0 <= x0 < x1 <= {w}, 0 <= y0 < y1 <= {h})")
    from vislab.engine.run_dir import atomic_write_bytes
    from vislab.models.sam import load_finetuned

    model = load_finetuned(args.checkpoint, sam_checkpoint=getattr(args, "sam_checkpoint", None))
    logits = segment_image(model, image, box)
    mask = logits > 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mask_path = out / f"{path.stem}_mask.png"
    over_path = out / f"{path.stem}_overlay.png"
    atomic_write_bytes(mask_path, _png(Image.fromarray((mask * 255).astype(np.uint8))))
    atomic_write_bytes(over_path, _png(overlay(image, mask, box)))
    print(f"{mask_path}  ({mask.mean():.1%} of the image)")
    print(over_path)
    return 0
