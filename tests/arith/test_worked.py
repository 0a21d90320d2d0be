"""Worked examples reproduce exactly; the step-by-step text shows every sum; conv/dense equivalences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vislab.arith.equivalence import conv1x1_as_linear, full_conv_as_linear
from vislab.arith.worked import (
    COLUMN_INPUT,
    GAP_F,
    GAP_X,
    LAPLACIAN,
    conv_backward_steps,
    conv_forward_steps,
    conv_steps_text,
    parse_matrix,
)


def test_laplacian_on_a_column_of_tens():
    out, lines = conv_forward_steps(COLUMN_INPUT, LAPLACIAN, padding=1)
    edge, middle = [0, 20, -70, 20, 0], [0, 30, -60, 30, 0]
    np.testing.assert_array_equal(out, np.array([edge, middle, middle, middle, edge]))
    # the taps that fall on the zero padding are not written
    assert "O[0,2] = 0·1 + 10·(-8) + 0·1 + 0·1 + 10·1 + 0·1 = -70" in lines
    assert "O[2,1] = 0·1 + 0·1 + 10·1 + 0·1 + 0·(-8) + 10·1 + 0·1 + 0·1 + 10·1 = 30" in lines


def test_gap_example_forward_and_gradients_by_hand():
    out, lines = conv_forward_steps(GAP_X, GAP_F)
    np.testing.assert_array_equal(out, [[10, 3], [9, 18]])
    assert lines[0] == "O[0,0] = 2·0 + 3·3 + 3·1 + 1·(-2) = 10"
    assert out.mean() == 10
    # upstream dL/dy = 1 → dL/dO = 1/4 everywhere
    gx, gw, gb, _ = conv_backward_steps(GAP_X, GAP_F, np.full((2, 2), 0.25))
    np.testing.assert_allclose(gw, [[2.25, 3.25], [1.75, 0.75]])
    np.testing.assert_allclose(gx, [[0, 0.75, 0.75], [0.25, 0.5, 0.25], [0.25, -0.25, -0.5]])
    assert gb == 1.0


@pytest.mark.parametrize("upstream", [1.0, -2.0, 0.5])
def test_gap_example_equals_autograd(upstream):
    x = torch.tensor(GAP_X, requires_grad=True)
    w = torch.tensor(GAP_F, requires_grad=True)
    y = F.conv2d(x[None, None], w[None, None]).mean()
    y.backward(torch.tensor(upstream, dtype=torch.float64))
    text = conv_steps_text(GAP_X, GAP_F, gap=True, upstream=upstream)
    assert "GAP y = (10 + 3 + 9 + 18) / 4 = 10" in text
    gx, gw, _, _ = conv_backward_steps(GAP_X, GAP_F, np.full((2, 2), upstream / 4))
    np.testing.assert_allclose(gw, w.grad.numpy())
    np.testing.assert_allclose(gx, x.grad.numpy())


def test_steps_text_with_stride_padding_dilation_equals_autograd():
    rng = np.random.default_rng(0)
    x, w, g = rng.integers(-3, 4, (6, 7)).astype(float), rng.integers(-2, 3, (2, 3)).astype(float), None
    out, _ = conv_forward_steps(x, w, stride=2, padding=1, dilation=2)
    g = rng.integers(-2, 3, out.shape).astype(float)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    yt = F.conv2d(xt[None, None], wt[None, None], stride=2, padding=1, dilation=2)[0, 0]
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(out, yt.detach().numpy())
    gx, gw, gb, lines = conv_backward_steps(x, w, g, stride=2, padding=1, dilation=2)
    np.testing.assert_allclose(gx, xt.grad.numpy())
    np.testing.assert_allclose(gw, wt.grad.numpy())
    assert gb == g.sum()
    text = conv_steps_text(x, w, stride=2, padding=1, dilation=2, upstream=g)
    # every written sum evaluates to the value after "="
    for line in text.splitlines():
        if line.lstrip().startswith(("O[", "∂L/∂F[", "∂L/∂X[")) and "Σ" not in line:
            expr, value = line.split("=", 1)[1].rsplit("=", 1)
            assert eval(expr.replace("·", "*")) == pytest.approx(float(value)), line


def test_parse_matrix():
    np.testing.assert_array_equal(parse_matrix("[[2,3],[1,-2]]"), [[2, 3], [1, -2]])
    np.testing.assert_array_equal(parse_matrix("2,3; 1,-2"), [[2, 3], [1, -2]])
    with pytest.raises(ValueError, match=r"expected a matrix like"):
        parse_matrix("[[1,2],[3]]")
    with pytest.raises(ValueError, match=r"expected a matrix like"):
        parse_matrix("a,b")


def test_conv_steps_rejects_a_kernel_larger_than_the_input():
    with pytest.raises(ValueError, match=r"kernel 3x3 does not fit the input 2x2 with padding 0"):
        conv_steps_text(np.ones((2, 2)), np.ones((3, 3)))


def test_conv1x1_is_a_per_pixel_linear_layer():
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 1)
    linear = conv1x1_as_linear(conv)
    x = torch.randn(2, 5, 6, 4)
    by_pixel = linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, 7, H, W)
    torch.testing.assert_close(conv(x), by_pixel)
    assert sum(p.numel() for p in conv.parameters()) == sum(p.numel() for p in linear.parameters())
    with pytest.raises(ValueError, match=r"expected a 1x1 conv with stride 1, no padding and groups=1, got kernel"):
        conv1x1_as_linear(nn.Conv2d(5, 7, 3))


def test_full_kernel_conv_is_a_fully_connected_layer():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 10, (5, 4))
    linear = full_conv_as_linear(conv, (5, 4))
    x = torch.randn(8, 3, 5, 4)
    torch.testing.assert_close(conv(x).flatten(1), linear(x.flatten(1)))
    assert sum(p.numel() for p in conv.parameters()) == sum(p.numel() for p in linear.parameters()) == 3 * 20 * 10 + 10
    with pytest.raises(ValueError, match=r"kernel equals the input size \(6, 4\)"):
        full_conv_as_linear(conv, (6, 4))
    with pytest.raises(TypeError, match=r"expected an nn.Conv2d, got Linear"):
        full_conv_as_linear(linear, (5, 4))
