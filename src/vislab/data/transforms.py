"""Transforms on uint8 ``Tensor[3, H, W]`` images (torchvision v2).

``train_transform`` applies SPEC §1's augmentations (rotation ±40°, shifts 0.2, shear 0.2, zoom 0.2,
horizontal flip, as in Keras' ``ImageDataGenerator`` recipe); ``eval_transform`` only normalises.
Images arrive already resized (the dataset caches them at ``image_size``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def eval_transform(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def train_transform(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, *,
                    rotation: float = 40.0, shift: float = 0.2, shear: float = 0.2, zoom: float = 0.2,
                    hflip: bool = True) -> v2.Compose:
    """Random affine (rotation in degrees, shift as a fraction of the size, shear in radians as Keras'
    ``shear_range``, zoom as ±fraction) + horizontal flip, then normalisation. Areas uncovered by the
    affine are filled with the normalisation mean colour, i.e. zero after normalisation."""
    ops: list[v2.Transform] = [
        v2.RandomAffine(degrees=rotation, translate=(shift, shift), scale=(1 - zoom, 1 + zoom),
                        shear=math.degrees(shear), interpolation=v2.InterpolationMode.BILINEAR,
                        fill=tuple(int(round(255 * m)) for m in mean)),
    ]
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)


def denormalize(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    """``Tensor[..., 3, H, W]`` normalised → floats in [0, 1] for display."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * s + m).clamp(0, 1)
