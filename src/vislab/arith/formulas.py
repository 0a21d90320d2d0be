"""Closed-form conv arithmetic: output sizes, paddings, parameters, MACs, receptive-field recursion.

Every function works on one spatial axis (sizes are plain ``int``) so that the same formula serves
height and width. Conventions (the same as PyTorch):

* output size of a convolution:   ``floor((n + p_left + p_right - d·(k-1) - 1) / s) + 1``
* output size of a transposed conv: ``(n-1)·s - 2p + d·(k-1) + output_padding + 1``
* MACs (multiply-accumulates) of a convolution: ``Ho·Wo·C_out·(C_in/groups)·kh·kw``; a dense layer
  ``in·out``; FLOPs ≈ 2·MACs (``torch.utils.flop_counter.FlopCounterMode`` counts exactly 2·MACs
  for convolutions and matrix products and nothing for bias, normalisation, activation or pooling).
* receptive field recursion (Araujo et al. 2019, https://distill.pub/2019/computing-receptive-fields/):
  ``r_out = r_in + (k_eff - 1)·j_in``, ``j_out = j_in·s``, ``P_out = P_in + p_left·j_in`` with the
  effective kernel ``k_eff = d·(k-1) + 1``.
"""

from __future__ import annotations

import math


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_non_negative(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def effective_kernel(k: int, dilation: int = 1) -> int:
    """Span of a dilated kernel: ``d·(k-1) + 1`` (a 3-tap kernel with dilation 2 spans 5 pixels)."""
    _check_positive("kernel size", k)
    _check_positive("dilation", dilation)
    return dilation * (k - 1) + 1


def conv_output_size(n: int, k: int, stride: int = 1, padding: int | tuple[int, int] = 0,
                     dilation: int = 1) -> int:
    """Output length of a convolution (or max/avg pooling with ``ceil_mode=False``) along one axis.

    ``padding`` is either one number for both sides or ``(left, right)``. May return a value below 1;
    callers decide how to report a map that vanished.
    """
    _check_positive("input size", n)
    _check_positive("stride", stride)
    left, right = (padding, padding) if isinstance(padding, int) else padding
    _check_non_negative("padding", left)
    _check_non_negative("padding", right)
    span = n + left + right - effective_kernel(k, dilation)
    return span // stride + 1 if span >= 0 else 0


def pool_output_size(n: int, k: int, stride: int | None = None, padding: int = 0, dilation: int = 1,
                     ceil_mode: bool = False) -> int:
    """Output length of ``nn.MaxPool2d``/``nn.AvgPool2d`` along one axis, ``ceil_mode`` included.

    With ``ceil_mode`` the last window may hang over the right border but must start inside the
    input or the left padding (PyTorch's rule, ``pooling_output_shape`` in ATen).
    """
    stride = k if stride is None else stride
    if not ceil_mode:
        return conv_output_size(n, k, stride, padding, dilation)
    span = n + 2 * padding - effective_kernel(k, dilation)
    if span < 0:
        return 0
    out = -(-span // stride) + 1
    if (out - 1) * stride >= n + padding:
        out -= 1
    return out


def conv_transpose_output_size(n: int, k: int, stride: int = 1, padding: int = 0, output_padding: int = 0,
                               dilation: int = 1) -> int:
    """Output length of a transposed convolution: ``(n-1)·s - 2p + d·(k-1) + output_padding + 1``."""
    _check_positive("input size", n)
    _check_positive("stride", stride)
    _check_non_negative("padding", padding)
    _check_non_negative("output_padding", output_padding)
    return (n - 1) * stride - 2 * padding + effective_kernel(k, dilation) + output_padding


def same_padding(n: int, k: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """``"same"`` padding ``(left, right)`` in the TensorFlow/Keras convention.

    The output has ``ceil(n / s)`` positions; the total padding ``max((out-1)·s + k_eff - n, 0)`` is
    split with the extra pixel on the right/bottom. For ``stride=1`` this is exactly PyTorch's
    ``padding="same"``.
    """
    _check_positive("input size", n)
    _check_positive("stride", stride)
    out = math.ceil(n / stride)
    total = max((out - 1) * stride + effective_kernel(k, dilation) - n, 0)
    return total // 2, total - total // 2


def padding_shapes(n: int, k: int, stride: int = 1, dilation: int = 1) -> dict[str, dict[str, int]]:
    """Output length and padding of ``"valid"`` (no padding) and ``"same"`` for one axis."""
    left, right = same_padding(n, k, stride, dilation)
    return {
        "valid": {"output": conv_output_size(n, k, stride, 0, dilation), "pad_left": 0, "pad_right": 0},
        "same": {"output": conv_output_size(n, k, stride, (left, right), dilation),
                 "pad_left": left, "pad_right": right},
    }


def conv_params(in_channels: int, out_channels: int, kernel: tuple[int, int], groups: int = 1,
                bias: bool = True) -> int:
    """Parameters of ``nn.Conv2d``: ``C_out·(C_in/groups)·kh·kw`` (+ ``C_out`` bias)."""
    _check_groups(in_channels, out_channels, groups)
    kh, kw = kernel
    return out_channels * (in_channels // groups) * kh * kw + (out_channels if bias else 0)


def conv_transpose_params(in_channels: int, out_channels: int, kernel: tuple[int, int], groups: int = 1,
                          bias: bool = True) -> int:
    """Parameters of ``nn.ConvTranspose2d``: ``C_in·(C_out/groups)·kh·kw`` (+ ``C_out`` bias)."""
    _check_groups(in_channels, out_channels, groups)
    kh, kw = kernel
    return in_channels * (out_channels // groups) * kh * kw + (out_channels if bias else 0)


def linear_params(in_features: int, out_features: int, bias: bool = True) -> int:
    """Parameters of ``nn.Linear``: ``in·out`` (+ ``out`` bias)."""
    return in_features * out_features + (out_features if bias else 0)


def batchnorm_params(channels: int, affine: bool = True) -> int:
    """Learnable parameters of a batch norm: ``γ`` and ``β`` per channel (running stats are buffers)."""
    return 2 * channels if affine else 0


def conv_macs(in_channels: int, out_channels: int, kernel: tuple[int, int], out_hw: tuple[int, int],
              groups: int = 1) -> int:
    """Multiply-accumulates of one convolution on one image: ``Ho·Wo·C_out·(C_in/groups)·kh·kw``."""
    kh, kw = kernel
    return out_hw[0] * out_hw[1] * out_channels * (in_channels // groups) * kh * kw


def conv_transpose_macs(in_channels: int, out_channels: int, kernel: tuple[int, int], in_hw: tuple[int, int],
                        groups: int = 1) -> int:
    """MACs of a transposed conv on one image: every input pixel scatters ``(C_out/groups)·kh·kw`` per channel."""
    kh, kw = kernel
    return in_hw[0] * in_hw[1] * in_channels * (out_channels // groups) * kh * kw


def linear_macs(in_features: int, out_features: int) -> int:
    """MACs of a dense layer on one vector: ``in·out``."""
    return in_features * out_features


def dense_block_in_channels(m: int, k: int, layer: int) -> int:
    """Input channels of layer ``l`` (1-based) of a dense block with ``m`` input channels and growth ``k``.

    Every layer sees the block input plus the ``k`` maps of each earlier layer: ``m + (l-1)·k``.
    """
    _check_positive("m", m)
    _check_positive("k", k)
    _check_positive("layer", layer)
    return m + (layer - 1) * k


def receptive_field_chain(layers: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int]]:
    """Araujo et al.'s recursion for a plain chain of ``(k, s, p_left, d)`` layers.

    Returns ``(r, j, P)`` after each layer: receptive field, effective stride (jump) and effective
    padding. Valid for convolutions and poolings in a chain; :mod:`vislab.arith.geometry` handles
    branches, transposed convs and upsampling exactly.
    """
    r, j, p_eff = 1, 1, 0
    out = []
    for k, s, p, d in layers:
        r += (effective_kernel(k, d) - 1) * j
        p_eff += p * j
        j *= s
        out.append((r, j, p_eff))
    return out


def _check_groups(in_channels: int, out_channels: int, groups: int) -> None:
    _check_positive("in_channels", in_channels)
    _check_positive("out_channels", out_channels)
    _check_positive("groups", groups)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
                         f"divisible by groups ({groups})")
