"""Split helpers: seeded stratified train/val/test with limits, the held-out validation part of a training split,
and the in-memory image sets (the shapes with their boxes; CIFAR-10's pickle batches)."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest
import torch

from vislab.data.splits import NormalizedImages, cifar10_in_memory, holdout_split, limited_split, shapes_in_memory


def test_limited_split_is_seeded_disjoint_and_keeps_class_proportions():
    labels = [0] * 40 + [1] * 20
    a = limited_split(labels, seed=3, limits={"train": 24, "test": None})
    assert a == limited_split(labels, seed=3, limits={"train": 24, "test": None})
    assert a != limited_split(labels, seed=4, limits={"train": 24, "test": None})
    assert not set(a["train"]) & set(a["val"]) and not set(a["val"]) & set(a["test"])
    n = Counter(labels[i] for i in a["train"])
    assert len(a["train"]) <= 24 and abs(n[0] - 2 * n[1]) <= 2  # limit_indices: at most the limit, ~proportions
    assert len(a["val"]) == 6 and len(a["test"]) == 6
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        limited_split(labels, seed=0, limits={"dev": 3})


def test_holdout_split_holds_out_a_fraction_per_class():
    labels = [0] * 50 + [1] * 30
    train, val = holdout_split(labels, 0.2, seed=0)
    assert sorted(train + val) == list(range(80)) and train == sorted(train) and val == sorted(val)
    assert Counter(labels[i] for i in val) == {0: 10, 1: 6}
    train, val = holdout_split(labels, 0.2, seed=0, limit_train=32, limit_val=8)
    assert len(train) <= 32 and len(val) <= 8 and set(train) | set(val) < set(range(80))
    with pytest.raises(ValueError, match=r"val_fraction must lie in \(0, 1\), got 1.0"):
        holdout_split(labels, 1.0, seed=0)


def test_shapes_in_memory_images_labels_and_scaled_boxes(tmp_path):
    sp = shapes_in_memory(per_class=10, size=16, seed=0, cache_dir=tmp_path, limits={"test": 5})
    assert sp.name == "embedded-shapes" and sp.classes == ["circle", "cross", "square", "star", "triangle"]
    assert sp.sizes() == {"train": 40, "val": 5, "test": 5}
    assert sp.images["train"].shape == (40, 3, 16, 16) and sp.images["train"].dtype == torch.uint8
    assert all(b is not None and 0 <= b[0] < b[2] <= 16 and 0 <= b[1] < b[3] <= 16 for b in sp.boxes["test"])
    ds = NormalizedImages(sp.images["test"], sp.labels["test"], (0.5,) * 3, (0.25,) * 3)
    x, y = ds[2]
    assert torch.allclose(x, (sp.images["test"][2].float() / 255 - 0.5) / 0.25) and y == int(sp.labels["test"][2])
    assert torch.equal(ds.all()[2], x)


def test_cifar10_in_memory_from_pickle_batches(tmp_path):
    path = Path(__file__).parent / "test_cifar.py"
    spec = importlib.util.spec_from_file_location("_splits_cifar_helpers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.make_mini_cifar(tmp_path / "c", per_batch=20)
    sp = cifar10_in_memory(tmp_path / "c", val_fraction=0.2, seed=0, image_size=16)
    assert sp.sizes() == {"train": 80, "val": 20, "test": 20} and len(sp.classes) == 10
    assert sp.images["val"].shape == (20, 3, 16, 16) and sp.boxes["test"] == [None] * 20
    assert Counter(sp.labels["val"].tolist()) == {c: 2 for c in range(10)}
    with pytest.raises(FileNotFoundError, match="CIFAR-10 train data not found"):
        cifar10_in_memory(tmp_path / "none", val_fraction=0.1, seed=0)
