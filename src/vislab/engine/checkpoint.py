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

__all__ = ["model_state", "read_checkpoint"]


def read_checkpoint(path: str | Path, task: str, *, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(checkpoint, meta)`` of a vislab checkpoint of ``task``; ``meta`` is its ``"vislab"`` dict.

    Every failure is one :class:`UserError` line, in the order a user meets them: the file does not exist; it is
    not a readable (weights-only) torch file; it has no vislab facts, or those of another task (``what`` names the
    kind of run expected, e.g. ``"the detection experiment"``).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is bad input here
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot read checkpoint {path}: {first}") from None
    meta = ckpt.get("vislab") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or meta.get("task") != task or "state_dict" not in ckpt:
        found = meta.get("task") if isinstance(meta, dict) else None
        raise UserError(f"{path} is not a checkpoint of {what} (its task is {found!r}, expected {task!r})")
    return ckpt, meta


def model_state(ckpt: dict[str, Any]) -> dict[str, Tensor]:
    """The model's weights of a checkpoint: its ``state_dict`` entries under ``model.``, without the prefix."""
    return {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
