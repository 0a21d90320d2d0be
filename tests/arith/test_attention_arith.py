"""Attention arithmetic against real modules: parameter counts and FlopCounterMode."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.swin_transformer import ShiftedWindowAttention

from vislab.arith.attention import mha_params, msa_macs, wmsa_macs


@pytest.mark.parametrize("d_model, heads, bias", [(96, 3, True), (768, 12, True), (64, 8, False)])
def test_mha_params_equal_nn_multiheadattention(d_model, heads, bias):
    mha = nn.MultiheadAttention(d_model, heads, bias=bias, device="meta")
    assert mha_params(d_model, heads, bias=bias)["total"] == sum(p.numel() for p in mha.parameters())
    assert mha_params(d_model, heads, bias=bias)["total"] == 4 * d_model * d_model + (4 * d_model if bias else 0)


def test_mha_params_with_custom_head_sizes():
    d_model, heads, d_k, d_v = 40, 4, 7, 5
    projections = [nn.Linear(d_model, heads * d_k), nn.Linear(d_model, heads * d_k),
                   nn.Linear(d_model, heads * d_v), nn.Linear(heads * d_v, d_model)]
    parts = mha_params(d_model, heads, d_k, d_v)
    assert [parts[k] for k in ("q", "k", "v", "out")] == [sum(p.numel() for p in m.parameters()) for m in projections]


def _flops(module: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        module(x)
    return counter.get_total_flops()


def test_swin_t_stage1_wmsa_and_msa_costs_equal_flop_counter():
    """Stage 1 of Swin-T at 224 px: a 56×56 map, C = 96, 3 heads, window M = 7."""
    h = w = 56
    c, heads, m = 96, 3, 7
    with torch.device("meta"):
        x = torch.zeros(1, h, w, c)
        wmsa = ShiftedWindowAttention(c, [m, m], [0, 0], heads)
        msa = ShiftedWindowAttention(c, [h, w], [0, 0], heads)  # one window over the whole map
        mha = nn.MultiheadAttention(c, heads, batch_first=True)
        tokens = torch.zeros(1, h * w, c)
    assert _flops(wmsa, x) == 2 * wmsa_macs(h, w, c, m)["total"]
    assert _flops(msa, x) == 2 * msa_macs(h, w, c)["total"]
    assert _flops(lambda t: mha(t, t, t, need_weights=False), tokens) == 2 * msa_macs(h, w, c)["total"]
    # the numbers of the paper's formulas, by hand
    assert wmsa_macs(h, w, c, m)["total"] == 4 * 3136 * 96 ** 2 + 2 * 49 * 3136 * 96 == 145_108_992
    assert msa_macs(h, w, c)["total"] == 4 * 3136 * 96 ** 2 + 2 * 3136 ** 2 * 96 == 2_003_828_736


def test_shifted_windows_cost_the_same():
    with torch.device("meta"):
        sw = ShiftedWindowAttention(32, [4, 4], [2, 2], 2)
        x = torch.zeros(1, 16, 16, 32)
    assert _flops(sw, x) == 2 * wmsa_macs(16, 16, 32, 4)["total"]


@pytest.mark.parametrize("call, match", [
    (lambda: mha_params(96, 5), r"d_model \(96\) must be divisible by heads \(5\)"),
    (lambda: mha_params(0, 1), r"d_model must be a positive integer, got 0"),
    (lambda: wmsa_macs(56, 50, 96, 7), r"the map 56x50 must be a multiple of the window size M=7"),
    (lambda: msa_macs(56, 56, -1), r"C must be a positive integer, got -1"),
])
def test_attention_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
