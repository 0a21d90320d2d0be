"""``vislab change IMG1 IMG2``: the displacement and scaling between two images, and the change type.

Convention: IMG2 is IMG1 scaled by ``s`` about the image centre ``c``, then shifted by ``t = (dx, dy)``
pixels (x right, y down): a point ``p`` of IMG1 appears at ``s·(p − c) + c + t`` in IMG2. The change type
is ``none | shift | scale | both``.

Methods: ``phase`` (phase correlation, s = 1), ``fourier-mellin`` (log-polar Fourier–Mellin, then phase
correlation), ``net`` (the change-detection network of a ``vislab run change-detection`` checkpoint) and
``hybrid`` (the network's scale refined on the log-polar spectra, undone, then phase correlation).
Default: ``hybrid`` with ``--checkpoint``, ``fourier-mellin`` without. The network sees both images
resized to its training size; its estimates are mapped back to the input's pixels, and the classical
parts of the hybrid run on the images at their own size.

The change type comes from the network's head (``net``) or from thresholds on the estimate: a shift when
``|t| >= shift threshold``, a scaling when ``|log s| >= scale threshold``. The thresholds are the ones the
network was trained with (half the smallest generated change), the shift one converted to the input's
pixels; without a checkpoint, those of the experiment's defaults (2 px per 128 px, |log s| = log(1.08)/2).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from vislab.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `vislab change` (the CLI builds its parser from this)."""
    p.add_argument("img1", metavar="IMG1")
    p.add_argument("img2", metavar="IMG2")
    p.add_argument("--method", default=None, choices=["net", "hybrid", "phase", "fourier-mellin", "fourier_mellin"],
                   help="default: hybrid with --checkpoint, fourier-mellin without (fourier_mellin, the experiment's "
                        "spelling, is the same method)")
    p.add_argument("--checkpoint", metavar="CKPT", help="a checkpoint written by `vislab run change-detection`")
    p.add_argument("--json", action="store_true", help='print one JSON object {"dx", "dy", "scale", "change"}')
    p.add_argument("--out", default=None, metavar="DIR", help="folder for the overlay (img1, img2 warped back, "
                   "difference)")

METHODS = ("net", "hybrid", "phase", "fourier-mellin")
MIN_SIDE = 64
DEFAULT_SHIFT_THRESHOLD_PER_PX = 2.0 / 128  # the experiment's defaults: min_shift 4 px at 128 px, threshold half
DEFAULT_SCALE_THRESHOLD = math.log(1.08) / 2


def load_gray(path: str | Path) -> np.ndarray:
    """An image file as grayscale ``float64[H, W]`` in [0, 1]; :class:`UserError` if missing or unreadable."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise UserError(f"image {p} does not exist")
    if not p.is_file():
        raise UserError(f"image {p} is not a file")
    try:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot read image {p}: {reason}") from None
    return arr


def load_change_net(checkpoint: str | Path) -> tuple[Any, dict[str, Any]]:
    """The network of a ``change-detection`` run's checkpoint (weights-only load) and its metadata."""
    from vislab.engine.checkpoint import model_state, read_checkpoint
    from vislab.models.change import ChangeNet

    ckpt, meta = read_checkpoint(checkpoint, "change-detection", what="the change-detection experiment")
    spec = dict(meta["model"])
    model = ChangeNet(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
    model.load_state_dict(model_state(ckpt))
    return model.eval(), meta


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """``size × size`` with area-aware (anti-aliased) bilinear resampling; the centre stays the centre."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()


def net_estimate(model: Any, img1: np.ndarray, img2: np.ndarray) -> dict[str, float]:
    """The network's raw estimate for one pair of equal-size images of any size, in the input's pixels:
    ``{"dx", "dy", "scale", "type"}`` (type from the head, an index into ``CHANGE_TYPES``)."""
    import torch

    S = model.image_size
    H, W = img1.shape
    x = torch.from_numpy(np.stack([_resize(img1, S), _resize(img2, S)]))[None]  # (1, 2, S, S)
    with torch.no_grad():
        d = model.decode(model(x))
    # resizing W×H -> S×S scales x by S/W and y by S/H about the centre: shifts come back times W/S and H/S;
    # a scaling about the centre is the same scaling in both frames
    return {"dx": float(d["dx"][0]) * W / S, "dy": float(d["dy"][0]) * H / S, "scale": float(d["scale"][0]),
            "type": int(d["type"][0])}


def estimate_change(img1: np.ndarray, img2: np.ndarray, *, method: str, model: Any = None,
                    meta: dict[str, Any] | None = None, upsample_factor: int = 20) -> dict[str, Any]:
    """``{"dx", "dy", "scale", "change", "method"}`` for one pair (see the module docstring)."""
    from threadpoolctl import threadpool_limits

    from vislab.models.change import CHANGE_TYPES
    from vislab.ops.registration import change_type_of, fourier_mellin, hybrid, phase_correlation

    if method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if method in ("net", "hybrid") and model is None:
        raise UserError(f"--method {method} needs --checkpoint CKPT (a checkpoint of `vislab run change-detection`)")
    H, W = img1.shape
    if meta is not None:
        S = float(meta["image_size"])
        shift_thr = float(meta["shift_threshold"]) * (W + H) / (2 * S)
        scale_thr = float(meta["scale_threshold"])
    else:
        shift_thr = DEFAULT_SHIFT_THRESHOLD_PER_PX * (W + H) / 2
        scale_thr = DEFAULT_SCALE_THRESHOLD
    with threadpool_limits(limits=1, user_api="blas"):
        if method == "net":
            e = net_estimate(model, img1, img2)
            return {"dx": e["dx"], "dy": e["dy"], "scale": e["scale"], "change": CHANGE_TYPES[e["type"]],
                    "method": method}
        if method == "hybrid":
            e = net_estimate(model, img1, img2)
            r = hybrid(img1, img2, scale=e["scale"], scale_threshold=scale_thr, shift_threshold=shift_thr,
                       search=float((meta or {}).get("hybrid_search", 0.05)),
                       direct=bool((meta or {}).get("hybrid_direct", True)), upsample_factor=upsample_factor)
        elif method == "phase":
            r = phase_correlation(img1, img2, upsample_factor=upsample_factor)
        else:
            r = fourier_mellin(img1, img2, upsample_factor=upsample_factor)
    change = change_type_of(r.dx, r.dy, math.log(r.scale), shift_threshold=shift_thr, scale_threshold=scale_thr)
    out = {"dx": r.dx, "dy": r.dy, "scale": r.scale, "change": change, "method": method}
    if method == "fourier-mellin":
        out["rotation"] = r.rotation  # degrees mod 180, outside the convention: reported, never trained on
    return out


def write_overlay(img1: np.ndarray, img2: np.ndarray, result: dict[str, Any], path: Path) -> Path:
    """img1, img2, img2 mapped back into img1's frame with the estimate, and |warped − img1|."""
    from vislab.ops.registration import Registration, warp_back
    from vislab.report.figures import image_grid

    back, valid = warp_back(img2, Registration(result["dx"], result["dy"], result["scale"]))
    diff0 = np.abs(img2 - img1)
    diff = np.where(valid, np.abs(back - img1), 0.0)
    text = f"t=({result['dx']:+.2f}, {result['dy']:+.2f}) s={result['scale']:.4f}: {result['change']}"
    return image_grid([img1, img2, np.where(valid, back, 0.0), diff0, diff], path,
                      titles=["img1", "img2", f"img2 warped back ({result['method']})", "|img2 − img1|",
                              "|warped − img1|"], ncols=5, cell=2.8, title=text)


def change_command(args: Any) -> int:
    """``vislab change IMG1 IMG2 [--method M] [--checkpoint CKPT] [--json] [--out DIR]``.

    ``args`` needs ``img1``, ``img2``, ``method`` (None = default), ``checkpoint``, ``json`` and ``out``.
    """
    method = getattr(args, "method", None) or ("hybrid" if getattr(args, "checkpoint", None) else "fourier-mellin")
    method = method.replace("_", "-")  # fourier_mellin, as the experiment spells it
    if method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if method in ("net", "hybrid") and not args.checkpoint:
        raise UserError(f"--method {method} needs --checkpoint CKPT (a checkpoint of `vislab run change-detection`)")
    img1, img2 = load_gray(args.img1), load_gray(args.img2)
    if img1.shape != img2.shape:
        raise UserError(f"the images must have the same size: {args.img1} is {img1.shape[1]}×{img1.shape[0]}, "
                        f"{args.img2} is {img2.shape[1]}×{img2.shape[0]}")
    if min(img1.shape) < MIN_SIDE:
        raise UserError(f"the images must be at least {MIN_SIDE}×{MIN_SIDE} pixels, got "
                        f"{img1.shape[1]}×{img1.shape[0]}")
    model = meta = None
    if args.checkpoint:
        model, meta = load_change_net(args.checkpoint)
    result = estimate_change(img1, img2, method=method, model=model, meta=meta)
    out_dir = Path(getattr(args, "out", None) or "change")
    out_dir.mkdir(parents=True, exist_ok=True)
    overlay = write_overlay(img1, img2, result, out_dir / f"{Path(args.img1).stem}_{Path(args.img2).stem}_change.png")
    if args.json:
        print(json.dumps({"dx": result["dx"], "dy": result["dy"], "scale": result["scale"],
                          "change": result["change"]}))
    else:
        print(f"dx {result['dx']:+.3f} px\ndy {result['dy']:+.3f} px\nscale {result['scale']:.4f}\n"
              f"change {result['change']}\nmethod {method}\n"
              + (f"rotation {result['rotation']:+.2f} deg (mod 180; outside the convention, reported only)\n"
                 if "rotation" in result else "")
              + f"overlay {overlay}")
    return 0
