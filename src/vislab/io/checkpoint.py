"""Reading the checkpoints that vislab runs write, for the commands that use them (``vislab gradcam``,
``detect``, ``segment``, ``change``) and for ``init``-style options.

A run's Lightning checkpoint holds the module's ``state_dict`` (the model's weights under ``model.``) and, under
``"vislab"``, the JSON-able facts that rebuild the model without the run folder: its task, the model's name and
arguments, image size, class names... (see :class:`vislab.engine.module.TaskModule`'s ``meta``). Loading is
always ``weights_only=True``: a checkpoint is data, never code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vislab.errors import UserError

__all__ = ["load_torch_file", "model_state", "read_checkpoint"]


def load_torch_file(path: str | Path, *, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with every failure one :class:`UserError` line naming the
    file (``what`` is the word for it: ``"checkpoint"``, ``"vit_weights file"``...):

    * a missing path, a folder, an empty file;
    * a file that is not a PyTorch file, or a truncated or corrupt one;
    * a file that holds more than weights (pickled Python objects): vislab loads data, never code, and does
      not offer to load it otherwise.

    The ``OSError`` family (a permission denied...) is left to the CLI's one line that names the path.
    """
    import pickle
    import warnings
    import zipfile

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file (give the .ckpt/.pt file inside it)")
    if not path.exists():
        raise UserError(f"{what} {path} does not exist")
    if path.stat().st_size == 0:
        raise UserError(f"{what} {path} is empty (0 bytes): not a valid vislab/PyTorch weights file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the unpickler's protocol notes: the outcome is what matters here
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            why = ("it holds pickled Python objects besides tensors and plain containers, and vislab loads only "
                   "weights from files")
        else:
            why = "its contents do not unpickle"
        raise UserError(f"{what} {path} is not a valid vislab/PyTorch weights file: {why}") from None
    except Exception as exc:  # noqa: BLE001 - torch.load answers corrupt bytes with many exception types
        with open(path, "rb") as f:
            zip_magic = f.read(2) == b"PK"  # torch.save's zip format, whose end is missing when truncated
        truncated = zip_magic and not zipfile.is_zipfile(path)
        text = str(exc).lower()
        if truncated or "central directory" in text or "zip archive" in text or isinstance(exc, EOFError):
            why = "it is truncated or corrupt"
        else:
            why = "it is not a file written by torch.save"
        raise UserError(f"{what} {path} is not a valid vislab/PyTorch weights file: {why}") from None


def read_checkpoint(path: str | Path, task: str, *, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(checkpoint, meta)`` of a vislab checkpoint of ``task``; ``meta`` is its ``"vislab"`` dict.

    Every failure is one :class:`UserError` line, in the order a user meets them: the path does not exist or is
    a folder; it is not a valid (weights-only) torch file (:func:`load_torch_file`); it has no vislab facts, or
    those of another task (``what`` names the kind of run expected, e.g. ``"the detection experiment"``).
    """
    path = Path(path)
    ckpt = load_torch_file(path, what="checkpoint")
    meta = ckpt.get("vislab") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or meta.get("task") != task or "state_dict" not in ckpt:
        found = meta.get("task") if isinstance(meta, dict) else None
        raise UserError(f"{path} is not a checkpoint of {what} (its task is {found!r}, expected {task!r})")
    return ckpt, meta


def model_state(ckpt: dict[str, Any]) -> dict[str, Tensor]:
    """The model's weights of a checkpoint: its ``state_dict`` entries under ``model.``, without the prefix."""
    return {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
