"""DenseNet (Huang et al. 2017, https://arxiv.org/abs/1608.06993) with configurable depth, growth rate,
bottleneck and compression.

In a dense block every layer receives the concatenation of the block input (``m`` channels) and
the ``k`` new maps of every earlier layer, so layer ``l`` sees ``m + (l-1)·k`` channels and the block
outputs ``m + L·k``. A layer is BN → ReLU → 3×3 conv (``k`` maps), preceded in the bottleneck
("B") variant by BN → ReLU → 1×1 conv to ``bn_size·k`` maps. Transitions between blocks are BN →
ReLU → 1×1 conv to ``floor(θ·m)`` channels (compression θ, the "C" variant) → 2×2 average pooling.

Module names follow torchvision's ``densenet.py`` (``features.denseblock1.denselayer1.conv1``...), so
a torchvision DenseNet checkpoint loads into the same configuration.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vislab.models._registry import register_model


class DenseLayer(nn.Module):
    """``Tensor[B, C_in, H, W] → Tensor[B, k, H, W]``: the ``k`` new maps a layer adds to the block."""

    def __init__(self, in_channels: int, *, growth_rate: int, bn_size: int | None = 4, drop_rate: float = 0.0) -> None:
        super().__init__()
        c = in_channels
        if bn_size:
            self.norm1 = nn.BatchNorm2d(c)
            self.relu1 = nn.ReLU(inplace=True)
            self.conv1 = nn.Conv2d(c, bn_size * growth_rate, kernel_size=1, bias=False)
            c = bn_size * growth_rate
        self.norm2 = nn.BatchNorm2d(c)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, growth_rate, kernel_size=3, padding=1, bias=False)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "conv1"):
            x = self.conv1(self.relu1(self.norm1(x)))  # (B, bn_size·k, H, W)
        return self.dropout(self.conv2(self.relu2(self.norm2(x))))  # (B, k, H, W)


class DenseBlock(nn.ModuleDict):
    """``Tensor[B, m, H, W] → Tensor[B, m + L·k, H, W]``; layer ``l`` reads ``m + (l-1)·k`` channels."""

    def __init__(self, num_layers: int, in_channels: int, *, growth_rate: int, bn_size: int | None = 4,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(in_channels + i * growth_rate, growth_rate=growth_rate,
                                                             bn_size=bn_size, drop_rate=drop_rate))

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(torch.cat(features, dim=1)))  # new: (B, k, H, W)
        return torch.cat(features, dim=1)  # (B, m + L·k, H, W)


class Transition(nn.Sequential):
    """BN → ReLU → 1×1 conv → 2×2 average pool: ``Tensor[B, C_in, H, W] → Tensor[B, C_out, H/2, W/2]``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(in_channels))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False))
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


class DenseNet(nn.Module):
    """DenseNet classifier: ``Tensor[B, in_channels, H, W] → Tensor[B, num_classes]`` logits.

    Args:
        block_config: layers per dense block (DenseNet-121: ``(6, 12, 24, 16)``).
        growth_rate: ``k``, maps added by every layer.
        init_features: channels after the stem (``m`` of the first block).
        bn_size: bottleneck width factor (1×1 conv to ``bn_size·k``); ``None`` or 0 for no bottleneck.
        compression: θ, transitions keep ``floor(θ·m)`` channels (1.0 = no compression).
        stem: ``"imagenet"`` (7×7/2 conv + 3×3/2 max pool) or ``"cifar"`` (one 3×3 conv, no pooling).
        drop_rate: dropout after every dense layer.
    """

    def __init__(self, *, block_config: tuple[int, ...] = (6, 12, 24, 16), growth_rate: int = 32,
                 init_features: int = 64, bn_size: int | None = 4, compression: float = 0.5,
                 stem: str = "imagenet", drop_rate: float = 0.0, in_channels: int = 3, num_classes: int = 1000) -> None:
        super().__init__()
        block_config = tuple(block_config)
        if not block_config or any(not isinstance(n, int) or n < 1 for n in block_config):
            raise ValueError(f"block_config must be a non-empty sequence of positive ints, got {block_config!r}")
        if not isinstance(growth_rate, int) or growth_rate < 1:
            raise ValueError(f"growth_rate must be a positive int, got {growth_rate!r}")
        if not 0 < compression <= 1:
            raise ValueError(f"compression must be in (0, 1], got {compression!r}")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        if stem == "imagenet":
            layers = [("conv0", nn.Conv2d(in_channels, init_features, kernel_size=7, stride=2, padding=3, bias=False)),
                      ("norm0", nn.BatchNorm2d(init_features)), ("relu0", nn.ReLU(inplace=True)),
                      ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))]
        else:
            layers = [("conv0", nn.Conv2d(in_channels, init_features, kernel_size=3, padding=1, bias=False))]
        self.features = nn.Sequential()
        for name, module in layers:
            self.features.add_module(name, module)
        c = init_features
        for i, n in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(n, c, growth_rate=growth_rate, bn_size=bn_size,
                                                                      drop_rate=drop_rate))
            c += n * growth_rate
            if i != len(block_config) - 1:
                out = math.floor(compression * c)
                self.features.add_module(f"transition{i + 1}", Transition(c, out))
                c = out
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(c, num_classes)
        self.num_features = c
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.features(x))  # (B, C, H/32, W/32) for the ImageNet stem
        return self.classifier(self.flatten(self.pool(x)))  # (B, num_classes)


@register_model("densenet")
def densenet(*, block_config: tuple[int, ...] = (6, 12, 24, 16), growth_rate: int = 32, init_features: int = 64,
             **kwargs) -> DenseNet:
    """DenseNet-BC; the defaults are DenseNet-121."""
    return DenseNet(block_config=block_config, growth_rate=growth_rate, init_features=init_features, **kwargs)


@register_model("densenet_cifar")
def densenet_cifar(*, depth: int = 100, growth_rate: int = 12, num_classes: int = 10, bottleneck: bool = True,
                   **kwargs) -> DenseNet:
    """DenseNet(-BC) for 32×32 images: 3 blocks, ``depth = 6n + 4`` with a bottleneck (``3n + 4`` without)."""
    per_layer = 2 if bottleneck else 1
    if not isinstance(depth, int) or (depth - 4) % (3 * per_layer) or depth <= 4:
        raise ValueError(f"depth must be {3 * per_layer}n + 4 (e.g. {'100' if bottleneck else '40'}) "
                         f"for {'a bottleneck' if bottleneck else 'no bottleneck'}, got {depth!r}")
    n = (depth - 4) // (3 * per_layer)
    kwargs.setdefault("compression", 0.5 if bottleneck else 1.0)
    return DenseNet(block_config=(n, n, n), growth_rate=growth_rate, init_features=2 * growth_rate,
                    bn_size=4 if bottleneck else None, stem="cifar", num_classes=num_classes, **kwargs)
