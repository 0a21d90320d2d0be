"""Attention maps, rollout (Abnar & Zuidema 2020) on hand-made attention, per-image discarding, head
fusions, overlays, the attention pointing game and the positional-embedding similarity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vislab.explain.attention import (
    attention_maps,
    attention_overlay,
    attention_pointing_game,
    attention_rollout,
    position_embedding_similarity,
    rollout_matrix,
    to_grid,
)
from vislab.explain.gradcam import pointing_game


def _random_attention(b: int, heads: int, t: int, layers: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, heads, t, t, generator=g, dtype=torch.float64).mul(2).softmax(-1) for _ in range(layers)]


def _rollout_by_hand(attentions, fusion="mean", discard=0.0):
    """The recipe, image by image, entry by entry in NumPy (no batching, no vectorised tricks)."""
    out = []
    b, _, t, _ = attentions[0].shape
    for i in range(b):
        r = np.eye(t)
        for a in attentions:
            a = a[i].numpy()  # (heads, t, t)
            fused = {"mean": a.mean(0), "max": a.max(0), "min": a.min(0)}[fusion].copy()
            k = int(t * t * discard)
            if k:
                order = sorted((fused[p // t, p % t], p) for p in range(1, t * t))  # never (0, 0)
                for _, p in order[:k]:
                    fused[p // t, p % t] = 0.0
            ah = 0.5 * fused + 0.5 * np.eye(t)
            for row in range(t):
                ah[row] /= ah[row].sum()
            r = ah @ r
        out.append(r[0, 1:])
    return torch.tensor(np.stack(out))


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard", [0.0, 0.3, 0.9])
def test_rollout_equals_the_recipe_by_hand(fusion, discard):
    att = _random_attention(3, 4, 5, layers=3, seed=int(discard * 10))
    torch.testing.assert_close(attention_rollout(att, fusion, discard), _rollout_by_hand(att, fusion, discard))


def test_rollout_two_tokens_worked_example():
    """One layer, one head, T = 2: A = [[0.6, 0.4], [0.2, 0.8]] → 0.5·A + 0.5·I = [[0.8, 0.2], [0.1, 0.9]]
    (rows already sum to 1); two identical layers multiply: row 0 of Â² = [0.66, 0.34]."""
    a = torch.tensor([[[[0.6, 0.4], [0.2, 0.8]]]])
    torch.testing.assert_close(attention_rollout([a]), torch.tensor([[0.2]]))
    torch.testing.assert_close(attention_rollout([a, a]), torch.tensor([[0.34]]))
    # identity attention (every token attends to itself): no patch reaches the class token
    eye = torch.eye(4).expand(2, 3, 4, 4)
    assert attention_rollout([eye, eye]).abs().max() == 0


def test_rollout_rows_are_stochastic_with_max_fusion_and_discard():
    """vit-explain divides by ``a.sum(dim=-1)`` without keepdim: that scales columns, and rows no longer sum to
    1 once they did not before (max fusion, discarding). Ours renormalises rows."""
    att = _random_attention(2, 3, 6, layers=4, seed=1)
    for fusion, discard in (("max", 0.0), ("mean", 0.5), ("min", 0.2)):
        r = rollout_matrix(att, fusion, discard)
        torch.testing.assert_close(r.sum(-1), torch.ones(2, 6, dtype=r.dtype))
    # vit-explain's normalisation on the same max-fused layer gives other rows
    fused = att[0][0].amax(0)
    a = (fused + torch.eye(6, dtype=fused.dtype)) / 2
    buggy = a / a.sum(dim=-1)
    assert not torch.allclose(buggy.sum(-1), torch.ones(6, dtype=a.dtype))


def test_discarding_is_per_image():
    att = _random_attention(4, 2, 7, layers=2, seed=2)
    batched = attention_rollout(att, "mean", 0.4)
    for i in range(4):
        alone = attention_rollout([a[i:i + 1] for a in att], "mean", 0.4)
        torch.testing.assert_close(batched[i:i + 1], alone)
    # and it changes something in every image, not only the first
    plain = attention_rollout(att, "mean", 0.0)
    assert all(not torch.allclose(batched[i], plain[i]) for i in range(4))


def test_discard_keeps_the_class_token_self_attention():
    # the class token's weight on itself is the smallest of the layer; it must survive discarding
    a = torch.full((1, 1, 3, 3), 0.5)
    a[0, 0, 0] = torch.tensor([0.01, 0.49, 0.5])
    r = rollout_matrix([a], "mean", 0.12)  # int(9 · 0.12) = 1 entry dropped: any but (0, 0)
    hand = _rollout_by_hand([a.double()], "mean", 0.12)
    torch.testing.assert_close(r[:, 0, 1:].double(), hand)
    assert r[0, 0, 0] > 0.5


def test_attention_maps_per_head_and_mean():
    att = _random_attention(2, 3, 17, layers=2, seed=3)
    maps = attention_maps(att)  # last layer, 4×4 grid
    assert maps.per_head.shape == (2, 3, 4, 4) and maps.mean.shape == (2, 4, 4)
    torch.testing.assert_close(maps.per_head[1, 2, 1, 3], att[-1][1, 2, 0, 1 + 1 * 4 + 3])
    torch.testing.assert_close(maps.mean, maps.per_head.mean(1))
    first = attention_maps(att, layer=0, grid_size=(2, 8))
    assert first.mean.shape == (2, 2, 8)
    torch.testing.assert_close(first.per_head[0, 0, 1, 0], att[0][0, 0, 0, 9])


def test_to_grid_and_errors():
    assert to_grid(torch.arange(6.0)[None], (2, 3))[0, 1, 0] == 3
    with pytest.raises(ValueError, match="5 patch tokens do not form a square grid"):
        to_grid(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="head_fusion must be one of mean, max, min, got 'median'"):
        attention_rollout(_random_attention(1, 1, 5, 1), "median")
    with pytest.raises(ValueError, match=r"discard_ratio must lie in \[0, 1\), got 1.0"):
        attention_rollout(_random_attention(1, 1, 5, 1), discard_ratio=1.0)
    with pytest.raises(ValueError, match=r"attentions\[1\] has shape \(1, 1, 4, 4\)"):
        attention_rollout([torch.ones(1, 1, 5, 5), torch.ones(1, 1, 4, 4)])
    with pytest.raises(ValueError, match="layer 2 is out of range for 2 blocks"):
        attention_maps(_random_attention(1, 1, 5, 2), layer=2)
    with pytest.raises(ValueError, match="attentions is empty"):
        attention_rollout([])


def test_attention_pointing_game_on_the_patch_grid():
    maps = torch.zeros(3, 4, 4)
    maps[0, 1, 2] = 1.0  # patch row 1, column 2 → centre (2.5·8, 1.5·8) = (20, 12) px at 32 px
    maps[1, 3, 0] = 1.0  # centre (4, 28)
    maps[2, 0, 0] = 1.0  # centre (4, 4)
    boxes = [[16, 8, 24, 16], [10, 20, 30, 30], [0, 0, 3.9, 3.9]]
    assert attention_pointing_game(maps, boxes, image_size=32) == [True, False, False]
    assert attention_pointing_game(maps, boxes, image_size=32, tolerance=0.2) == [True, False, True]
    assert attention_pointing_game(maps.flatten(1), boxes, image_size=(32, 32)) == [True, False, False]
    # in the map's own frame it is the Grad-CAM pointing game
    cell_boxes = [[2, 1, 3, 2], [0, 3, 1, 4], [1, 1, 2, 2]]
    assert attention_pointing_game(maps, cell_boxes) == pointing_game(maps, cell_boxes)
    with pytest.raises(ValueError, match="need one box per map: 3 maps, 2 boxes"):
        attention_pointing_game(maps, boxes[:2], image_size=32)


def test_overlay_and_position_similarity():
    img = np.full((32, 32, 3), 0.5, dtype=np.float32)
    grid = torch.zeros(4, 4)
    grid[0, 0] = 2.0
    ov = attention_overlay(img, grid, mode="nearest")
    assert ov.shape == (32, 32, 3) and 0 <= ov.min() and ov.max() <= 1
    assert not np.allclose(ov[:8, :8], ov[24:, 24:])  # the hot patch differs from a cold one
    torch.testing.assert_close(torch.from_numpy(ov[16:24, 16:24]), torch.from_numpy(ov[24:, 24:]))
    pos = torch.randn(1, 1 + 9, 6)
    sim = position_embedding_similarity(pos)
    assert sim.shape == (3, 3, 3, 3)
    torch.testing.assert_close(sim[1, 2, 1, 2], torch.tensor(1.0))
    unit = torch.nn.functional.normalize(pos[0, 1:], dim=-1)
    torch.testing.assert_close(sim[0, 1, 2, 0], unit[1] @ unit[6])
