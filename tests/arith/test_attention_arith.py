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


# -- our own modules (vislab.models.vit, vislab.layers.swin) measured against the formulas -----------------


@pytest.mark.parametrize("h, w, c, heads, m", [(56, 56, 96, 3, 7), (28, 14, 64, 4, 7), (16, 16, 48, 2, 4)])
def test_our_msa_and_window_attention_flops_equal_the_formulas(h, w, c, heads, m):
    from vislab.arith.attention import measure_attention_flops

    for fused in (False, True):  # the readable path and scaled_dot_product_attention (counted on meta)
        assert measure_attention_flops(h, w, c, heads=heads, fused=fused) == 2 * msa_macs(h, w, c)["total"]
        assert measure_attention_flops(h, w, c, heads=heads, window=m, fused=fused) == \
            2 * wmsa_macs(h, w, c, m)["total"]
        assert measure_attention_flops(h, w, c, heads=heads, window=m, shift=m // 2, fused=fused) == \
            2 * wmsa_macs(h, w, c, m)["total"]


def test_swin_block_attention_part_costs_the_formula():
    """Our SwinBlock's (S)W-MSA step (shift, partition, WindowAttention, reverse) on a real Swin-T map."""
    from vislab.layers.swin import SwinBlock

    for shift in (0, 3):
        with torch.device("meta"):
            block = SwinBlock(96, 56, 3, 7, shift)
            x = torch.zeros(1, 56, 56, 96)
        block.attn.fused = False
        assert _flops(block.window_attention, x) == 2 * wmsa_macs(56, 56, 96, 7)["total"]


@pytest.mark.parametrize("c, heads, d_k, d_v, d_out", [(40, 4, 7, 5, 24), (96, 3, 16, 48, 96), (32, 8, 4, 4, 10)])
def test_custom_head_sizes_formula_and_measured(c, heads, d_k, d_v, d_out):
    from vislab.arith.attention import measure_attention_flops
    from vislab.models.vit import MultiHeadSelfAttention

    h = w = 8
    m = 4
    kw = {"heads": heads, "d_k": d_k, "d_v": d_v, "d_out": d_out}
    msa = msa_macs(h, w, c, **kw)
    n = h * w
    # by hand: Q, K (d_k), V (d_v) projections, the output projection to d_out, QKᵀ and weights·V
    assert msa["total"] == n * c * heads * (2 * d_k + d_v) + n * heads * d_v * d_out + n * n * heads * (d_k + d_v)
    assert wmsa_macs(h, w, c, m, **kw)["attention"] == m * m * n * heads * (d_k + d_v)
    assert measure_attention_flops(h, w, c, **kw) == 2 * msa["total"]
    assert measure_attention_flops(h, w, c, window=m, shift=2, **kw) == 2 * wmsa_macs(h, w, c, m, **kw)["total"]
    # the parameter count of the same module
    mod = MultiHeadSelfAttention(c, heads, head_dim_qk=d_k, head_dim_v=d_v, out_dim=d_out)
    assert mha_params(c, heads, d_k, d_v, d_out=d_out)["total"] == sum(p.numel() for p in mod.parameters())
    # standard sizes reduce to the paper's formula
    assert msa_macs(h, w, c, heads=heads)["total"] == msa_macs(h, w, c)["total"] == 4 * n * c * c + 2 * n * n * c


def test_cost_table_and_timing():
    from vislab.arith.attention import attention_cost_table

    rows = attention_cost_table([(7, 7), (14, 14)], 32, heads=2, window=7, timing=True, repeats=1)
    assert [r["tokens"] for r in rows] == [49, 196]
    assert rows[0]["msa_macs"] == rows[0]["wmsa_macs"]  # one window covers the 7×7 map
    assert rows[1]["msa_flops"] > rows[1]["wmsa_flops"] == rows[1]["swmsa_flops"] == 2 * rows[1]["wmsa_macs"]
    assert all(r[k] > 0 for r in rows for k in ("msa_ms", "wmsa_ms", "swmsa_ms"))


def test_cli_attention_measures_our_modules(capsys):
    from vislab.arith.cli import main

    assert main(["attention", "--dim", "96", "--heads", "3", "--map", "56x56", "--window", "7"]) == 0
    out = capsys.readouterr().out
    assert "MSA       4,007,657,472 FLOPs = 2 × formula" in out
    assert out.count("= 2 × formula") == 3
    assert main(["attention", "--dim", "40", "--heads", "4", "--dk", "7", "--dv", "5", "--dout", "24",
                 "--map", "16x16", "--window", "4"]) == 0
    out = capsys.readouterr().out
    assert "W_out             504" in out and out.count("= 2 × formula") == 3
    assert "(hw)²·h(d_k+d_v) = 901,120 + 3,145,728 = 4,046,848" in out


@pytest.mark.parametrize("call, match", [
    (lambda: msa_macs(8, 8, 30, heads=4), r"C \(30\) must be divisible by heads \(4\) unless d_k and d_v"),
    (lambda: msa_macs(8, 8, 32, d_k=4), "d_k and d_v need heads"),
    (lambda: mha_params(32, 4, d_out=0), "d_out must be a positive integer, got 0"),
])
def test_custom_size_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
