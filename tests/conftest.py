import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("VISLAB_PROGRESS", "0")
# CI has 2 cores and runs 2 xdist workers: one intra-op thread per process (also for CLI subprocesses)
# avoids oversubscription, which slows small torch ops down by orders of magnitude.
os.environ["OMP_NUM_THREADS"] = "1"
sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py

import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _vislab_cache(tmp_path_factory):
    """Generated datasets go to a per-session cache, never to the user's ~/.cache."""
    os.environ["VISLAB_CACHE"] = str(tmp_path_factory.mktemp("vislab-cache"))
    yield
