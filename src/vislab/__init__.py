"""vislab: the classic deep-learning vision curriculum as a library plus one-command experiments.

``vislab.run(name, *, data=None, root=None, seeds=1, out=None, **config) -> RunResult`` runs an experiment from
Python; ``vislab.load_run(path) -> RunResult`` reads a run folder back. Both load torch only when called.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_run", "run"]


def run(name: str, **kwargs: Any) -> Any:
    """Run a registered experiment (see :func:`vislab.protocol.runner.run`)."""
    from vislab.protocol.runner import run as _run

    return _run(name, **kwargs)


def load_run(path: Any) -> Any:
    """Read a run folder back as a :class:`vislab.protocol.results.RunResult`."""
    from vislab.protocol.results import load_run as _load

    return _load(path)
