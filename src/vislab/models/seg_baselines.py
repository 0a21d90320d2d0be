"""Baselines for box-prompted segmentation, on the same prompts as the models.

* ``box`` -- the prompt box itself, filled: every pixel whose centre lies inside the box.
* ``grabcut`` -- OpenCV's GrabCut (``cv2.grabCut``, ``GC_INIT_WITH_RECT``) initialised with the same box:
  outside the box is background, inside probably foreground; colour GMMs and a graph cut refine it for a few
  iterations. OpenCV's RNG (used by the k-means that seeds the GMMs) is re-seeded with ``cv2.setRNGSeed``
  before every call, so a prompt's result does not depend on the order of the calls.

Boxes are ``Tensor[N, 4]`` XYXY in continuous pixel coordinates (see ``vislab.data.masks``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["box_masks", "box_pixel_rect", "grabcut_masks"]


def box_pixel_rect(box: Tensor | tuple[float, ...], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(x, y, w, h)``: the pixels whose centres lie inside ``box`` (clipped to the ``(H, W)`` image)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    h, w = size
    c0 = max(0, math.ceil(x0 - 0.5))
    r0 = max(0, math.ceil(y0 - 0.5))
    c1 = min(w - 1, math.floor(x1 - 0.5))
    r1 = min(h - 1, math.floor(y1 - 0.5))
    return c0, r0, max(0, c1 - c0 + 1), max(0, r1 - r0 + 1)


def box_masks(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """The ``box`` baseline: ``Tensor[N, 4]`` boxes → ``Tensor[N, H, W]`` bool masks filling each box."""
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be Tensor[N, 4], got {tuple(boxes.shape)}")
    h, w = size
    out = torch.zeros(boxes.shape[0], h, w, dtype=torch.bool)
    for i, b in enumerate(boxes):
        x, y, bw, bh = box_pixel_rect(b, size)
        out[i, y:y + bh, x:x + bw] = True
    return out


def grabcut_masks(image: Tensor | np.ndarray, boxes: Tensor, *, iterations: int = 5,
                  seed: int = 0) -> tuple[Tensor, list[int]]:
    """The ``grabcut`` baseline for every box of one image.

    Args:
        image: ``Tensor[3, H, W]`` uint8 RGB (or a ``uint8[H, W, 3]`` RGB array).
        boxes: ``Tensor[N, 4]`` XYXY prompts on that image.
        iterations: GrabCut iterations (``iterCount``).
        seed: ``cv2.setRNGSeed`` value, set before each call.

    Returns:
        ``(masks Tensor[N, H, W] bool, failed)``: pixels labelled (probably) foreground; ``failed`` lists the
        boxes GrabCut cannot run on (a box that leaves no background pixel, or fewer than 2 pixels inside);
        their mask is the filled box, and the caller reports how many there were.
    """
    import cv2

    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be Tensor[N, 4], got {tuple(boxes.shape)}")
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"image must be a uint8 Tensor[3, H, W], got {image.dtype} {tuple(image.shape)}")
        rgb = image.permute(1, 2, 0).numpy()  # (H, W, 3)
    else:
        rgb = np.asarray(image)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"image must be uint8[H, W, 3], got {rgb.dtype} {rgb.shape}")
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    h, w = bgr.shape[:2]
    out = torch.zeros(boxes.shape[0], h, w, dtype=torch.bool)
    failed: list[int] = []
    for i, b in enumerate(boxes):
        x, y, bw, bh = box_pixel_rect(b, (h, w))
        if bw * bh < 2 or bw * bh >= h * w:
            failed.append(i)
            out[i, y:y + bh, x:x + bw] = True
            continue
        mask = np.zeros((h, w), np.uint8)
        bgd = np.zeros((1, 65), np.float64)
        fgd = np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(seed)
        try:
            cv2.grabCut(bgr, mask, (x, y, bw, bh), bgd, fgd, iterations, cv2.GC_INIT_WITH_RECT)
        except cv2.error:
            failed.append(i)
            out[i, y:y + bh, x:x + bw] = True
            continue
        out[i] = torch.from_numpy((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD))
    return out, failed
