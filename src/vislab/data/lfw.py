"""Embedded two-class set: faces vs non-faces from scikit-image's ``lfw_subset`` (offline).

``skimage.data.lfw_subset()`` loads ``skimage/data/lfw_subset.npy``, which ships inside the
scikit-image wheel (no download): 200 grayscale 25x25 crops, the first 100 faces from Labeled Faces
in the Wild (http://vis-www.cs.umass.edu/lfw/) and the last 100 non-faces cut from the backgrounds
of the same photos. The array is float64 in [0, 1] (its docstring says uint8; the file holds floats).

Images are resized, quantised to 8 bits (at most 0.5/255 from the float values) and repeated to 3
channels, so they enter the same transforms as every other dataset (``vislab.data.transforms`` takes
uint8 ``Tensor[3, S, S]``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

__all__ = ["LFW_CLASS_NAMES", "TensorImageDataset", "lfw_faces_vs_nonfaces"]

LFW_CLASS_NAMES = ("non-face", "face")  # label 0, label 1
_NUM_FACES = 100  # lfw_subset(): images 0..99 are faces, 100..199 non-faces


def lfw_faces_vs_nonfaces(
    *, image_size: int = 224, seed: int | None = 0
) -> tuple[Tensor, Tensor, tuple[str, str]]:
    """The 200 ``lfw_subset`` crops as a labelled RGB set.

    Args:
        image_size: side S of the output (bilinear, antialiased resize from 25x25).
        seed: order the samples by a permutation seeded with it; ``None`` keeps the file order
            (100 faces, then 100 non-faces).

    Returns:
        ``(images, labels, class_names)``: ``images`` ``Tensor[200, 3, S, S]`` uint8 (the gray value in
        all three channels), ``labels`` ``Tensor[200]`` int64 with 1 = face and 0 = non-face,
        ``class_names = ("non-face", "face")``.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    from skimage.data import lfw_subset  # imported here: scikit-image is slow to import

    gray = torch.from_numpy(lfw_subset()).to(torch.float32)  # (200, 25, 25) in [0, 1]
    if gray.ndim != 3 or gray.shape[0] != 2 * _NUM_FACES:
        got = tuple(gray.shape)
        raise ValueError(f"skimage.data.lfw_subset() returned shape {got}, expected (200, 25, 25)")
    gray = gray[:, None]  # (200, 1, 25, 25)
    if image_size != gray.shape[-1]:
        gray = TF.resize(gray, [image_size, image_size], antialias=True)  # (200, 1, S, S)
    images = (gray.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)  # (200, 3, S, S)
    labels = (torch.arange(2 * _NUM_FACES) < _NUM_FACES).to(torch.int64)  # faces first -> 1
    if seed is not None:
        order = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))
        images, labels = images[order], labels[order]
    return images, labels, LFW_CLASS_NAMES


class TensorImageDataset(Dataset):
    """In-memory images with labels; item ``i`` is ``(image, label)``.

    Args:
        images: ``Tensor[N, C, H, W]``, uint8 or floating point in [0, 1].
        labels: ``Tensor[N]`` integer (or a sequence of ints).
        transform: callable applied to ``images[i]`` as stored (uint8 for the datasets here, as
            ``vislab.data.transforms`` expects), returning a float tensor. Without it uint8 images come
            out as float32 in [0, 1] and float images unchanged.

    Attributes:
        images, labels: as given (labels as an int64 tensor).
    """

    def __init__(
        self, images: Tensor, labels: Tensor, *, transform: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        if not isinstance(images, Tensor) or images.ndim != 4:
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a Tensor[N, C, H, W], got {got}")
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels must have shape [N] = [{images.shape[0]}] to match the images, "
                f"got {tuple(labels.shape)}"
            )
        if labels.is_floating_point():
            raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = self.images[i]  # (C, H, W)
        if self.transform is not None:
            img = self.transform(img)
        elif img.dtype == torch.uint8:
            img = img.to(torch.float32) / 255.0
        return img, int(self.labels[i])
