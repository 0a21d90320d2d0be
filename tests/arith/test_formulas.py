"""Closed-form formulas against PyTorch modules, hand-computed values and published anchors."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vislab.arith import formulas as fm


def _meta(n: int, c: int = 2) -> torch.Tensor:
    return torch.zeros(1, c, n, n, device="meta")


def test_conv_and_pool_output_sizes_equal_torch():
    checked = 0
    for n, k, s, p, d in itertools.product((5, 8, 13), (1, 2, 3, 5), (1, 2, 3), (0, 1, 2), (1, 2)):
        if n + 2 * p - d * (k - 1) - 1 < 0:
            continue
        conv = nn.Conv2d(2, 2, k, s, p, d, device="meta")
        assert fm.conv_output_size(n, k, s, p, d) == conv(_meta(n)).shape[-1]
        if 2 * p <= k:  # PyTorch pools allow padding up to half the kernel
            for ceil in (False, True):
                pool = nn.MaxPool2d(k, s, p, d, ceil_mode=ceil)
                assert fm.pool_output_size(n, k, s, p, d, ceil) == pool(_meta(n)).shape[-1], (n, k, s, p, d, ceil)
                if d == 1:
                    avg = nn.AvgPool2d(k, s, p, ceil_mode=ceil)
                    assert fm.pool_output_size(n, k, s, p, 1, ceil) == avg(_meta(n)).shape[-1]
        checked += 1
    assert checked > 150


def test_transposed_conv_output_size_and_params_equal_torch():
    for n, k, s, p, op, d in itertools.product((3, 6), (1, 2, 3, 4), (1, 2, 3), (0, 1), (0, 1), (1, 2)):
        if op >= max(s, d):
            continue
        m = nn.ConvTranspose2d(4, 6, k, s, p, op, groups=2, dilation=d, device="meta")
        out = fm.conv_transpose_output_size(n, k, s, p, op, d)
        if out >= 1:
            assert out == m(torch.zeros(1, 4, n, n, device="meta")).shape[-1]
        assert fm.conv_transpose_params(4, 6, (k, k), groups=2) == sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("cin, cout, k, g, bias", [(3, 64, (3, 3), 1, True), (32, 32, (3, 3), 32, False),
                                                   (8, 12, (1, 5), 4, True), (16, 8, (1, 1), 1, False)])
def test_param_counts_equal_numel(cin, cout, k, g, bias):
    conv = nn.Conv2d(cin, cout, k, groups=g, bias=bias, device="meta")
    assert fm.conv_params(cin, cout, k, g, bias) == sum(p.numel() for p in conv.parameters())
    assert fm.linear_params(cin, cout, bias) == sum(p.numel() for p in nn.Linear(cin, cout, bias).parameters())
    assert fm.batchnorm_params(cout) == sum(p.numel() for p in nn.BatchNorm2d(cout).parameters())


def test_unet_encoder_conv_params_by_hand():
    """3×3 convs of a U-Net encoder with widths 64/128/256/512 (the paper's convs have a bias)."""
    chans = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512), (512, 512)]
    assert [fm.conv_params(a, b, (3, 3)) for a, b in chans] == [
        1_792, 36_928, 73_856, 147_584, 295_168, 590_080, 1_180_160, 2_359_808]


@pytest.mark.parametrize("n, k, s, valid, same, pads", [
    (7, 3, 2, 3, 4, (1, 1)),   # odd input, odd kernel: symmetric padding
    (8, 3, 2, 3, 4, (0, 1)),   # even input, odd kernel: the extra pixel goes right/bottom
    (7, 4, 2, 2, 4, (1, 2)),   # odd input, even kernel
    (8, 4, 2, 3, 4, (1, 1)),   # even input, even kernel
    (224, 7, 2, 109, 112, (2, 3)),
])
def test_same_vs_valid_with_stride_2(n, k, s, valid, same, pads):
    """Hand-computed: valid = floor((n-k)/s)+1, same = ceil(n/s), total pad = (same-1)·s + k - n."""
    shapes = fm.padding_shapes(n, k, s)
    assert shapes["valid"]["output"] == valid
    assert (shapes["same"]["output"], shapes["same"]["pad_left"], shapes["same"]["pad_right"]) == (same, *pads)
    x = torch.zeros(1, 1, n, n)
    w = torch.zeros(1, 1, k, k)
    assert F.conv2d(x, w, stride=s).shape[-1] == valid
    assert F.conv2d(F.pad(x, (*pads, *pads)), w, stride=s).shape[-1] == same


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("n, k", [(7, 3), (8, 2), (9, 4), (6, 5)])
def test_same_padding_at_stride_1_equals_torch_same(n, k):
    x = torch.randn(1, 1, n, n)
    w = torch.randn(1, 1, k, k)
    left, right = fm.same_padding(n, k)
    assert torch.allclose(F.conv2d(F.pad(x, (left, right, left, right)), w), F.conv2d(x, w, padding="same"))


def test_receptive_field_chain_anchors():
    vgg = []
    for n in (2, 2, 3, 3, 3):
        vgg += [(3, 1, 1, 1)] * n + [(2, 2, 0, 1)]
    assert fm.receptive_field_chain(vgg)[-1] == (212, 32, 90)  # Araujo et al. 2019, Table 1
    alexnet = [(11, 4, 2, 1), (3, 2, 0, 1), (5, 1, 2, 1), (3, 2, 0, 1), (3, 1, 1, 1), (3, 1, 1, 1), (3, 1, 1, 1),
               (3, 2, 0, 1)]
    assert fm.receptive_field_chain(alexnet)[-1] == (195, 32, 66)
    assert fm.receptive_field_chain([(3, 1, 0, 2)]) == [(5, 1, 0)]  # dilation 2: k_eff = 5


def test_dense_block_channels():
    # DenseNet-121 block 1: m = 64, k = 32, layer l reads 64 + (l-1)·32
    assert [fm.dense_block_in_channels(64, 32, l) for l in (1, 2, 6)] == [64, 96, 224]


@pytest.mark.parametrize("call, match", [
    (lambda: fm.conv_output_size(8, 3, stride=0), r"stride must be a positive integer, got 0"),
    (lambda: fm.conv_output_size(8, 3, padding=-1), r"padding must be a non-negative integer, got -1"),
    (lambda: fm.effective_kernel(0), r"kernel size must be a positive integer, got 0"),
    (lambda: fm.conv_params(3, 8, (3, 3), groups=2), r"in_channels \(3\) and out_channels \(8\) must both be "
                                                       r"divisible by groups \(2\)"),
    (lambda: fm.dense_block_in_channels(64, 32, 0), r"layer must be a positive integer, got 0"),
    (lambda: fm.same_padding(0, 3), r"input size must be a positive integer, got 0"),
])
def test_formula_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
