"""Triplet loss and miners against torch.nn.TripletMarginLoss and pytorch-metric-learning."""

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances, losses, miners, reducers

from vislab.losses.triplet import (
    TripletLoss,
    batch_triplet_loss,
    mine_all,
    mine_batch_hard,
    mine_semi_hard,
    pairwise_distances,
    triplet_margin_loss,
)


def _batch(seed: int, *, batch: int = 24, dim: int = 8, classes: int = 4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch, dim, generator=g, dtype=dtype)
    labels = torch.randint(0, classes, (batch,), generator=g)
    return emb, labels


def _as_set(triplets) -> set[tuple[int, int, int]]:
    a, p, n = triplets
    assert a.dtype == p.dtype == n.dtype == torch.int64
    return set(zip(a.tolist(), p.tolist(), n.tolist()))


def _pml_distance(squared: bool):
    return distances.LpDistance(normalize_embeddings=True, p=2, power=2 if squared else 1)


# ------------------------------------------------------------------------------------ distances


@pytest.mark.parametrize("squared", [False, True])
def test_pairwise_distances_match_a_direct_float64_reference(squared):
    emb, _ = _batch(0, batch=10, dim=5)
    diff = emb[:, None, :] - emb[None, :, :]  # (B, B, D)
    ref = diff.pow(2).sum(-1)
    ref = ref if squared else ref.sqrt()
    out = pairwise_distances(emb, squared=squared)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert torch.equal(out.diagonal(), torch.zeros(10, dtype=emb.dtype))
    torch.testing.assert_close(pairwise_distances(emb.float()), torch.cdist(emb.float(), emb.float()),
                               rtol=1e-4, atol=1e-4)


def test_pairwise_distances_gradient_is_finite_at_zero_distance():
    emb = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, -1.0]], requires_grad=True)
    d = pairwise_distances(emb)
    assert d[0, 1] == 0
    d.sum().backward()
    assert torch.isfinite(emb.grad).all()
    # away from the zero pairs the gradient is the usual unit vector: d/dx0 of 2*(|x0-x2|) ...
    x = emb.detach()
    expected0 = 2 * (x[0] - x[2]) / (x[0] - x[2]).norm()
    torch.testing.assert_close(emb.grad[0], expected0)


def test_pairwise_distances_gradcheck_float64():
    emb, _ = _batch(1, batch=6, dim=4)
    emb.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: pairwise_distances(e), (emb,))
    assert torch.autograd.gradcheck(lambda e: pairwise_distances(e, squared=True), (emb,))


# ------------------------------------------------------------------------------ explicit triplets


@pytest.mark.parametrize("margin", [0.05, 0.2, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_explicit_triplets_match_torch_triplet_margin_loss(margin, reduction):
    g = torch.Generator().manual_seed(3)
    a, p, n = (torch.randn(32, 16, generator=g) for _ in range(3))
    ref = torch.nn.TripletMarginLoss(margin=margin, p=2, reduction=reduction)(a, p, n)
    out = triplet_margin_loss(a, p, n, margin=margin, reduction=reduction)
    # torch adds eps=1e-6 to the difference before the norm; the gap is <= eps * sqrt(D) per distance
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 * (32 if reduction == "sum" else 1))
    exact = torch.nn.TripletMarginLoss(margin=margin, p=2, eps=0.0, reduction=reduction)
    args64 = [t.double() for t in (a, p, n)]
    out64 = triplet_margin_loss(*args64, margin=margin, reduction=reduction)
    torch.testing.assert_close(out64, exact(*args64))


def test_explicit_triplets_hand_computed_squared_and_mean_active():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    p = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    n = torch.tensor([[0.0, 2.0], [0.0, 1.0]])
    # plain: d_ap = (1, 3), d_an = (2, 1): losses relu(1 - 2 + 0.5) = 0, relu(3 - 1 + 0.5) = 2.5
    torch.testing.assert_close(triplet_margin_loss(a, p, n, margin=0.5, reduction="none"),
                               torch.tensor([0.0, 2.5]))
    torch.testing.assert_close(triplet_margin_loss(a, p, n, margin=0.5), torch.tensor(1.25))
    torch.testing.assert_close(triplet_margin_loss(a, p, n, margin=0.5, reduction="mean_active"),
                               torch.tensor(2.5))
    # squared: d_ap = (1, 9), d_an = (4, 1): relu(1 - 4 + 0.5) = 0, relu(9 - 1 + 0.5) = 8.5
    torch.testing.assert_close(triplet_margin_loss(a, p, n, margin=0.5, squared=True, reduction="sum"),
                               torch.tensor(8.5))
    # margin 0 is allowed here (torch's class refuses it): relu(d_ap - d_an) = (0, 2)
    torch.testing.assert_close(triplet_margin_loss(a, p, n, margin=0, reduction="none"),
                               torch.tensor([0.0, 2.0]))


def test_explicit_triplets_gradients_match_torch():
    g = torch.Generator().manual_seed(4)
    inputs = [torch.randn(16, 8, generator=g, dtype=torch.float64) for _ in range(3)]
    ours = [t.clone().requires_grad_(True) for t in inputs]
    ref = [t.clone().requires_grad_(True) for t in inputs]
    triplet_margin_loss(*ours, margin=1.0).backward()
    torch.nn.TripletMarginLoss(margin=1.0, p=2, eps=0.0)(*ref).backward()
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o.grad, r.grad)


# ----------------------------------------------------------------------------------------- miners


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("squared", [False, True])
def test_batch_hard_mines_the_same_triplets_as_pml(seed, squared):
    emb, labels = _batch(seed)
    ours = mine_batch_hard(F.normalize(emb, dim=1), labels, squared=squared)
    ref = miners.BatchHardMiner(distance=_pml_distance(squared))(emb, labels)
    assert _as_set(ours) == _as_set(ref)
    assert len(ours[0]) > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("squared", "margin"), [(False, 0.2), (False, 0.5), (True, 0.4)])
def test_semi_hard_mines_the_same_triplets_as_pml(seed, squared, margin):
    emb, labels = _batch(seed)
    ours = mine_semi_hard(F.normalize(emb, dim=1), labels, margin=margin, squared=squared)
    ref = miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard",
                                    distance=_pml_distance(squared))(emb, labels)
    assert _as_set(ours) == _as_set(ref)
    assert len(ours[0]) > 0


def test_mine_all_matches_brute_force():
    emb, labels = _batch(5, batch=9, classes=3)
    expected = {(a, p, n) for a in range(9) for p in range(9) for n in range(9)
                if a != p and labels[a] == labels[p] and labels[n] != labels[a]}
    assert _as_set(mine_all(emb, labels)) == expected


def test_batch_hard_hand_example():
    # 1-D points: class 0 at 0, 1, 3; class 1 at 4, 10
    emb = torch.tensor([[0.0], [1.0], [3.0], [4.0], [10.0]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    a, p, n = mine_batch_hard(emb, labels)
    assert a.tolist() == [0, 1, 2, 3, 4]
    assert p.tolist() == [2, 2, 0, 4, 3]  # farthest same-class point
    assert n.tolist() == [3, 3, 3, 2, 2]  # closest other-class point


# ------------------------------------------------------------------------------- batch loss vs pml


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard", "all"])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize(("reduction", "reducer"), [("mean", reducers.MeanReducer),
                                                    ("mean_active", reducers.AvgNonZeroReducer)])
def test_batch_loss_matches_pml(mining, squared, reduction, reducer):
    margin = 0.3
    for seed in range(3):
        emb, labels = _batch(seed)
        dist = _pml_distance(squared)
        if mining == "batch_hard":
            miner = miners.BatchHardMiner(distance=dist)
        elif mining == "semi_hard":
            miner = miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=dist)
        else:
            miner = None
        ref_loss_fn = losses.TripletMarginLoss(margin=margin, distance=dist, reducer=reducer())
        ref = ref_loss_fn(emb, labels, miner(emb, labels) if miner else None)
        loss, stats = batch_triplet_loss(emb, labels, margin=margin, mining=mining, squared=squared,
                                         reduction=reduction)
        torch.testing.assert_close(loss, ref.to(loss.dtype), rtol=1e-6, atol=1e-9)
        assert stats["num_triplets"] > 0


def test_batch_loss_gradients_match_pml_and_pass_gradcheck():
    emb, labels = _batch(7)
    ours = emb.clone().requires_grad_(True)
    ref = emb.clone().requires_grad_(True)
    batch_triplet_loss(ours, labels, margin=0.3, mining="batch_hard")[0].backward()
    dist = _pml_distance(False)
    losses.TripletMarginLoss(margin=0.3, distance=dist, reducer=reducers.MeanReducer())(
        ref, labels, miners.BatchHardMiner(distance=dist)(ref, labels)
    ).backward()
    torch.testing.assert_close(ours.grad, ref.grad)
    small, small_labels = _batch(8, batch=8, dim=3, classes=2)
    small.requires_grad_(True)
    for mining in ("batch_hard", "all"):
        assert torch.autograd.gradcheck(
            lambda e, m=mining: batch_triplet_loss(e, small_labels, margin=1.0, mining=m)[0], (small,)
        )


def test_stats_hand_example():
    # unnormalised 1-D points so distances are easy: class 0 at 0 and 1, class 1 at 1.5 and 5
    emb = torch.tensor([[0.0], [1.0], [1.5], [5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    loss, stats = batch_triplet_loss(emb, labels, margin=1.0, mining="batch_hard", normalize=False)
    # anchors: 0: p=1 (d 1), n=2 (d 1.5) -> 0.5; 1: p=0 (1), n=2 (0.5) -> 1.5;
    #          2: p=3 (3.5), n=1 (0.5) -> 4.0; 3: p=2 (3.5), n=1 (4) -> 0.5
    torch.testing.assert_close(loss, torch.tensor((0.5 + 1.5 + 4.0 + 0.5) / 4))
    assert stats["num_triplets"].item() == 4
    torch.testing.assert_close(stats["active_fraction"], torch.tensor(1.0))
    torch.testing.assert_close(stats["pos_distance"], torch.tensor((1 + 1 + 3.5 + 3.5) / 4))
    torch.testing.assert_close(stats["neg_distance"], torch.tensor((1.5 + 0.5 + 0.5 + 4) / 4))
    # all 8 valid triplets; violating (d_an < d_ap + 1): a0: (p1,n2) 1.5<2 yes, (p1,n3) 5<2 no;
    # a1: (p0,n2) yes, (p0,n3) 4<2 no; a2: (p3,n0) 1.5<4.5 yes, (p3,n1) yes; a3: (p2,n0) 5<4.5 no, (p2,n1) yes
    torch.testing.assert_close(stats["active_fraction_all"], torch.tensor(5 / 8))


def test_active_fraction_all_matches_brute_force():
    emb, labels = _batch(9, batch=20, classes=3)
    margin = 0.4
    _, stats = batch_triplet_loss(emb, labels, margin=margin, mining="batch_hard")
    _, all_stats = batch_triplet_loss(emb, labels, margin=margin, mining="all")
    # with mining="all" the mined set is every valid triplet, so the two fractions must agree
    torch.testing.assert_close(stats["active_fraction_all"], all_stats["active_fraction"])
    torch.testing.assert_close(all_stats["active_fraction_all"], all_stats["active_fraction"])


# ----------------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard", "all"])
@pytest.mark.parametrize("labels", [torch.zeros(6, dtype=torch.int64), torch.arange(6)],
                         ids=["one-class", "singletons"])
def test_no_valid_triplets_gives_zero_loss_and_finite_gradients(mining, labels):
    emb = torch.randn(6, 4, requires_grad=True)
    loss, stats = batch_triplet_loss(emb, labels, mining=mining)
    assert loss.item() == 0.0
    assert stats["num_triplets"].item() == 0
    assert all(torch.isfinite(v).all() for v in stats.values())
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_duplicate_embeddings_give_finite_gradients():
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    for squared in (False, True):
        for mining in ("batch_hard", "semi_hard", "all"):
            loss, _ = batch_triplet_loss(emb, labels, mining=mining, squared=squared)
            (grad,) = torch.autograd.grad(loss, emb)
            assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_low_precision_and_autocast_input_is_computed_in_float32():
    emb, labels = _batch(12, dtype=torch.float32)
    ref, _ = batch_triplet_loss(emb.bfloat16().float(), labels)
    loss, _ = batch_triplet_loss(emb.bfloat16(), labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_autocast, stats = batch_triplet_loss(emb, labels)
    full, full_stats = batch_triplet_loss(emb, labels)
    assert loss_autocast.dtype == torch.float32
    torch.testing.assert_close(loss_autocast, full)
    torch.testing.assert_close(stats["pos_distance"], full_stats["pos_distance"])


def test_module_equals_function_and_repr():
    emb, labels = _batch(11)
    module = TripletLoss(margin=0.3, mining="semi_hard", squared=True)
    loss, stats = module(emb, labels)
    ref, ref_stats = batch_triplet_loss(emb, labels, margin=0.3, mining="semi_hard", squared=True)
    torch.testing.assert_close(loss, ref)
    assert stats.keys() == ref_stats.keys() == {"num_triplets", "active_fraction", "active_fraction_all",
                                                "pos_distance", "neg_distance"}
    assert "mining='semi_hard'" in repr(module)


# ------------------------------------------------------------------------------------- validation


def test_bad_inputs_raise_precise_errors():
    emb, labels = _batch(0, batch=4)
    with pytest.raises(ValueError, match=r"emb must have shape \[B, D\].*got shape \(4, 8, 1\)"):
        batch_triplet_loss(emb[..., None], labels)
    with pytest.raises(ValueError, match=r"labels must have shape \[B\] = \[4\].*got shape \(3,\)"):
        batch_triplet_loss(emb, labels[:3])
    with pytest.raises(TypeError, match="labels must be an integer.*got dtype torch.float32"):
        batch_triplet_loss(emb, labels.float())
    with pytest.raises(TypeError, match="emb must be a floating-point tensor, got dtype torch.int64"):
        batch_triplet_loss(labels[:, None], labels)
    with pytest.raises(TypeError, match="emb must be a torch.Tensor.*got list"):
        pairwise_distances([[1.0]])
    with pytest.raises(ValueError, match="mining must be one of 'batch_hard', 'semi_hard', 'all', got 'hard"):
        batch_triplet_loss(emb, labels, mining="hard")
    with pytest.raises(ValueError, match="reduction must be one of .* got 'max'"):
        TripletLoss(reduction="max")
    with pytest.raises(ValueError, match="margin must be >= 0, got -0.1"):
        TripletLoss(margin=-0.1)
    with pytest.raises(TypeError, match="margin must be a real number >= 0, got str"):
        mine_semi_hard(emb, labels, margin="0.2")
    with pytest.raises(ValueError, match=r"same shape \[B, D\], got \(4, 8\), \(4, 8\) and \(3, 8\)"):
        triplet_margin_loss(emb, emb, emb[:3])
    with pytest.raises(ValueError, match=r"distances must have shape \[B, B\] = \[4, 4\], got \(3, 3\)"):
        mine_batch_hard(emb, labels, distances=torch.zeros(3, 3))
