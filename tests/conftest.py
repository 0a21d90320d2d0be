import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("VISLAB_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py


@pytest.fixture(autouse=True, scope="session")
def _vislab_cache(tmp_path_factory):
    """Generated datasets go to a per-session cache, never to the user's ~/.cache."""
    os.environ["VISLAB_CACHE"] = str(tmp_path_factory.mktemp("vislab-cache"))
    yield
