"""Convolution and global average pooling in NumPy, forward and hand-written backward.

Deep-learning "convolution" is cross-correlation (the kernel is not flipped), as in
``torch.nn.functional.conv2d``::

    y[b, o, i, j] = bias[o] + Σ_c Σ_u Σ_v  x_pad[b, c, i·s + u·d, j·s + v·d] · w[o, c, u, v]

The loops run over the kernel taps ``(u, v)``; each tap is one strided slice of the padded input
times a ``C_out × C_in`` matrix, which keeps the code readable and fast enough for tests and worked
examples. The backward pass follows from the same sum:

* ``∂L/∂bias[o]      = Σ_{b,i,j} g[b, o, i, j]``
* ``∂L/∂w[o, c, u, v] = Σ_{b,i,j} g[b, o, i, j] · x_pad[b, c, i·s + u·d, j·s + v·d]``
  (a correlation of the input with the upstream gradient)
* ``∂L/∂x_pad[b, c, i·s + u·d, j·s + v·d] += Σ_o g[b, o, i, j] · w[o, c, u, v]``
  (a "full" convolution of the upstream gradient with the flipped kernel), then the padding is cut off.

Shapes: ``x`` ``[B, C_in, H, W]``, ``w`` ``[C_out, C_in/groups, kh, kw]``, ``bias`` ``[C_out]``,
output ``[B, C_out, Ho, Wo]``.
"""

from __future__ import annotations

import numpy as np


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    out = (v, v) if isinstance(v, (int, np.integer)) else tuple(v) if isinstance(v, (tuple, list)) else (v,)
    if len(out) != 2 or any(not isinstance(a, (int, np.integer)) for a in out):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    return int(out[0]), int(out[1])


def _check(x: np.ndarray, w: np.ndarray, stride, padding, dilation, groups: int):
    if x.ndim != 4:
        raise ValueError(f"x must be [B, C_in, H, W], got shape {x.shape}")
    if w.ndim != 4:
        raise ValueError(f"w must be [C_out, C_in/groups, kh, kw], got shape {w.shape}")
    s, p, d = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if min(s) < 1 or min(d) < 1 or min(p) < 0:
        raise ValueError(f"stride and dilation must be >= 1 and padding >= 0, got stride={s}, "
                         f"padding={p}, dilation={d}")
    if groups < 1 or x.shape[1] % groups or w.shape[0] % groups:
        raise ValueError(f"groups={groups} must divide C_in={x.shape[1]} and C_out={w.shape[0]}")
    if w.shape[1] * groups != x.shape[1]:
        raise ValueError(f"w expects {w.shape[1] * groups} input channels (w.shape[1]·groups), x has {x.shape[1]}")
    kh, kw = w.shape[2:]
    hp, wp = x.shape[2] + 2 * p[0], x.shape[3] + 2 * p[1]
    ho = (hp - d[0] * (kh - 1) - 1) // s[0] + 1
    wo = (wp - d[1] * (kw - 1) - 1) // s[1] + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"kernel {kh}x{kw} (dilation {d}) does not fit the padded input {hp}x{wp}")
    return s, p, d, ho, wo


def _tap(a: np.ndarray, u: int, v: int, s, d, ho: int, wo: int) -> tuple[slice, ...]:
    """Index of the input pixels that kernel tap ``(u, v)`` meets, one per output position."""
    return (slice(None), slice(None), slice(u * d[0], u * d[0] + s[0] * (ho - 1) + 1, s[0]),
            slice(v * d[1], v * d[1] + s[1] * (wo - 1) + 1, s[1]))


def conv2d_forward(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, stride=1, padding=0,
                   dilation=1, groups: int = 1) -> np.ndarray:
    """Cross-correlation ``[B, C_in, H, W] → [B, C_out, Ho, Wo]`` (same semantics as ``F.conv2d``)."""
    s, p, d, ho, wo = _check(x, w, stride, padding, dilation, groups)
    b, c_in = x.shape[:2]
    c_out, cg, kh, kw = w.shape
    og = c_out // groups
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    out = np.zeros((b, c_out, ho, wo), dtype=np.result_type(x, w))
    for g in range(groups):
        xg = xp[:, g * cg:(g + 1) * cg]
        wg = w[g * og:(g + 1) * og]
        for u in range(kh):
            for v in range(kw):
                patch = xg[_tap(xg, u, v, s, d, ho, wo)]  # (B, C_in/g, Ho, Wo)
                out[:, g * og:(g + 1) * og] += np.einsum("bchw,oc->bohw", patch, wg[:, :, u, v])
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1)
    return out


def conv2d_backward(grad_out: np.ndarray, x: np.ndarray, w: np.ndarray, stride=1, padding=0, dilation=1,
                    groups: int = 1, bias: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients ``(∂L/∂x, ∂L/∂w, ∂L/∂bias)`` of :func:`conv2d_forward` for upstream ``grad_out``.

    ``grad_out`` is ``[B, C_out, Ho, Wo]``; the bias gradient is ``None`` when ``bias=False``.
    """
    s, p, d, ho, wo = _check(x, w, stride, padding, dilation, groups)
    if grad_out.shape != (x.shape[0], w.shape[0], ho, wo):
        raise ValueError(f"grad_out must be {(x.shape[0], w.shape[0], ho, wo)}, got {grad_out.shape}")
    c_out, cg, kh, kw = w.shape
    og = c_out // groups
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    grad_xp = np.zeros_like(xp, dtype=np.result_type(grad_out, w))
    grad_w = np.zeros_like(w, dtype=np.result_type(grad_out, x))
    for g in range(groups):
        xg, gxg = xp[:, g * cg:(g + 1) * cg], grad_xp[:, g * cg:(g + 1) * cg]
        go = grad_out[:, g * og:(g + 1) * og]  # (B, C_out/g, Ho, Wo)
        for u in range(kh):
            for v in range(kw):
                idx = _tap(xg, u, v, s, d, ho, wo)
                grad_w[g * og:(g + 1) * og, :, u, v] = np.einsum("bohw,bchw->oc", go, xg[idx])
                gxg[idx] += np.einsum("bohw,oc->bchw", go, w[g * og:(g + 1) * og, :, u, v])
    grad_x = grad_xp[:, :, p[0]:p[0] + x.shape[2], p[1]:p[1] + x.shape[3]]
    grad_b = grad_out.sum(axis=(0, 2, 3)) if bias else None
    return grad_x, grad_w, grad_b


def global_avg_pool_forward(x: np.ndarray) -> np.ndarray:
    """``[B, C, H, W] → [B, C]``: the mean of every channel."""
    if x.ndim != 4:
        raise ValueError(f"x must be [B, C, H, W], got shape {x.shape}")
    return x.mean(axis=(2, 3))


def global_avg_pool_backward(grad_out: np.ndarray, input_shape: tuple[int, int, int, int]) -> np.ndarray:
    """``∂L/∂x[b, c, i, j] = g[b, c] / (H·W)``: every pixel gets an equal share of the gradient."""
    b, c, h, w = input_shape
    if grad_out.shape != (b, c):
        raise ValueError(f"grad_out must be {(b, c)} for an input of shape {tuple(input_shape)}, got {grad_out.shape}")
    return np.broadcast_to(grad_out[:, :, None, None] / (h * w), input_shape).copy()
