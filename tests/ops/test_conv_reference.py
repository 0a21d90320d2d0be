"""NumPy reference convolution and global average pooling against torch autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vislab.ops.conv_reference import (
    conv2d_backward,
    conv2d_forward,
    global_avg_pool_backward,
    global_avg_pool_forward,
)

CASES = [  # (B, C_in, H, W, C_out, kernel, stride, padding, dilation, groups)
    (1, 1, 5, 5, 1, (3, 3), 1, 1, 1, 1),
    (2, 3, 9, 8, 4, (3, 2), (2, 1), (1, 2), (2, 1), 1),
    (2, 4, 7, 7, 6, (1, 1), 1, 0, 1, 2),
    (1, 6, 10, 11, 6, (3, 3), 2, 1, 1, 6),
    (3, 2, 6, 6, 5, (6, 6), 1, 0, 1, 1),
    (1, 2, 8, 5, 2, (2, 3), 3, 0, 2, 1),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_forward_and_backward_equal_autograd(case, bias):
    b, c_in, h, w, c_out, k, s, p, d, g = case
    rng = np.random.default_rng(hash(case) % 2**32)
    x = rng.normal(size=(b, c_in, h, w))
    wt = rng.normal(size=(c_out, c_in // g, *k))
    bt = rng.normal(size=c_out) if bias else None
    xt, wtt = torch.tensor(x, requires_grad=True), torch.tensor(wt, requires_grad=True)
    btt = torch.tensor(bt, requires_grad=True) if bias else None
    yt = F.conv2d(xt, wtt, btt, s, p, d, g)
    y = conv2d_forward(x, wt, bt, s, p, d, g)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    grad = rng.normal(size=y.shape)
    yt.backward(torch.tensor(grad))
    gx, gw, gb = conv2d_backward(grad, x, wt, s, p, d, g, bias=bias)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gw, wtt.grad.numpy(), rtol=1e-12, atol=1e-12)
    if bias:
        np.testing.assert_allclose(gb, btt.grad.numpy(), rtol=1e-12, atol=1e-12)
    else:
        assert gb is None


def test_global_average_pooling_forward_and_backward_equal_autograd():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 4, 5))
    xt = torch.tensor(x, requires_grad=True)
    yt = F.adaptive_avg_pool2d(xt, 1).flatten(1)
    np.testing.assert_allclose(global_avg_pool_forward(x), yt.detach().numpy())
    g = rng.normal(size=(2, 3))
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(global_avg_pool_backward(g, x.shape), xt.grad.numpy())


def test_laplacian_worked_example():
    x = np.zeros((1, 1, 5, 5))
    x[..., 2] = 10
    k = np.array([[1, 1, 1], [1, -8, 1], [1, 1, 1]], dtype=float)[None, None]
    edge, middle = [0, 20, -70, 20, 0], [0, 30, -60, 30, 0]
    np.testing.assert_array_equal(conv2d_forward(x, k, padding=1)[0, 0], [edge, middle, middle, middle, edge])


@pytest.mark.parametrize("call, exc, match", [
    (lambda: conv2d_forward(np.zeros((3, 5, 5)), np.zeros((1, 3, 3, 3))), ValueError,
     r"x must be \[B, C_in, H, W\], got shape \(3, 5, 5\)"),
    (lambda: conv2d_forward(np.zeros((1, 3, 5, 5)), np.zeros((2, 2, 3, 3))), ValueError,
     r"w expects 2 input channels \(w.shape\[1\]·groups\), x has 3"),
    (lambda: conv2d_forward(np.zeros((1, 3, 5, 5)), np.zeros((2, 1, 3, 3)), groups=2), ValueError,
     r"groups=2 must divide C_in=3 and C_out=2"),
    (lambda: conv2d_forward(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 3, 3))), ValueError,
     r"kernel 3x3 \(dilation \(1, 1\)\) does not fit the padded input 2x2"),
    (lambda: conv2d_forward(np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3)), stride=0), ValueError,
     r"stride and dilation must be >= 1 and padding >= 0"),
    (lambda: conv2d_forward(np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3)), stride=1.5), TypeError,
     r"stride must be an int or a pair of ints, got 1.5"),
    (lambda: conv2d_backward(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3))), ValueError,
     r"grad_out must be \(1, 1, 3, 3\), got \(1, 1, 2, 2\)"),
    (lambda: global_avg_pool_backward(np.zeros((2, 3)), (2, 4, 1, 1)), ValueError,
     r"grad_out must be \(2, 4\) for an input of shape \(2, 4, 1, 1\), got \(2, 3\)"),
])
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
