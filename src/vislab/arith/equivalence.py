"""Two convolutions that are really dense layers, built as the equivalent ``nn.Linear``.

* A 1×1 convolution (stride 1, no padding, one group) applies the same ``C_out × C_in`` matrix to
  every pixel: it is a per-pixel linear layer on ``Tensor[B, H, W, C_in]``.
* A convolution whose kernel covers the whole ``H×W`` input (no padding) has one output position
  that reads every input value once: it is a fully connected layer on the flattened input
  ``Tensor[B, C_in·H·W]``, with exactly the same parameters (``C_out·C_in·H·W + C_out``).
"""

from __future__ import annotations

import torch
from torch import nn


def conv1x1_as_linear(conv: nn.Conv2d) -> nn.Linear:
    """The ``nn.Linear(C_in, C_out)`` that equals a 1×1 ``conv`` applied at every pixel (weights shared)."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
    if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding not in ((0, 0), "valid") \
            or conv.groups != 1:
        raise ValueError(f"expected a 1x1 conv with stride 1, no padding and groups=1, got kernel "
                         f"{conv.kernel_size}, stride {conv.stride}, padding {conv.padding}, groups {conv.groups}")
    linear = nn.Linear(conv.in_channels, conv.out_channels, bias=conv.bias is not None)
    with torch.no_grad():
        linear.weight.copy_(conv.weight[:, :, 0, 0])  # (C_out, C_in)
        if conv.bias is not None:
            linear.bias.copy_(conv.bias)
    return linear


def full_conv_as_linear(conv: nn.Conv2d, input_hw: tuple[int, int]) -> nn.Linear:
    """The ``nn.Linear(C_in·H·W, C_out)`` that equals ``conv`` when its kernel covers the ``H×W`` input."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
    if tuple(conv.kernel_size) != tuple(input_hw) or conv.padding not in ((0, 0), "valid") or conv.groups != 1 \
            or conv.dilation != (1, 1):
        raise ValueError(f"expected an unpadded, undilated, single-group conv whose kernel equals the input size "
                         f"{tuple(input_hw)}, got kernel {conv.kernel_size}, padding {conv.padding}, "
                         f"dilation {conv.dilation}, groups {conv.groups}")
    c_in, (h, w) = conv.in_channels, conv.kernel_size
    linear = nn.Linear(c_in * h * w, conv.out_channels, bias=conv.bias is not None)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.reshape(conv.out_channels, c_in * h * w))  # (C_out, C_in·H·W)
        if conv.bias is not None:
            linear.bias.copy_(conv.bias)
    return linear
