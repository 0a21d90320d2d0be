"""Deformable convolution layers over :func:`vislab.ops.deform_conv2d`.

- :class:`DeformConv2d` — torchvision's module: it owns the weights, the caller passes the offsets
  (and the v2 mask) to ``forward(input, offset, mask=None)``.
- :class:`DeformableConv2d` — a drop-in replacement for ``nn.Conv2d`` that predicts its own offsets
  (and mask) with a zero-initialised convolution, so that at initialisation it computes exactly the
  regular convolution and learns to deform from there (Dai et al. 2017, §2.1; Zhu et al. 2019, §3).
- :func:`convert_to_deformable` swaps chosen ``nn.Conv2d`` layers of any model for
  :class:`DeformableConv2d`, copying their weights.
- :func:`deformable_param_groups` gives optimizer parameter groups with a smaller learning rate for
  the offset/mask predictors (the DCN papers train them at 0.1× the base rate).

Both modules keep ``nn.Conv2d``'s positional constructor (``in_channels, out_channels,
kernel_size, stride, padding, dilation, groups, bias``) so that they are drop-in; options that
``nn.Conv2d`` does not have are keyword-only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import Tensor, nn

from vislab.ops.deform_conv import _pair, deform_conv2d

__all__ = ["DeformConv2d", "DeformableConv2d", "convert_to_deformable", "deformable_param_groups"]

# torch.fx.symbolic_trace records a call of the op as one node (a leaf), as torchvision does,
# instead of tracing into its argument checks
torch.fx.wrap("deform_conv2d")

MaskActivation = Literal["2sigmoid", "sigmoid"]
_IntPair = int | tuple[int, int]


def _check_channels(in_channels: int, out_channels: int, groups: int) -> None:
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if in_channels % groups != 0:
        raise ValueError(f"in_channels must be divisible by groups, got in_channels={in_channels}, groups={groups}")
    if out_channels % groups != 0:
        raise ValueError(
            f"out_channels must be divisible by groups, got out_channels={out_channels}, groups={groups}")


def _resolve_padding(padding: _IntPair | str, kernel_size: tuple[int, int], stride: tuple[int, int],
                     dilation: tuple[int, int]) -> tuple[int, int]:
    """``nn.Conv2d``'s padding: an int, a pair, ``"valid"`` or ``"same"`` (symmetric cases only)."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        if stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1 (as in nn.Conv2d), got stride={stride}")
        total = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
        if any(t % 2 for t in total):
            raise ValueError(
                f"padding='same' with kernel {kernel_size} and dilation {dilation} needs asymmetric "
                "padding, which deformable convolution does not support; pass explicit padding")
        return (total[0] // 2, total[1] // 2)
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    return _pair(padding, "padding", 0)


class DeformConv2d(nn.Module):
    """torchvision-compatible deformable convolution: offsets (and mask) come from the caller.

    ``forward(input, offset, mask=None)``: ``input`` is ``Tensor[B, C_in, H, W]``, ``offset``
    ``Tensor[B, 2·G·kh·kw, Ho, Wo]``, ``mask`` ``Tensor[B, G·kh·kw, Ho, Wo]`` or None (v1); returns
    ``Tensor[B, C_out, Ho, Wo]``. Parameters and their initialisation are those of
    ``torchvision.ops.DeformConv2d`` (and ``nn.Conv2d``), so state dicts are interchangeable.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _IntPair, stride: _IntPair = 1,
                 padding: _IntPair = 0, dilation: _IntPair = 1, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        _check_channels(in_channels, out_channels, groups)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        self.dilation = _pair(dilation, "dilation", 1)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's (and torchvision's) initialisation
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.weight.shape[2] * self.weight.shape[3]
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        return deform_conv2d(input, offset, self.weight, self.bias, stride=self.stride,
                             padding=self.padding, dilation=self.dilation, mask=mask)

    def __repr__(self) -> str:
        s = (f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
             f"kernel_size={self.kernel_size}, stride={self.stride}")
        s += f", padding={self.padding}" if self.padding != (0, 0) else ""
        s += f", dilation={self.dilation}" if self.dilation != (1, 1) else ""
        s += f", groups={self.groups}" if self.groups != 1 else ""
        s += ", bias=False" if self.bias is None else ""
        return s + ")"


class DeformableConv2d(nn.Module):
    """Drop-in ``nn.Conv2d`` replacement that learns where to sample (DCN v2, or v1 with
    ``modulated=False``).

    An ``offset_conv`` with the same kernel, stride, padding and dilation reads the input and
    predicts, per output pixel, ``2·G·kh·kw`` offsets and (if ``modulated``) ``G·kh·kw`` mask logits
    (``G = offset_groups``). It is zero-initialised: offsets start at 0 and the mask at
    ``2·sigmoid(0) = 1``, so a fresh layer equals the regular convolution with the same weights.
    ``mask_activation="sigmoid"`` is the original DCNv2 choice (mask 0.5 at initialisation).

    ``forward(input)``: ``Tensor[B, C_in, H, W]`` → ``Tensor[B, C_out, Ho, Wo]``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _IntPair, stride: _IntPair = 1,
                 padding: _IntPair | str = 0, dilation: _IntPair = 1, groups: int = 1, bias: bool = True,
                 *, modulated: bool = True, offset_groups: int = 1,
                 mask_activation: MaskActivation = "2sigmoid") -> None:
        super().__init__()
        _check_channels(in_channels, out_channels, groups)
        if isinstance(offset_groups, bool) or not isinstance(offset_groups, int) or offset_groups <= 0 \
                or in_channels % offset_groups != 0:
            raise ValueError(
                f"offset_groups must be a positive divisor of in_channels={in_channels}, got {offset_groups!r}")
        if mask_activation not in ("2sigmoid", "sigmoid"):
            raise ValueError(f"mask_activation must be '2sigmoid' or 'sigmoid', got {mask_activation!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.dilation = _pair(dilation, "dilation", 1)
        self.padding = _resolve_padding(padding, self.kernel_size, self.stride, self.dilation)
        self.modulated, self.offset_groups, self.mask_activation = modulated, offset_groups, mask_activation
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        # one conv predicts [offsets (2·G·K channels) | mask logits (G·K channels)]
        self.offset_conv = nn.Conv2d(in_channels, (3 if modulated else 2) * offset_groups * taps,
                                     self.kernel_size, self.stride, self.padding, self.dilation)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)

    def offset_and_mask(self, input: Tensor) -> tuple[Tensor, Tensor | None]:
        """The predicted ``offset`` ``Tensor[B, 2·G·kh·kw, Ho, Wo]`` and ``mask``
        ``Tensor[B, G·kh·kw, Ho, Wo]`` (None when not modulated) for ``input``."""
        out = self.offset_conv(input)
        if not self.modulated:
            return out, None
        n = 2 * self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        # split, not two slices: its backward writes both gradients into one tensor (two slices' backward
        # each fill a zero tensor of the whole output and add them: ~4 % of a deform-all training step)
        offset, logits = out.split([n, out.shape[1] - n], dim=1)
        mask = torch.sigmoid(logits)
        return offset, (2 * mask if self.mask_activation == "2sigmoid" else mask)

    def forward(self, input: Tensor) -> Tensor:
        offset, mask = self.offset_and_mask(input)
        return deform_conv2d(input, offset, self.weight, self.bias, stride=self.stride,
                             padding=self.padding, dilation=self.dilation, mask=mask)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        s += f", dilation={self.dilation}" if self.dilation != (1, 1) else ""
        s += f", groups={self.groups}" if self.groups != 1 else ""
        s += ", bias=False" if self.bias is None else ""
        s += f", modulated={self.modulated}, offset_groups={self.offset_groups}"
        return s + (f", mask_activation={self.mask_activation!r}" if self.modulated else "")

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, *, modulated: bool = True, offset_groups: int = 1,
                  mask_activation: MaskActivation = "2sigmoid") -> DeformableConv2d:
        """A layer with ``conv``'s hyper-parameters, weights, device and dtype (equal to it at init)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"only padding_mode='zeros' can be made deformable, got {conv.padding_mode!r}")
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None, modulated=modulated,
                    offset_groups=offset_groups, mask_activation=mask_activation)
        layer.to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        layer.train(conv.training)
        return layer


LayerSelector = Iterable[str] | Callable[[str, nn.Conv2d], bool] | None


def _default_selection(name: str, conv: nn.Conv2d) -> bool:
    return conv.kernel_size == (3, 3) and conv.stride in ((1, 1), (2, 2)) and conv.padding_mode == "zeros"


def convert_to_deformable(model: nn.Module, layers: LayerSelector = None, *, modulated: bool = True,
                          offset_groups: int = 1, mask_activation: MaskActivation = "2sigmoid") -> nn.Module:
    """Replace chosen ``nn.Conv2d`` layers of ``model`` (in place) by :class:`DeformableConv2d`
    with the same weights, and return ``model``.

    ``layers`` selects them:

    - ``None``: every 3×3 convolution with stride 1 or 2 (and zero padding mode);
    - a list of module names as in ``model.named_modules()`` (e.g. ``["features.0", "layer1.0.conv2"]``),
      each of which must be an ``nn.Conv2d``;
    - a callable ``(name, conv) -> bool`` called for every ``nn.Conv2d``.

    Convolutions inside existing deformable layers (their offset predictors) are never touched.
    Since the new layers start with zero offsets (and a unit mask), the converted model computes the
    same function as before until it is trained. Raises ValueError if nothing is selected.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    convs: dict[str, nn.Conv2d] = {}
    inside_deformable: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, DeformableConv2d | DeformConv2d):
            inside_deformable.append(name + ".")
        elif isinstance(module, nn.Conv2d) and not any(name.startswith(p) for p in inside_deformable):
            convs[name] = module
    if layers is None or callable(layers):
        select = _default_selection if layers is None else layers
        chosen = [name for name, conv in convs.items() if select(name, conv)]
        if not chosen:
            what = "is a 3×3 nn.Conv2d with stride 1 or 2" if layers is None else "matches the selector"
            raise ValueError(f"no nn.Conv2d layer of the model {what}; its convolutions are {list(convs)}")
    else:
        if isinstance(layers, str):
            raise TypeError(f"layers must be a list of module names, a callable or None, got the string {layers!r}")
        chosen = list(layers)
        if not chosen:
            raise ValueError("layers is an empty list: name at least one nn.Conv2d to convert")
        modules = dict(model.named_modules())
        for name in chosen:
            if name not in convs:
                kind = "not a module of the model" if name not in modules else \
                    f"a {type(modules[name]).__name__}, not a convertible nn.Conv2d"
                raise ValueError(f"layer {name!r} is {kind}; the model's nn.Conv2d layers are {list(convs)}")
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, DeformableConv2d.from_conv(
            convs[name], modulated=modulated, offset_groups=offset_groups, mask_activation=mask_activation))
    return model


def deformable_param_groups(model: nn.Module, *, lr: float, offset_lr_mult: float = 0.1,
                            weight_decay: float | None = None) -> list[dict]:
    """Optimizer parameter groups: everything at ``lr``, the offset/mask predictors of every
    :class:`DeformableConv2d` at ``lr · offset_lr_mult``.

    ``torch.optim.SGD(deformable_param_groups(model, lr=0.01), momentum=0.9)``. Empty groups are
    left out; ``weight_decay``, when given, is set on both groups.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not offset_lr_mult >= 0:
        raise ValueError(f"offset_lr_mult must be >= 0, got {offset_lr_mult!r}")
    offset_ids = {id(p) for m in model.modules() if isinstance(m, DeformableConv2d)
                  for p in m.offset_conv.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    base = [p for p in params if id(p) not in offset_ids]
    offsets = [p for p in params if id(p) in offset_ids]
    extra = {} if weight_decay is None else {"weight_decay": weight_decay}
    groups = []
    if base:
        groups.append({"params": base, "lr": lr, **extra})
    if offsets:
        groups.append({"params": offsets, "lr": lr * offset_lr_mult, **extra})
    return groups
