"""TripletDataset and BalancedBatchSampler: validity, determinism, coverage, and use with the loss."""

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from vislab.data.triplets import BalancedBatchSampler, TripletDataset
from vislab.losses.triplet import batch_triplet_loss


def _toy(n_per_class=(5, 3, 4)):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    # image i is a 1x2x2 tensor filled with i, so items can be traced back to their index
    images = torch.arange(len(labels), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    return TensorDataset(images, labels), labels


# ------------------------------------------------------------------------------------ TripletDataset


def test_triplets_are_valid_and_items_come_from_the_base_dataset():
    base, labels = _toy()
    ds = TripletDataset(base, labels, seed=0)
    assert len(ds) == len(base)
    for epoch in range(5):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            a, p, n = ds.triplet_indices(i)
            assert a == i and p != i
            assert labels[p] == labels[i] and labels[n] != labels[i]
            anchor, positive, negative, y = ds[i]
            assert anchor[0, 0, 0] == a and positive[0, 0, 0] == p and negative[0, 0, 0] == n
            assert y.tolist() == [labels[a], labels[p], labels[n]] and y.dtype == torch.int64


def test_triplets_are_deterministic_per_seed_and_epoch():
    base, labels = _toy()
    draw = lambda ds: [ds.triplet_indices(i) for i in range(len(ds))]
    a, b = TripletDataset(base, labels, seed=1), TripletDataset(base, labels, seed=1)
    assert draw(a) == draw(b)
    first = draw(a)
    a.set_epoch(1)
    assert draw(a) != first
    a.set_epoch(0)
    assert draw(a) == first
    assert draw(TripletDataset(base, labels, seed=2)) != first


def test_positives_and_negatives_cover_their_candidates_uniformly():
    base, labels = _toy((5, 3, 4))
    ds = TripletDataset(base, labels, seed=0)
    pos, neg = Counter(), Counter()
    for epoch in range(2000):
        ds.set_epoch(epoch)
        _, p, n = ds.triplet_indices(0)  # anchor 0, class 0: positives 1..4, negatives 5..11
        pos[p] += 1
        neg[n] += 1
    assert set(pos) == {1, 2, 3, 4} and set(neg) == set(range(5, 12))
    assert max(pos.values()) - min(pos.values()) < 0.25 * 2000 / 4  # ~500 each
    assert max(neg.values()) - min(neg.values()) < 0.35 * 2000 / 7  # ~286 each


def test_triplet_batches_collate_and_give_the_explicit_loss():
    base, labels = _toy()
    ds = TripletDataset(base, labels, seed=0)
    a, p, n, y = next(iter(DataLoader(ds, batch_size=6)))
    assert a.shape == p.shape == n.shape == (6, 1, 2, 2) and y.shape == (6, 3)
    assert torch.equal(y[:, 0], y[:, 1]) and (y[:, 0] != y[:, 2]).all()


def test_triplet_dataset_errors():
    base, labels = _toy()
    with pytest.raises(ValueError, match="labels has 11 entries but base_dataset has 12 items"):
        TripletDataset(base, labels[:11])
    with pytest.raises(ValueError, match=r"needs two classes, got labels with classes \[0\]"):
        TripletDataset(base, torch.zeros(12, dtype=torch.int64))
    one = labels.clone()
    one[0] = 7
    with pytest.raises(ValueError, match=r"at least 2 samples for a positive; classes \[7\] have 1"):
        TripletDataset(base, one)
    with pytest.raises(TypeError, match="labels must be integers, got dtype float32"):
        TripletDataset(base, labels.float())
    with pytest.raises(IndexError, match="index 12 out of range for a dataset of 12 items"):
        TripletDataset(base, labels).triplet_indices(12)


# ------------------------------------------------------------------------------- BalancedBatchSampler


def test_batches_hold_p_classes_times_k_distinct_samples():
    labels = torch.tensor([0] * 20 + [1] * 9 + [2] * 30 + [3] * 6)
    sampler = BalancedBatchSampler(labels, classes_per_batch=3, samples_per_class=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 65 // 12
    for batch in batches:
        assert len(batch) == 12 and len(set(batch)) == 12
        blocks = [labels[batch[k:k + 4]] for k in range(0, 12, 4)]
        assert all((blk == blk[0]).all() for blk in blocks)  # K of one class per block
        assert len({int(blk[0]) for blk in blocks}) == 3  # P different classes


def test_binary_sampler_uses_each_sample_once_before_repeating():
    labels = np.array([0] * 16 + [1] * 16)
    sampler = BalancedBatchSampler(labels, classes_per_batch=2, samples_per_class=4, seed=3)
    seen = [i for batch in sampler for i in batch]
    assert len(sampler) == 4 and sorted(seen) == list(range(32))  # one exact pass


def test_sampler_is_deterministic_per_seed_and_epoch():
    labels = np.arange(40) % 4
    make = lambda seed: BalancedBatchSampler(labels, classes_per_batch=2, samples_per_class=3, seed=seed)
    s1, s2 = make(0), make(0)
    assert list(s1) == list(s2)
    first = list(s1)
    s1.set_epoch(1)
    assert list(s1) != first
    s1.set_epoch(0)
    assert list(s1) == first
    assert list(make(1)) != first


def test_replicas_split_the_global_sequence():
    labels = np.arange(60) % 3
    kw = dict(classes_per_batch=3, samples_per_class=2, seed=5, num_batches=9)
    whole = list(BalancedBatchSampler(labels, **kw))
    parts = [list(BalancedBatchSampler(labels, **kw, num_replicas=2, rank=r)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 4  # 9 // 2, the odd batch dropped so ranks stay in step
    assert parts[0] == whole[0:8:2] and parts[1] == whole[1:8:2]


def test_sampler_feeds_online_mining():
    labels = torch.arange(48) % 2
    emb = torch.randn(48, 5, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(emb, labels),
                        batch_sampler=BalancedBatchSampler(labels, classes_per_batch=2, samples_per_class=6))
    for x, y in loader:
        assert torch.bincount(y).tolist() == [6, 6]
        _, stats = batch_triplet_loss(x, y, mining="batch_hard")
        assert stats["num_triplets"] == 12  # every anchor has a positive and a negative


def test_sampler_errors():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    with pytest.raises(ValueError, match=r"samples_per_class = 3 but some classes have fewer.*\{1: 2\}"):
        BalancedBatchSampler(labels, classes_per_batch=2, samples_per_class=3)
    with pytest.raises(ValueError, match=r"classes_per_batch = 4 but the labels hold only 3 classes \[0, 1"):
        BalancedBatchSampler(labels, classes_per_batch=4, samples_per_class=2)
    with pytest.raises(ValueError, match="classes_per_batch must be an int >= 2, got 1"):
        BalancedBatchSampler(labels, classes_per_batch=1, samples_per_class=2)
    with pytest.raises(ValueError, match="samples_per_class must be an int >= 2, got 1"):
        BalancedBatchSampler(labels, classes_per_batch=2, samples_per_class=1)
    with pytest.raises(ValueError, match="rank must be < num_replicas = 2, got 2"):
        BalancedBatchSampler(labels, classes_per_batch=2, samples_per_class=2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_batches = 1 is fewer than num_replicas = 2"):
        BalancedBatchSampler(labels, classes_per_batch=2, samples_per_class=2, num_batches=1, num_replicas=2)
    with pytest.raises(ValueError, match=r"labels must be one-dimensional \[N\], got shape \(2, 4\)"):
        BalancedBatchSampler(labels.reshape(2, 4), classes_per_batch=2, samples_per_class=2)
