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

**No texture, no answer.** A shift is determined only where the image varies in two directions (the aperture
problem of Lucas–Kanade). Before any estimate, each image's structure tensor (the Hann-weighted mean of
``∇I ∇Iᵀ``, the window phase correlation uses) must have a smallest eigenvalue of at least
``(TEXTURE_MIN_GRADIENT)²``: a gradient of 0.25 gray levels (of 8 bits) per pixel in the weakest direction,
just above what 8-bit rounding alone gives (RMS ``1/√24 ≈ 0.20`` levels per pixel). A flat image, a pure ramp or
a single straight edge is refused with "no texture to register" (:class:`UserError`), instead of an arbitrary
shift. A faint texture above that floor registers (tests: a sky crop, noise of a quarter gray level).

**Many pairs in one process.** ``--pairs DIR`` pairs the files ``NAME_1.EXT`` and ``NAME_2.EXT`` found anywhere
under ``DIR``; ``--pairs FILE`` reads lines ``IMG1 IMG2`` (paths relative to the file's folder; blank lines and
``#`` comments skipped). Every path is checked before the first estimate. Each pair's overlay goes to
``--out`` under the pair's folder relative to the inputs' common folder (``sub/NAME_change.png``; an index is
added if two pairs would share a name), is complete before the pair's line is printed (text, or one JSON
object per pair with ``--json``), and a progress bar goes to stderr. A pair that cannot be estimated (an
unreadable or flat image, different sizes) prints a JSON line with ``"error"`` and the others go on; the
command then exits 2 with one line counting the failures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vislab.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `vislab change` (the CLI builds its parser from this)."""
    p.add_argument("img1", metavar="IMG1", nargs="?")
    p.add_argument("img2", metavar="IMG2", nargs="?")
    p.add_argument("--pairs", metavar="DIR|FILE",
                   help="many pairs in one process, instead of IMG1 IMG2: a folder whose files NAME_1.EXT and "
                        "NAME_2.EXT pair up (in any subfolder), or a text file of 'IMG1 IMG2' lines (paths relative "
                        "to the file; # comments). One overlay per pair under --out keeping the subfolders, one "
                        "line per pair (one JSON object with --json), progress on stderr")
    p.add_argument("--method", default=None, choices=["net", "hybrid", "phase", "fourier-mellin", "fourier_mellin"],
                   help="default: hybrid with --checkpoint, fourier-mellin without (fourier_mellin, the experiment's "
                        "spelling, is the same method)")
    p.add_argument("--checkpoint", metavar="CKPT", help="a checkpoint written by `vislab run change-detection`")
    p.add_argument("--json", action="store_true", help='print one JSON object {"dx", "dy", "scale", "change"} '
                   '(with --pairs one per line, with "img1", "img2" and "overlay", or "error")')
    p.add_argument("--out", default=None, metavar="DIR", help="folder for the overlays (img1, img2, img2 warped "
                   "back, differences; default: change/)")

METHODS = ("net", "hybrid", "phase", "fourier-mellin")
MIN_SIDE = 64
DEFAULT_SHIFT_THRESHOLD_PER_PX = 2.0 / 128  # the experiment's defaults: min_shift 4 px at 128 px, threshold half
DEFAULT_SCALE_THRESHOLD = math.log(1.08) / 2
TEXTURE_MIN_GRADIENT = 0.25 / 255  # RMS gradient (per pixel) in the weakest direction; 8-bit rounding gives 0.20/255


def load_gray(path: str | Path) -> np.ndarray:
    """An image file as grayscale ``float64[H, W]`` in [0, 1] through the one image reader
    (:func:`vislab.io.images.read_image`: EXIF orientation, 16-bit and float scaled, alpha on black);
    :class:`UserError` if missing, a folder or unreadable."""
    from vislab.io.images import read_image

    return read_image(path, "gray", np.float64)


def texture_strength(img: np.ndarray) -> tuple[float, float]:
    """``(weak, strong)``: the RMS gradient per pixel along the structure tensor's two eigenvectors, the tensor
    being the Hann-weighted mean of ``∇I ∇Iᵀ`` over ``img float[H, W]``. A shift is determined when ``weak``
    is well above the rounding noise (module docstring)."""
    H, W = img.shape
    w = np.outer(np.hanning(H), np.hanning(W))
    gy, gx = np.gradient(np.asarray(img, np.float64))
    total = w.sum()
    a, b, c = (w * gx * gx).sum() / total, (w * gx * gy).sum() / total, (w * gy * gy).sum() / total
    half_trace, root = (a + c) / 2, math.sqrt(max(((a - c) / 2) ** 2 + b * b, 0.0))
    return math.sqrt(max(half_trace - root, 0.0)), math.sqrt(max(half_trace + root, 0.0))


def check_texture(img: np.ndarray, name: str) -> None:
    """:class:`UserError` "no texture to register" unless ``img`` varies enough in two directions."""
    weak, strong = texture_strength(img)
    if weak < TEXTURE_MIN_GRADIENT:
        what = ("it is flat" if strong < TEXTURE_MIN_GRADIENT else
                "it varies in one direction only (a ramp or a straight edge), so a shift along it is undetermined")
        raise UserError(f"no texture to register in {name}: {what} (RMS gradient {weak * 255:.2f} gray levels per "
                        f"pixel in its weakest direction, below {TEXTURE_MIN_GRADIENT * 255:.2f})")


def load_change_net(checkpoint: str | Path) -> tuple[Any, dict[str, Any]]:
    """The network of a ``change-detection`` run's checkpoint (weights-only load) and its metadata."""
    from vislab.io.checkpoint import model_state, read_checkpoint
    from vislab.models.change import ChangeNet

    ckpt, meta = read_checkpoint(checkpoint, "change-detection", what="the change-detection experiment")
    try:  # a checkpoint of another vislab version: its model facts or weights do not fit this ChangeNet
        spec = dict(meta["model"])
        model = ChangeNet(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
        model.load_state_dict(model_state(ckpt))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {checkpoint} does not fit this vislab's change-detection network "
                        f"({type(exc).__name__}: {reason[:200]})") from None
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
            from vislab.models.change import CHANGE_TYPES

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
    """One PNG strip: img1, img2, img2 mapped back into img1's frame with the estimate, |img2 − img1| and
    |warped − img1| (outside img2's frame: black), titled with the estimate. Written atomically."""
    from PIL import Image, ImageDraw

    from vislab.ops.registration import Registration, warp_back

    back, valid = warp_back(img2, Registration(result["dx"], result["dy"], result["scale"]))
    panels = [img1, img2, np.where(valid, back, 0.0), np.abs(img2 - img1), np.where(valid, np.abs(back - img1), 0.0)]
    titles = ["img1", "img2", f"img2 warped back ({result['method']})", "|img2 - img1|", "|warped - img1|"]
    H, W = img1.shape
    scale = max(1, 160 // max(H, W))  # small inputs drawn larger
    h, w, gap, head = H * scale, W * scale, 6, 30
    strip = Image.new("L", (5 * w + 4 * gap, h + head), 255)
    draw = ImageDraw.Draw(strip)
    for k, (panel, title) in enumerate(zip(panels, titles)):
        tile = Image.fromarray(np.clip(np.rint(panel * 255), 0, 255).astype(np.uint8))
        if scale > 1:
            tile = tile.resize((w, h), Image.Resampling.NEAREST)
        strip.paste(tile, (k * (w + gap), head))
        draw.text((k * (w + gap) + 2, 16), title, fill=0)
    draw.text((2, 2), f"t=({result['dx']:+.2f}, {result['dy']:+.2f}) s={result['scale']:.4f}: {result['change']}",
              fill=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    strip.save(tmp, format="PNG")
    tmp.replace(path)
    return path


def pairs_from(source: str | Path) -> list[tuple[Path, Path, str]]:
    """``[(img1, img2, label)]`` of ``--pairs`` (module docstring), in a stable order; ``label`` is the pair's
    name for its overlay (``sub/NAME``). :class:`UserError` for a missing source, an unpaired ``NAME_1`` or
    ``NAME_2`` file, a malformed line or no pair at all; every listed path must exist."""
    import re

    src = Path(source)
    if not src.exists():
        raise UserError(f"--pairs {src} does not exist")
    pairs: list[tuple[Path, Path, str]] = []
    if src.is_dir():
        found: dict[tuple[Path, str], dict[str, Path]] = {}
        for p in sorted(src.rglob("*")):
            m = re.fullmatch(r"(.+)_([12])", p.stem)
            if p.is_file() and not p.name.startswith(".") and m:
                found.setdefault((p.parent, m.group(1)), {})[m.group(2)] = p
        for (parent, name), both in sorted(found.items()):
            if set(both) != {"1", "2"}:
                have = next(iter(both.values()))
                raise UserError(f"--pairs {src}: {have} has no partner {name}_{'2' if '1' in both else '1'}.* "
                                "next to it")
            pairs.append((both["1"], both["2"], str((parent / name).relative_to(src))))
        if not pairs:
            raise UserError(f"--pairs {src}: no pair of files NAME_1.EXT and NAME_2.EXT in the folder")
        return pairs
    try:
        text = src.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"--pairs {src} is neither a folder nor a text file of 'IMG1 IMG2' lines") from None
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise UserError(f"--pairs {src}, line {n}: expected 'IMG1 IMG2' (two paths), got {line!r}")
        a, b = ((src.parent / x) for x in parts)
        for x in (a, b):
            if not x.is_file():
                raise UserError(f"--pairs {src}, line {n}: image {x} "
                                f"{'is a folder' if x.is_dir() else 'does not exist'}")
        pairs.append((a, b, ""))
    if not pairs:
        raise UserError(f"--pairs {src} lists no pair ('IMG1 IMG2' lines)")
    return pairs


def overlay_names(pairs: list[tuple[Path, Path, str]]) -> list[Path]:
    """A distinct relative overlay path per pair: the pair's folder relative to the common folder of all the
    inputs, then ``LABEL_change.png`` (or ``STEM1_STEM2_change.png``); ``_2``, ``_3``... when names repeat."""
    import os

    dirs = [str(p.resolve().parent) for a, b, _ in pairs for p in (a, b)]
    common = Path(os.path.commonpath(dirs)) if dirs else Path(".")
    names: list[Path] = []
    seen: dict[Path, int] = {}
    for a, b, label in pairs:
        if label:
            base = Path(f"{label}_change.png")
        else:
            rel = a.resolve().parent.relative_to(common)
            base = rel / f"{a.stem}_{b.stem}_change.png"
        k = seen.get(base, 0) + 1
        seen[base] = k
        names.append(base if k == 1 else base.with_name(f"{base.stem}_{k}.png"))
    taken = set(names)
    if len(taken) != len(names):  # an index that met a real name: number them all
        names = [n.with_name(f"{n.stem}_{i}.png") for i, n in enumerate(names, start=1)]
    return names


def _result_line(result: dict[str, Any], a: Path, b: Path, overlay: Path, *, as_json: bool, many: bool) -> str:
    if as_json:
        doc = {"dx": result["dx"], "dy": result["dy"], "scale": result["scale"], "change": result["change"]}
        if many:  # one line per pair: which pair, and its overlay
            doc.update(img1=str(a), img2=str(b), overlay=str(overlay))
        return json.dumps(doc)
    if many:
        return (f"{a} {b}: dx {result['dx']:+.3f} dy {result['dy']:+.3f} scale {result['scale']:.4f} "
                f"change {result['change']} -> {overlay}")
    return (f"dx {result['dx']:+.3f} px\ndy {result['dy']:+.3f} px\nscale {result['scale']:.4f}\n"
            f"change {result['change']}\nmethod {result['method']}\n"
            + (f"rotation {result['rotation']:+.2f} deg (mod 180; outside the convention, reported only)\n"
               if "rotation" in result else "")
            + f"overlay {overlay}")


def _estimate_pair(a: Path, b: Path, *, method: str, model: Any, meta: dict[str, Any] | None) -> tuple:
    img1, img2 = load_gray(a), load_gray(b)
    if img1.shape != img2.shape:
        raise UserError(f"the images must have the same size: {a} is {img1.shape[1]}×{img1.shape[0]}, "
                        f"{b} is {img2.shape[1]}×{img2.shape[0]}")
    if min(img1.shape) < MIN_SIDE:
        raise UserError(f"the images must be at least {MIN_SIDE}×{MIN_SIDE} pixels, got "
                        f"{img1.shape[1]}×{img1.shape[0]}")
    check_texture(img1, str(a))
    check_texture(img2, str(b))
    return img1, img2, estimate_change(img1, img2, method=method, model=model, meta=meta)


def change_command(args: Any) -> int:
    """``vislab change IMG1 IMG2 | --pairs DIR|FILE [--method M] [--checkpoint CKPT] [--json] [--out DIR]``.

    ``args`` needs ``img1``, ``img2``, ``method`` (None = default), ``checkpoint``, ``json`` and ``out``;
    optionally ``pairs``. Each overlay is written before its line is printed; a closed stdout stops the
    printing, not the work (exit 141 at the end).
    """
    from vislab.commands._console import EXIT_USAGE, LineWriter
    from vislab.commands._inputs import progress_enabled

    method = getattr(args, "method", None) or ("hybrid" if getattr(args, "checkpoint", None) else "fourier-mellin")
    method = method.replace("_", "-")  # fourier_mellin, as the experiment spells it
    if method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if method in ("net", "hybrid") and not args.checkpoint:
        raise UserError(f"--method {method} needs --checkpoint CKPT (a checkpoint of `vislab run change-detection`)")
    source = getattr(args, "pairs", None)
    if source and (args.img1 or args.img2):
        raise UserError("give either IMG1 IMG2 or --pairs DIR|FILE, not both")
    if not source and not (args.img1 and args.img2):
        raise UserError("give two images IMG1 IMG2, or --pairs DIR|FILE for many pairs")
    if source:
        pairs = pairs_from(source)
    else:
        pairs = [(Path(args.img1), Path(args.img2), "")]
        for p in (pairs[0][0], pairs[0][1]):
            if p.is_dir():
                raise UserError(f"image {p} is a folder; for a folder of pairs use --pairs {p}")
    model = meta = None
    if args.checkpoint:
        model, meta = load_change_net(args.checkpoint)
    out_dir = Path(getattr(args, "out", None) or "change")
    names = overlay_names(pairs)
    emit = LineWriter()
    if not source:
        a, b, _ = pairs[0]
        img1, img2, result = _estimate_pair(a, b, method=method, model=model, meta=meta)
        overlay = write_overlay(img1, img2, result, out_dir / names[0])
        emit(_result_line(result, a, b, overlay, as_json=args.json, many=False))
        return emit.exit_code()
    from tqdm import tqdm

    failed: list[str] = []
    bar = tqdm(total=len(pairs), file=sys.stderr, unit="pair", desc="change", disable=not progress_enabled(),
               dynamic_ncols=True)
    for (a, b, _), name in zip(pairs, names):
        try:
            img1, img2, result = _estimate_pair(a, b, method=method, model=model, meta=meta)
        except UserError as exc:
            failed.append(f"{a} {b}: {exc}")
            emit(json.dumps({"img1": str(a), "img2": str(b), "error": str(exc)}) if args.json
                 else f"{a} {b}: error: {exc}")
        else:
            overlay = write_overlay(img1, img2, result, out_dir / name)
            emit(_result_line(result, a, b, overlay, as_json=args.json, many=True))
        bar.update(1)
    bar.close()
    if failed:
        print(f"vislab: error: {len(failed)} of {len(pairs)} pairs failed (first: {failed[0]})", file=sys.stderr)
        return EXIT_USAGE
    return emit.exit_code()
