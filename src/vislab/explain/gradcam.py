"""Grad-CAM (Selvaraju et al., 2017) on any convolutional layer, batched.

For a target class c and a layer with activations ``A[B, K, h, w]``, the class score's gradient
``dy_c/dA`` is averaged over space to give one weight per channel, ``alpha[B, K]``; the map is
``ReLU(sum_k alpha_k A_k)``, min-max scaled, upsampled bilinearly to the input size and min-max scaled
to [0, 1] per image again (the same steps and scaling as pytorch-grad-cam's ``GradCAM``, which the tests
compare against; :mod:`vislab.explain._cam_base` has the shared steps).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from vislab.explain._cam_base import BaseCAM, last_conv_name, resolve_layer, scale_maps

__all__ = ["GradCAM", "cam_peak", "last_conv_name", "overlay", "pointing_game", "resolve_layer", "scale_maps"]


class GradCAM(BaseCAM):
    """Grad-CAM: ``cams, logits = GradCAM(model, layer)(x, targets=None)``.

    Args:
        model: any classifier ``Tensor[B, 3, H, W] → Tensor[B, num_classes]``.
        layer: module name (``"features.8"``), the module itself, or None for the last ``nn.Conv2d``.
        reshape_transform: for token layers, e.g. :func:`vislab.explain.cams.token_grid`.

    Call with ``x: Tensor[B, 3, H, W]`` and optional ``targets: Tensor[B]`` (class per image; default
    the predicted class). Returns ``cams: Tensor[B, H, W]`` in [0, 1] and the logits. The other methods
    of the family, with the same call, are in :mod:`vislab.explain.cams`.
    """

    name = "gradcam"

    def weights(self, images: Tensor, acts: Tensor, grads: Tensor | None, targets: Tensor) -> Tensor:
        return grads.mean(dim=(2, 3))  # (B, K): the spatially averaged gradient


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
