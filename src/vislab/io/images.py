"""The one image reader of vislab: datasets, task commands and generated data read image files here.

What a file becomes, step by step:

1. **The file.** A missing path, a folder, or bytes that Pillow cannot decode raise :class:`ImageReadError`
   (one line naming the file). So does a **decompression bomb**: an image with more pixels than
   ``PIL.Image.MAX_IMAGE_PIXELS`` (89.5 M by default) is refused before it is decoded, at Pillow's warning
   level already, not only at its error level (twice the limit).
2. **EXIF orientation** is applied (``PIL.ImageOps.exif_transpose``): the pixels are the picture as a
   viewer shows it, so a portrait photograph stored sideways with an orientation tag is read as portrait.
3. **Pixel values become floats in [0, 1]**, scaled by what the format holds, never clipped:

   ========================  =====================================================================
   Pillow mode               scaling
   ========================  =====================================================================
   ``1``                     0 or 1
   ``L P RGB RGBA LA CMYK``  / 255 (8 bits per channel)
   ``I;16`` (16-bit PNG...)  / 65535
   ``I`` (32-bit integer)    / 65535 when every value is in [0, 65535] (how 16-bit data is often stored
                             in this mode), else min–max to [0, 1]
   ``F`` (32-bit float)      as is when every value is in [0, 1], else min–max to [0, 1]; NaN or
                             infinite pixels are refused
   ========================  =====================================================================

   A constant image outside [0, 1] (min = max) becomes 0.
4. **Channels** are converted explicitly:

   * palette images (``P``, ``PA``) are expanded through their palette; a palette transparency becomes an
     alpha channel;
   * **alpha is composited on black**: a pixel becomes ``colour · alpha``, so fully transparent pixels are
     black whatever colour they happen to store (dropping the alpha instead would show that hidden colour);
   * ``mode="rgb"`` of a gray image repeats the gray value in the three channels;
   * ``mode="gray"`` of a colour image is the ITU-R 601-2 luma ``0.299 R + 0.587 G + 0.114 B`` (Pillow's
     ``"L"`` conversion, rounded to 8 bits for 8-bit sources).

:func:`read_image` returns a NumPy array; :func:`open_image` the same pixels as an 8-bit ``PIL.Image``
(``"RGB"`` or ``"L"``) for code that draws on or resizes a PIL image. NumPy and Pillow only: no torch.
"""

from __future__ import annotations

import re
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vislab.errors import UserError

__all__ = ["ImageReadError", "check_image", "image_size", "open_image", "open_raw", "read_image", "to_array",
           "to_pil"]

MODES = ("rgb", "gray")
_HIGH_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA = ("RGBA", "LA", "RGBa", "La", "PA")
# what a corrupt file can raise from inside Pillow's decoders
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError,
                  KeyError, TypeError, ZeroDivisionError)


class ImageReadError(UserError, ValueError):
    """An image file that cannot be read as an image: missing, a folder, undecodable, a decompression bomb, or
    non-finite pixels. A :class:`~vislab.errors.UserError` (one line at the CLI) and a ``ValueError``."""


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _bomb_message(path: Path, exc: BaseException) -> str:
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(exc))
    pixels = f"{int(found.group(1)):,} pixels" if found else "more pixels than allowed"
    limit = int(found.group(2)) if found else Image.MAX_IMAGE_PIXELS
    try:
        size = f"{path.stat().st_size / 1e6:.1f} MB file, "
    except OSError:
        size = ""
    return (f"image {path} is refused as a possible decompression bomb ({size}{pixels}, over the limit of "
            f"{limit:,} pixels, PIL.Image.MAX_IMAGE_PIXELS); raise that limit only for an image you trust")


def _open(path: str | Path) -> Image.Image:
    """The decoded, EXIF-oriented image of a file (``load()`` done, the file closed)."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"image {p} does not exist")
    if p.is_dir():
        raise ImageReadError(f"image {p} is a folder, not an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                im.load()
                out = ImageOps.exif_transpose(im)
                if out is im:  # no orientation tag: a copy that outlives the file
                    out = im.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(_bomb_message(p, exc)) from None
    except UnidentifiedImageError:
        raise ImageReadError(f"cannot read image {p}: not an image format that Pillow can decode") from None
    except _DECODE_ERRORS as exc:
        raise ImageReadError(f"cannot read image {p}: {_first_line(exc)}") from None
    return out


def _float_pixels(im: Image.Image, where: str) -> np.ndarray:
    """A high-bit image (``I;16*``, ``I``, ``F``) as ``float64[H, W]`` in [0, 1] (the table above)."""
    if im.mode.startswith("I;16"):
        return np.asarray(im, dtype=np.float64) / 65535.0
    a = np.asarray(im, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ImageReadError(f"image {where} has {int((~np.isfinite(a)).sum())} NaN or infinite pixel(s)")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode == "I" and lo >= 0 and hi <= 65535:
        return a / 65535.0
    if im.mode == "F" and lo >= 0 and hi <= 1:
        return a
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _composite_on_black(im: Image.Image) -> Image.Image:
    """``RGBA``/``LA``/``PA``/premultiplied images → ``RGB``/``L`` with ``colour · alpha`` (8-bit, rounded)."""
    rgba = im.convert("RGBA" if im.mode in ("RGBA", "RGBa", "PA") else "LA")
    a = np.asarray(rgba, dtype=np.uint16)
    c = (a[..., :-1] * a[..., -1:] + 127) // 255  # round(c · alpha / 255)
    c = c.astype(np.uint8)
    return Image.fromarray(c if c.shape[-1] == 3 else c[..., 0], "RGB" if c.shape[-1] == 3 else "L")


def _eight_bit(im: Image.Image, mode: str) -> Image.Image:
    """An image of ≤ 8-bit channels as 8-bit ``RGB`` (``mode="rgb"``) or ``L`` (``mode="gray"``)."""
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in _ALPHA:
        im = _composite_on_black(im)
    return im.convert("RGB" if mode == "rgb" else "L")


def to_array(im: Image.Image, mode: str = "rgb", dtype: Any = np.float32, *, where: str = "image") -> np.ndarray:
    """The pixels of an open ``PIL.Image`` as ``[H, W, 3]`` (``mode="rgb"``) or ``[H, W]`` (``"gray"``).

    ``dtype`` float32/float64: values in [0, 1] (module docstring); ``uint8``: 0..255 (high-bit images rounded).
    No EXIF step here: :func:`read_image` does that when it opens the file.
    """
    _check_mode(mode)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64, np.uint8):
        raise TypeError(f"dtype must be float32, float64 or uint8, got {dtype}")
    if im.mode in _HIGH_BIT:
        g = _float_pixels(im, where)  # (H, W) in [0, 1]
        out = np.repeat(g[..., None], 3, axis=2) if mode == "rgb" else g
        return (np.rint(out * 255)).astype(np.uint8) if dtype == np.uint8 else out.astype(dtype)
    arr = np.asarray(_eight_bit(im, mode))  # uint8 (H, W, 3) or (H, W)
    return arr.copy() if dtype == np.uint8 else arr.astype(dtype) / dtype.type(255)


def to_pil(im: Image.Image, mode: str = "rgb", *, where: str = "image") -> Image.Image:
    """An open ``PIL.Image`` as 8-bit ``"RGB"`` or ``"L"`` with the conversions of :func:`to_array`."""
    _check_mode(mode)
    if im.mode in _HIGH_BIT:
        return Image.fromarray(to_array(im, mode, np.uint8, where=where), "RGB" if mode == "rgb" else "L")
    return _eight_bit(im, mode)


def read_image(path: str | Path, mode: str = "rgb", dtype: Any = np.float32) -> np.ndarray:
    """An image file as ``[H, W, 3]`` (``mode="rgb"``) or ``[H, W]`` (``mode="gray"``) array, EXIF-oriented.

    ``dtype`` float32 (default) or float64: values in [0, 1]; ``np.uint8``: 0..255.

    Raises:
        ImageReadError: missing file, a folder, undecodable bytes, a decompression bomb, non-finite pixels.
        ValueError, TypeError: an unknown ``mode`` or ``dtype``.
    """
    _check_mode(mode)
    return to_array(_open(path), mode, dtype, where=str(path))


def open_image(path: str | Path, mode: str = "rgb") -> Image.Image:
    """An image file as an 8-bit ``PIL.Image`` (``"RGB"`` or ``"L"``), EXIF-oriented, with the scaling and
    channel rules of :func:`read_image` (high-bit images rounded to 8 bits). Raises as :func:`read_image`."""
    _check_mode(mode)
    return to_pil(_open(path), mode, where=str(path))


def open_raw(path: str | Path) -> Image.Image:
    """The decoded, EXIF-oriented ``PIL.Image`` of a file in its own mode (``P``, ``I;16``, ``L``...), with the
    file checks and the decompression-bomb guard of :func:`read_image` but no value or channel conversion: for
    label images (masks), whose values are classes, not intensities. Raises :class:`ImageReadError`."""
    return _open(path)


def check_image(path: str | Path) -> str | None:
    """``None`` if ``path`` decodes as an image that :func:`read_image` accepts, else the reason (one line)."""
    try:
        to_array(_open(path), "gray", np.float32, where=str(path))
    except ImageReadError as exc:
        return str(exc)
    return None


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file as :func:`read_image` returns it (EXIF orientations 5–8 swap the
    sides), from the header only. Raises :class:`ImageReadError` as :func:`read_image`."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"image {p} does not exist")
    if p.is_dir():
        raise ImageReadError(f"image {p} is a folder, not an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                orientation = im.getexif().get(0x0112, 1)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(_bomb_message(p, exc)) from None
    except UnidentifiedImageError:
        raise ImageReadError(f"cannot read image {p}: not an image format that Pillow can decode") from None
    except _DECODE_ERRORS as exc:
        raise ImageReadError(f"cannot read image {p}: {_first_line(exc)}") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
