"""Generated datasets on disk: built once in a temporary sibling, published by one rename, reused while their
stamp (the generator's version and arguments) matches.

A killed generation never leaves half a folder under the final name, and a folder written by another version or
with other arguments is rebuilt rather than reused.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vislab.io.files import atomic_write_text

STAMP = ".complete.json"


def is_complete(root: Path, stamp: dict[str, Any]) -> bool:
    """Whether ``root`` holds a finished generation with exactly this ``stamp``."""
    done = root / STAMP
    try:
        return done.exists() and json.loads(done.read_text()) == stamp
    except (OSError, ValueError):
        return False


@contextmanager
def building(root: Path, stamp: dict[str, Any]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``root`` to write into; on a clean exit write ``stamp`` and
    replace ``root`` with it in one rename, on an error remove it and re-raise."""
    tmp = root.with_name(root.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        atomic_write_text(tmp / STAMP, json.dumps(stamp))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if root.exists():
        shutil.rmtree(root)
    os.replace(tmp, root)


def default_cache_dir() -> Path:
    """Where generated datasets live: ``$VISLAB_CACHE`` or ``~/.cache/vislab``."""
    return Path(os.environ.get("VISLAB_CACHE", Path.home() / ".cache" / "vislab"))
