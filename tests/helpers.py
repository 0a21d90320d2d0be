"""Shared test helpers: run the CLI in a subprocess, make small image folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "VISLAB_PROGRESS": "0", **(env or {})}
    full_env.pop("VISLAB_RUN_DIR", None)
    return subprocess.run([sys.executable, "-m", "vislab", *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout)


def photo_folder(root: Path, per_class: int = 8, size: int = 80, seed: int = 0) -> Path:
    """Real photographs (scikit-image's cat, coffee cup and rocket) as classes, each image a random
    crop with flip and brightness change: a folder that none of vislab's generators produced."""
    from skimage import data

    rng = np.random.default_rng(seed)
    sources = {"cat": data.chelsea(), "coffee": data.coffee(), "rocket": data.rocket()}
    for name, img in sources.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        h, w = img.shape[:2]
        for i in range(per_class):
            s = int(rng.uniform(0.55, 0.9) * min(h, w))
            y0, x0 = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
            crop = img[y0:y0 + s, x0:x0 + s]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            crop = np.clip(crop * rng.uniform(0.7, 1.2), 0, 255).astype(np.uint8)
            Image.fromarray(crop).resize((size, size)).save(root / name / f"{name}_{i}.jpg", quality=90)
    return root
