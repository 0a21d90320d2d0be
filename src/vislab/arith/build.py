"""The ``nn.Module`` of a layer spec (:func:`build_module`): the layers :func:`vislab.arith.spec.parse_spec` reads,
with the padding :func:`vislab.arith.analyze.resolve_padding` works out for the input size. Imports flow one
way: spec (parsing) → analyze (arithmetic) → build (modules) and trace (modules → arithmetic)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vislab.arith.analyze import analyze_spec, resolve_padding
from vislab.arith.spec import Layer, pair, parse_spec


class Save(nn.Identity):
    """Marks the tensor that :class:`Concat`/:class:`Add` refer to by ``name``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


class Concat(nn.Module):
    """``torch.cat([x, *saved], dim=1)``: channel concatenation with saved tensors."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.names = names

    def forward(self, x: Tensor, *saved: Tensor) -> Tensor:
        return torch.cat([x, *saved], dim=1)  # (B, C + ΣC_saved, H, W)


class Add(nn.Module):
    """``x + Σ saved``: a residual connection."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.names = names

    def forward(self, x: Tensor, *saved: Tensor) -> Tensor:
        for s in saved:
            x = x + s
        return x


class SpecNet(nn.Module):
    """The network a layer spec describes; ``layers[i]`` is spec layer ``i + 1``.

    Input ``Tensor[B, C, H, W]`` (or ``Tensor[B, F]`` for a flat spec).
    """

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        saved: dict[str, Tensor] = {}
        for layer in self.layers:
            if isinstance(layer, Save):
                saved[layer.name] = layer(x)
            elif isinstance(layer, (Concat, Add)):
                x = layer(x, *(saved[n] for n in layer.names))
            else:
                x = layer(x)
        return x


def _activation(name: str, slope: float) -> nn.Module:
    return {
        "relu": nn.ReLU, "relu6": nn.ReLU6, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU,
        "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "hardswish": nn.Hardswish, "identity": nn.Identity,
    }.get(name, lambda: nn.LeakyReLU(slope) if name == "leakyrelu" else nn.Softmax(dim=1))()


def build_module(spec: str | list[Layer], input_shape: str | tuple[int, ...]) -> SpecNet:
    """Build the ``nn.Module`` of a spec for ``input_shape`` (``same`` padding depends on the input size)."""
    layers = parse_spec(spec) if isinstance(spec, str) else list(spec)
    analysis = analyze_spec(layers, input_shape)
    modules: list[nn.Module] = []
    for layer, row in zip(layers, analysis.rows):
        a, in_shape = layer.args, row["input_shape"]
        kind = layer.kind
        if kind in ("conv", "dwconv"):
            c_in = in_shape[0]
            out, groups = (a["out"], a["g"]) if kind == "conv" else (c_in * a["m"], c_in)
            (pt, pb), (pl, pr) = resolve_padding(layer, in_shape[1:])
            conv = nn.Conv2d(c_in, out, pair(a["k"]), pair(a["s"]), 0 if (pt, pl) != (pb, pr) else (pt, pl),
                             pair(a["d"]), groups, bias=a["bias"])
            modules.append(conv if (pt, pl) == (pb, pr) else nn.Sequential(nn.ZeroPad2d((pl, pr, pt, pb)), conv))
        elif kind == "deconv":
            modules.append(nn.ConvTranspose2d(in_shape[0], a["out"], pair(a["k"]), pair(a["s"]), pair(a["p"]),
                                              pair(a["op"]), a["g"], a["bias"], pair(a["d"])))
        elif kind in ("maxpool", "avgpool"):
            (pt, pb), (pl, pr) = resolve_padding(layer, in_shape[1:])
            symmetric = (pt, pl) == (pb, pr)
            pad = (pt, pl) if symmetric else 0
            if kind == "maxpool":
                pool = nn.MaxPool2d(pair(a["k"]), pair(a["s"]), pad, pair(a["d"]), ceil_mode=a["ceil"])
            else:
                pool = nn.AvgPool2d(pair(a["k"]), pair(a["s"]), pad, ceil_mode=a["ceil"])
            fill = float("-inf") if kind == "maxpool" else 0.0
            modules.append(pool if symmetric else nn.Sequential(nn.ConstantPad2d((pl, pr, pt, pb), fill), pool))
        elif kind == "gap":
            modules.append(nn.AdaptiveAvgPool2d(1))
        elif kind == "gmp":
            modules.append(nn.AdaptiveMaxPool2d(1))
        elif kind == "bn":
            modules.append(nn.BatchNorm2d(in_shape[0]) if len(in_shape) == 3 else nn.BatchNorm1d(in_shape[0]))
        elif kind == "act":
            modules.append(_activation(a["name"], a["slope"]))
        elif kind == "dropout":
            modules.append(nn.Dropout(a["p"]))
        elif kind == "pad":
            ph, pw = pair(a["p"])
            modules.append(nn.ZeroPad2d((pw, pw, ph, ph)))
        elif kind == "upsample":
            modules.append(nn.Upsample(scale_factor=a["s"], mode=a["mode"]))
        elif kind == "flatten":
            modules.append(nn.Flatten())
        elif kind == "dense":
            modules.append(nn.Linear(in_shape[0], a["out"], bias=a["bias"]))
        elif kind == "save":
            modules.append(Save(a["names"][0]))
        elif kind == "concat":
            modules.append(Concat(a["names"]))
        elif kind == "add":
            modules.append(Add(a["names"]))
        else:  # pragma: no cover - every kind of _KINDS is handled above
            raise AssertionError(kind)
    return SpecNet(modules)
