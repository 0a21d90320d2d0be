"""Our Swin window attention against timm's SwinTransformerBlock (W-MSA and SW-MSA), window partition
round trips, the relative position index and the SW-MSA mask."""

from __future__ import annotations

import pytest
import torch
from timm.models.swin_transformer import SwinTransformerBlock, get_relative_position_index
from timm.models.swin_transformer import WindowAttention as TimmWindowAttention
from timm.models.swin_transformer import window_partition as timm_partition

from vislab.layers.swin import (
    MASK_VALUE,
    SwinBlock,
    WindowAttention,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)


def _timm_block(dim, res, heads, window, shift, mlp_ratio, seed):
    torch.manual_seed(seed)
    block = SwinTransformerBlock(dim, res, num_heads=heads, window_size=window, shift_size=shift,
                                 mlp_ratio=mlp_ratio).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every parameter random, the bias table large enough to matter
        for name, p in block.named_parameters():
            scale = 0.5 if "relative_position" in name else 0.1
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return block


# (dim, input_resolution, heads, window, shift, mlp_ratio): Swin-T-like stages and odd cases timm handles
# (maps not a multiple of the window are padded; maps not larger than the window are one unshifted window)
CASES = [
    (32, (8, 8), 2, 4, 0, 4.0),
    (32, (8, 8), 2, 4, 2, 4.0),
    (48, (14, 14), 3, 7, 3, 4.0),
    (24, (12, 6), 4, 3, 1, 2.0),
    (40, (10, 14), 5, 4, 2, 3.0),  # padded to 12×16, shifted
    (16, (6, 6), 2, 7, 3, 4.0),  # window clamped to the map, shift dropped
    (24, (4, 16), 3, 7, 3, 4.0),  # clamped on one axis only
]


@pytest.mark.parametrize("dim, res, heads, window, shift, mlp_ratio", CASES)
def test_swin_block_loads_timm_state_dict_and_matches(dim, res, heads, window, shift, mlp_ratio):
    ref = _timm_block(dim, res, heads, window, shift, mlp_ratio, seed=dim + shift)
    ours = SwinBlock(dim, res, heads, window, shift, mlp_ratio).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    assert ours.window_size == ref.window_size and ours.shift_size == ref.shift_size
    if ref.attn_mask is None:
        assert ours.attn_mask is None
    else:
        torch.testing.assert_close(ours.attn_mask, ref.attn_mask, rtol=0, atol=0)
    torch.testing.assert_close(ours.attn.relative_position_index, ref.attn.relative_position_index, rtol=0, atol=0)
    x = torch.randn(2, *res, dim)
    with torch.no_grad():
        expected = ref(x)
        fast = ours(x)
        ours.attn.fused = False
        readable = ours(x)
    assert (expected - x).abs().max() > 0.1  # the block does something
    torch.testing.assert_close(fast, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(readable, expected, rtol=0, atol=1e-5)


def test_swin_block_gradients_equal_timm():
    ref = _timm_block(32, (8, 8), 4, 4, 2, 4.0, seed=11).train()
    ours = SwinBlock(32, 8, 4, 4, 2).train()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 8, 8, 32)
    ref(x).square().mean().backward()
    ours(x).square().mean().backward()
    grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_window_attention_equals_timm_and_custom_head_sizes():
    torch.manual_seed(0)
    ref = TimmWindowAttention(36, num_heads=3, head_dim=8, window_size=5).eval()
    ours = WindowAttention(36, 3, 5, head_dim=8).eval()
    ours.load_state_dict(ref.state_dict())
    assert ours.relative_position_bias_table.shape == (9 * 9, 3)
    x = torch.randn(6, 25, 36)
    mask = torch.zeros(3, 25, 25).masked_fill(torch.rand(3, 25, 25) < 0.3, MASK_VALUE)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, mask), ref(x, mask), rtol=0, atol=1e-5)
        out, w = ours(x, mask, need_weights=True)
    assert w.shape == (6, 3, 25, 25)
    torch.testing.assert_close(w.sum(-1), torch.ones(6, 3, 25), rtol=0, atol=1e-5)
    # window b·nW + j uses mask[j]: masked pairs get (almost) no weight
    assert w[4][:, mask[1] < 0].max() < 1e-30
    custom = WindowAttention(20, 4, 3, head_dim=6, head_dim_v=2, out_dim=9)
    assert custom.qkv.weight.shape == (4 * (6 + 6 + 2), 20) and custom.proj.weight.shape == (9, 8)
    assert custom(torch.randn(2, 9, 20)).shape == (2, 9, 9)


@pytest.mark.parametrize("shape, window", [((2, 8, 12, 5), 4), ((1, 14, 14, 3), 7), ((3, 6, 9, 2), (2, 3))])
def test_window_partition_round_trip_and_timm_order(shape, window):
    x = torch.randn(shape)
    win = window if isinstance(window, tuple) else (window, window)
    w = window_partition(x, window)
    assert w.shape == (shape[0] * (shape[1] // win[0]) * (shape[2] // win[1]), *win, shape[3])
    torch.testing.assert_close(w, timm_partition(x, win), rtol=0, atol=0)
    torch.testing.assert_close(window_reverse(w, window, shape[1], shape[2]), x, rtol=0, atol=0)
    # window 1 of image 0 is the second block of the first window row
    torch.testing.assert_close(w[1], x[0, :win[0], win[1]:2 * win[1]])


@pytest.mark.parametrize("window", [(1, 1), (2, 2), (7, 7), (3, 5)])
def test_relative_position_index_equals_timm(window):
    idx = relative_position_index(window)
    torch.testing.assert_close(idx, get_relative_position_index(*window), rtol=0, atol=0)
    assert int(idx.max()) == (2 * window[0] - 1) * (2 * window[1] - 1) - 1
    # the diagonal (offset 0, 0) is the centre row of the table
    assert set(idx.diagonal().tolist()) == {(window[0] - 1) * (2 * window[1] - 1) + window[1] - 1}


def test_shifted_window_mask_by_hand():
    """4×4 map, 2×2 windows, shift 1: after the roll the last row/column came from the opposite edge."""
    mask = shifted_window_mask(4, 4, 2, 1)
    assert mask.shape == (4, 4, 4)
    assert (mask[0] == 0).all()  # the top-left window holds only original neighbours
    # window 1 (top right): tokens (r, c) in row-major order (0,2) (0,3) (1,2) (1,3); column 3 wrapped round
    same = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool)
    assert torch.equal(mask[1] == 0, same)
    # window 2 (bottom left): row 3 wrapped round
    rows = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[2] == 0, rows)
    assert int((mask[3] == 0).sum()) == 4  # the corner window: four regions, each token alone
    assert set(mask.unique().tolist()) == {0.0, MASK_VALUE}


@pytest.mark.parametrize("call, match", [
    (lambda: SwinBlock(32, 8, 2, 4, 4), r"shift_size must satisfy 0 <= shift < window_size"),
    (lambda: SwinBlock(30, 8, 4, 4, 0), r"dim \(30\) must be divisible by num_heads \(4\)"),
    (lambda: window_partition(torch.zeros(1, 6, 8, 2), 4), r"the map 6x8 must be a multiple of the window size 4x4"),
    (lambda: window_reverse(torch.zeros(5, 2, 2, 1), 2, 4, 4), r"5 windows are not a whole number of 4x4 maps"),
    (lambda: SwinBlock(8, 8, 2, 4)(torch.zeros(1, 8, 8, 4)), r"expected Tensor\[B, 8, 8, 8\], got \(1, 8, 8, 4\)"),
    (lambda: WindowAttention(8, 2, 4, head_dim=0), r"head_dim must be positive, got 0"),
    (lambda: WindowAttention(8, 2, 4, out_dim=-3), r"out_dim must be positive, got -3"),
])
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
