"""Grad-CAM (Selvaraju et al., 2017) on any convolutional layer, batched.

For a target class c and a layer with activations ``A[B, K, h, w]``, the class score's gradient
``dy_c/dA`` is averaged over space to give one weight per channel, ``alpha[B, K]``; the map is
``ReLU(sum_k alpha_k A_k)``, upsampled bilinearly to the input size and min-max scaled to [0, 1]
per image (the same steps and scaling as pytorch-grad-cam's ``GradCAM``, which the tests compare
against).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def last_conv_name(model: nn.Module) -> str:
    """Module name of the last ``nn.Conv2d`` in registration order (the default Grad-CAM layer)."""
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            name = n
    if name is None:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer to compute Grad-CAM on")
    return name


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> tuple[str, nn.Module]:
    if layer is None:
        layer = last_conv_name(model)
    if isinstance(layer, nn.Module):
        for n, m in model.named_modules():
            if m is layer:
                return n, m
        raise ValueError("the given layer module is not part of the model")
    modules = dict(model.named_modules())
    if layer not in modules:
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        raise ValueError(f"model has no layer named {layer!r}; conv layers: {', '.join(convs[-8:])}")
    return layer, modules[layer]


class GradCAM:
    """``cams, logits = GradCAM(model, layer)(x, targets=None)``.

    Args:
        model: any classifier ``Tensor[B, 3, H, W] → Tensor[B, num_classes]``.
        layer: module name (``"features.8"``), the module itself, or None for the last ``nn.Conv2d``.

    Call with ``x: Tensor[B, 3, H, W]`` and optional ``targets: Tensor[B]`` (class per image; default
    the predicted class). Returns ``cams: Tensor[B, H, W]`` in [0, 1] and the logits.
    """

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None) -> None:
        self.model = model
        self.layer_name, self.layer = resolve_layer(model, layer)

    def __call__(self, x: Tensor, targets: Tensor | Sequence[int] | None = None, *,
                 upsample: bool = True) -> tuple[Tensor, Tensor]:
        if x.ndim != 4:
            raise ValueError(f"expected images Tensor[B, C, H, W], got shape {tuple(x.shape)}")
        acts: list[Tensor] = []
        grads: list[Tensor] = []

        def hook(_m: nn.Module, _inp: object, out: Tensor) -> None:
            acts.append(out.detach())
            out.register_hook(grads.append)

        handle = self.layer.register_forward_hook(hook)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)  # ensures a graph even if the layer's params are frozen
                logits = self.model(x)
                if logits.ndim != 2:
                    raise ValueError(f"model must return logits Tensor[B, classes], got {tuple(logits.shape)}")
                if targets is None:
                    t = logits.argmax(1)
                else:
                    t = torch.as_tensor(targets, device=logits.device).long().view(-1)
                    if t.numel() != logits.shape[0]:
                        raise ValueError(f"targets must have one class per image ({logits.shape[0]}), got {t.numel()}")
                score = logits.gather(1, t[:, None]).sum()
                self.model.zero_grad(set_to_none=True)
                score.backward()
        finally:
            handle.remove()
            self.model.train(was_training)
        if not acts or not grads:
            raise ValueError(f"layer {self.layer_name!r} was not used in the forward pass")
        a, g = acts[-1], grads[0]  # (B, K, h, w) each; backward reaches the last use first
        weights = g.mean(dim=(2, 3), keepdim=True)  # (B, K, 1, 1)
        cam = F.relu((weights * a).sum(1))  # (B, h, w)
        if upsample:
            cam = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return _minmax(cam), logits.detach()


def _minmax(cam: Tensor) -> Tensor:
    flat = cam.flatten(1)
    lo = flat.min(1, keepdim=True).values
    flat = flat - lo
    hi = flat.max(1, keepdim=True).values
    # exact min-max scaling (an all-zero map stays zero); an epsilon added to hi would shrink maps of
    # small magnitude, as in untrained networks' early layers
    return (flat / torch.where(hi > 0, hi, torch.ones_like(hi))).view_as(cam)


def cam_peak(cam: Tensor) -> tuple[int, int]:
    """(x, y) pixel of a map's maximum."""
    h, w = cam.shape[-2:]
    idx = int(cam.flatten().argmax())
    return idx % w, idx // w


def pointing_game(cams: Tensor, boxes: Sequence[Sequence[float]], *, tolerance: float = 0.0) -> list[bool]:
    """For each map, whether its peak falls inside the object's box ``[x0, y0, x1, y1]`` (pixels of the
    map's frame), optionally grown by ``tolerance`` pixels (Zhang et al. use 15 px at 224)."""
    hits = []
    for cam, (x0, y0, x1, y1) in zip(cams, boxes):
        px, py = cam_peak(cam)
        # the peak pixel's centre is at (px + 0.5, py + 0.5) in continuous coordinates
        cx, cy = px + 0.5, py + 0.5
        hits.append(x0 - tolerance <= cx <= x1 + tolerance and y0 - tolerance <= cy <= y1 + tolerance)
    return hits


def overlay(image: np.ndarray | Tensor, cam: np.ndarray | Tensor, *, alpha: float = 0.45,
            colormap: str = "jet") -> np.ndarray:
    """Blend a ``[0, 1]`` heat map over an RGB image (``H×W×3`` floats in [0, 1] or ``Tensor[3, H, W]``)."""
    import matplotlib

    if isinstance(image, Tensor):
        image = image.detach().cpu().permute(1, 2, 0).numpy() if image.ndim == 3 and image.shape[0] == 3 \
            else image.detach().cpu().numpy()
    if isinstance(cam, Tensor):
        cam = cam.detach().cpu().numpy()
    image = np.asarray(image, dtype=np.float32)
    if image.max() > 1.0:
        image = image / 255.0
    heat = matplotlib.colormaps[colormap](np.clip(cam, 0, 1))[..., :3]
    return np.clip((1 - alpha) * image + alpha * heat, 0, 1)
