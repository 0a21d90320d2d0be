"""ap50_resampler: on the identity resample it is pycocotools' AP50; on resamples with repeated images it is
pycocotools' AP50 of the resampled list; fast enough for a 1000-sample bootstrap."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from vislab.metrics.detection import coco_map
from vislab.metrics.detection_resample import ap50_resampler


def _boxes(rng: np.random.Generator, k: int) -> torch.Tensor:
    xy = rng.uniform(0, 80, (k, 2))
    return torch.tensor(np.concatenate([xy, xy + rng.uniform(5, 40, (k, 2))], 1), dtype=torch.float32)


def _scene(seed: int, n: int = 40) -> tuple[list[dict], list[dict]]:
    """Random ground truth (some crowd boxes, some empty images) and jittered + spurious detections with distinct
    scores (no ties, whose order pycocotools leaves to the list order)."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(n):
        g = int(rng.integers(0, 5))
        gb = _boxes(rng, g)
        targets.append({"boxes": gb, "labels": torch.tensor(rng.integers(1, 4, g)),
                        "iscrowd": torch.tensor(rng.random(g) < 0.15, dtype=torch.int64)})
        pb = torch.cat([gb + torch.tensor(rng.normal(0, 4, gb.shape), dtype=torch.float32),
                        _boxes(rng, int(rng.integers(0, 6)))])
        pb = torch.stack([pb[:, 0], pb[:, 1], torch.maximum(pb[:, 2], pb[:, 0]), torch.maximum(pb[:, 3], pb[:, 1])], 1)
        preds.append({"boxes": pb, "labels": torch.tensor(rng.integers(1, 5, len(pb))),
                      "scores": torch.tensor(rng.random(len(pb)), dtype=torch.float64)})
    return preds, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pycocotools_on_the_identity_and_on_resamples(seed):
    preds, targets = _scene(seed)
    fn = ap50_resampler(preds, targets)
    n = len(targets)
    assert fn(np.arange(n)) == pytest.approx(coco_map(preds, targets)["map50"], abs=1e-12)
    rng = np.random.default_rng(100 + seed)
    for _ in range(3):
        idx = rng.integers(0, n, n)  # with repeats: an image drawn twice counts twice
        ref = coco_map([preds[i] for i in idx], [targets[i] for i in idx])["map50"]
        assert fn(idx) == pytest.approx(ref, abs=1e-12)


def test_classes_without_ground_truth_and_empty_cases():
    preds, targets = _scene(3, n=10)
    fn = ap50_resampler(preds, targets)
    empty = [i for i, t in enumerate(targets) if len(t["labels"]) == 0]
    if empty:  # only images without boxes: no class has ground truth
        assert fn(np.array(empty[:1] * 3)) == -1.0
    no_gt = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)} for _ in targets]
    assert ap50_resampler(preds, no_gt)(np.arange(10)) == -1.0
    no_dt = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
             for _ in preds]
    assert ap50_resampler(no_dt, targets)(np.arange(10)) == coco_map(no_dt, targets)["map50"] == 0.0
    with pytest.raises(ValueError, match="one entry per image"):
        ap50_resampler(preds[:3], targets)


def test_fast_enough_for_a_bootstrap():
    preds, targets = _scene(4, n=128)
    fn = ap50_resampler(preds, targets)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(200):
        fn(rng.integers(0, 128, 128))
    assert (time.perf_counter() - t0) / 200 < 0.02  # measured ~0.2 ms (loaded 2-core machine); COCOeval ~50 ms
