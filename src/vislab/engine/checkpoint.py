"""Moved to :mod:`vislab.io.checkpoint` (models and data read checkpoints too, and they do not import the
engine); the names stay importable from here."""

from vislab.io.checkpoint import load_torch_file, model_state, read_checkpoint

__all__ = ["load_torch_file", "model_state", "read_checkpoint"]
