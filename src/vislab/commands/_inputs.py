"""Inputs and outputs shared by the task commands (``detect``, and ``segment``/``gradcam`` when they take many
inputs): image files, folders and glob patterns expanded to a list of files; one distinct output name per
input that keeps its folders; unique COCO image ids; whether to show a progress bar. Standard library only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vislab.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Image files of the command line: files as given, folders as every image file under them (sorted), glob
    patterns as their matches (sorted; ``**`` recursive). :class:`UserError` for a missing path, a pattern that
    matches nothing, a folder without images, or no image at all. A file listed twice is kept once."""
    import glob

    out: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise UserError(f"folder {path} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            out += found
        elif path.exists():
            out.append(path)
        elif glob.has_magic(raw):
            found = sorted(Path(p) for p in glob.glob(raw, recursive=True) if Path(p).is_file())
            if not found:
                raise UserError(f"pattern {raw!r} matches no file")
            out += found
        else:
            raise UserError(f"image {raw!r} not found")
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def output_names(paths: list[Path], suffix: str = "_det.png") -> list[Path]:
    """A distinct relative output path per input: its folder relative to the common folder of all the inputs,
    then ``STEM`` + ``suffix``; ``STEM_2`` + ``suffix``... when names would repeat (``a.jpg`` and ``a.png``)."""
    dirs = [str(p.resolve().parent) for p in paths]
    common = Path(os.path.commonpath(dirs)) if dirs else Path(".")
    names: list[Path] = []
    seen: dict[Path, int] = {}
    for p in paths:
        base = p.resolve().parent.relative_to(common) / p.stem
        k = seen.get(base, 0) + 1
        seen[base] = k
        names.append(base.with_name(base.name + (f"_{k}" if k > 1 else "") + suffix))
    if len(set(names)) != len(names):  # an added index met a real name: number every output
        names = [n.with_name(f"{i}_{n.name}") for i, n in enumerate(names, start=1)]
    return names


def image_ids(paths: list[Path]) -> list[int]:
    """COCO ``image_id`` per input (module docstring): the file name's number or the 1-based position, or every
    position when that would repeat an id."""
    ids = [int(p.stem) if p.stem.isdigit() else k for k, p in enumerate(paths, start=1)]
    return ids if len(set(ids)) == len(ids) else list(range(1, len(paths) + 1))


def progress_enabled() -> bool:
    """A progress bar (on stderr) on a terminal, or with VISLAB_PROGRESS=1; never with VISLAB_PROGRESS=0."""
    flag = os.environ.get("VISLAB_PROGRESS")
    return flag == "1" or (flag != "0" and sys.stderr.isatty())
