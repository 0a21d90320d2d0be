"""Prompt datasets of the ``sam-finetune`` experiment, on the frozen encoder's embedding cache.

SAM's image encoder is frozen while its decoder trains, so every image is encoded once: :func:`build_views`
augments each training image ``copies`` times (view 0 is the image itself; the others are joint
``torchvision.transforms.v2`` flips + brightness/contrast that move masks and boxes too, :class:`JointAugment`)
and stores the encoder's output for every view as float16 (:class:`PromptViews`). Epochs then read the cache:

* :class:`TrainPrompts` — one item per object, in a view drawn anew each epoch, its box jittered anew;
* :class:`FixedPrompts` — every object of view 0 with one fixed jittered box, the same for every model and
  baseline (:func:`deepest_point` gives its fixed point prompt: the simulated-click protocol's first click).

Boxes are continuous XYXY of the ``S × S`` image (``vislab.data.masks.mask_boxes``); points continuous XY
(the centre of pixel row ``r``, column ``c`` is ``(c + 0.5, r + 0.5)``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from vislab.data.masks import JointAugment, MaskSample, jitter_boxes, mask_boxes

__all__ = ["FixedPrompts", "PromptViews", "TrainPrompts", "augmented_views", "build_views", "deepest_point",
           "view_seed"]


def view_seed(seed: int, image: int, view: int) -> int:
    """The seed of augmented view ``view`` of image ``image`` (independent streams per image and view)."""
    return int(np.random.SeedSequence([seed, image, view]).generate_state(1)[0])


@dataclass
class PromptViews:
    """The encoded views of one split's images and their objects: the embedding cache.

    ``features[v]`` is the frozen encoder's output for view ``v`` (stored as float16), ``instances[v]`` its
    object map and ``boxes[v, k - 1]`` the tight box of object ``k`` in that view (views of one image are
    flipped copies, so boxes move with the objects). ``objects[j] = (image, k)`` is prompt ``j``.
    """

    features: Tensor  # Tensor[V, C, h, w] float16
    instances: Tensor  # Tensor[V, S, S] uint8 / int16
    boxes: Tensor  # Tensor[V, K_max, 4] float32
    views: list[list[int]]  # per image of the split: its view indices; views[i][0] is the image itself
    objects: list[tuple[int, int]]  # per prompt: (image index in the split, object id 1..n)
    kinds: list[str]  # per prompt: the object's shape label
    stems: list[str]  # per image
    encode_s: float = 0.0  # seconds the encoder took for all views
    images: list[Tensor] = field(default_factory=list)  # per image: view 0 (uint8 Tensor[3, S, S])


def augmented_views(sample: MaskSample, *, copies: int, augment: JointAugment | None, seed: int,
                    index: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """``copies`` views ``(image, instances, boxes)`` of one sample: the sample itself, then jointly augmented
    copies (seeded by ``seed``, the image's index and the view number)."""
    if copies < 1:
        raise ValueError(f"copies must be >= 1 (view 0 is the image itself), got {copies}")
    n = len(sample.kinds)
    masks = torch.stack([sample.instances == k + 1 for k in range(n)])  # (n, S, S)
    boxes = mask_boxes(masks)  # (n, 4)
    out = [(sample.image, sample.instances, boxes)]
    for c in range(1, copies):
        if augment is None:
            raise ValueError("copies > 1 needs an augmentation")
        out.append(augment(sample.image, sample.instances, boxes, seed=view_seed(seed, index, c)))
    return out


@torch.no_grad()
def build_views(samples: list[MaskSample], encoder: nn.Module, *, copies: int, augment: JointAugment | None,
                seed: int, device: torch.device | str = "cpu", batch: int | None = None,
                log: Callable[[str], None] | None = None) -> PromptViews:
    """Augment each sample ``copies`` times and encode every view once (the cache), ``batch`` views per forward
    (default: the encoder's ``batch``, 2 for SAM's ViT, 16 for the Lite0). ``log``: called with a progress line
    about every 30 s (SAM's ViT takes seconds per image on a CPU)."""
    if not samples:
        raise ValueError("build_views needs at least one sample")
    imgs: list[Tensor] = []
    insts: list[Tensor] = []
    boxes: list[Tensor] = []
    views: list[list[int]] = []
    objects: list[tuple[int, int]] = []
    kinds: list[str] = []
    for i, s in enumerate(samples):
        vs = augmented_views(s, copies=copies, augment=augment, seed=seed, index=i)
        views.append(list(range(len(imgs), len(imgs) + len(vs))))
        for img, inst, bx in vs:
            imgs.append(img)
            insts.append(inst)
            boxes.append(bx)
        objects += [(i, k + 1) for k in range(len(s.kinds))]
        kinds += list(s.kinds)
    k_max = max(b.shape[0] for b in boxes)
    box_t = torch.zeros(len(boxes), k_max, 4)
    for v, b in enumerate(boxes):
        box_t[v, :b.shape[0]] = b
    inst_t = torch.stack(insts)
    inst_t = inst_t.to(torch.uint8) if int(inst_t.max()) < 256 else inst_t.to(torch.int16)
    encoder.eval().to(device)
    batch = int(batch or getattr(encoder, "batch", 16))
    t0 = last = time.perf_counter()
    feats = []
    for j in range(0, len(imgs), batch):
        feats.append(encoder(torch.stack(imgs[j:j + batch]).to(device)).to("cpu", torch.float16))
        now = time.perf_counter()
        if log is not None and now - last >= 30 and j + batch < len(imgs):
            done = j + batch
            log(f"sam-finetune: encoded {done}/{len(imgs)} views in {now - t0:.0f} s "
                f"(~{(now - t0) / done * (len(imgs) - done):.0f} s left)")
            last = now
    encode_s = time.perf_counter() - t0
    return PromptViews(torch.cat(feats), inst_t, box_t, views, objects, kinds, [s.stem for s in samples],
                       encode_s, [s.image for s in samples])


def deepest_point(mask: Tensor) -> Tensor:
    """``Tensor[2]`` continuous XY of the object pixel farthest from its boundary (the image border counted as
    boundary; ties: the first in raster order): the simulated-click protocol's first click
    (``vislab.models.sam_clicks.first_click``)."""
    from scipy.ndimage import distance_transform_edt

    m = mask.bool().numpy()
    if not m.any():
        raise ValueError("the mask is empty: there is no object to click on")
    dt = distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dt)), dt.shape)
    return torch.tensor([c + 0.5, r + 0.5], dtype=torch.float32)


class TrainPrompts(Dataset):
    """Training prompts on cached views: item ``j`` = object ``j`` in a view drawn for this epoch, its box
    jittered anew (both seeded by (seed, epoch, j)); ``set_epoch`` is called at each epoch start.

    Items: ``(features Tensor[C, h, w] float32, box Tensor[4], mask Tensor[1, S, S] float, j)``.
    """

    def __init__(self, pv: PromptViews, *, jitter: float, seed: int, image_size: int) -> None:
        self.pv = pv
        self.jitter = float(jitter)
        self.seed = int(seed)
        self.size = int(image_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pv.objects)

    def _draw(self, j: int) -> tuple[np.random.Generator, int, int]:
        """``(rng, view, object label)`` of item ``j`` this epoch: the view is the rng's first draw."""
        img, k = self.pv.objects[j]
        rng = np.random.default_rng([self.seed, self.epoch, j])
        views = self.pv.views[img]
        return rng, views[int(rng.integers(len(views)))], k

    def others(self, ids: Tensor | list[int]) -> Tensor:
        """The other objects of each item's view this epoch, ``Tensor[B, S, S]`` bool: where a negative point
        says "not that one" (the same view as :meth:`__getitem__` drew)."""
        out = []
        for j in (ids.tolist() if isinstance(ids, Tensor) else ids):
            _, v, k = self._draw(int(j))
            inst = self.pv.instances[v]
            out.append((inst > 0) & (inst != k))
        return torch.stack(out) if out else torch.zeros(0, self.size, self.size, dtype=torch.bool)

    def __getitem__(self, j: int) -> tuple[Tensor, Tensor, Tensor, int]:
        rng, v, k = self._draw(j)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        box = jitter_boxes(self.pv.boxes[v, k - 1][None], image_size=(self.size, self.size), max_shift=self.jitter,
                           generator=gen)[0]
        mask = (self.pv.instances[v] == k)[None].float()  # (1, S, S)
        return self.pv.features[v].float(), box, mask, j


class FixedPrompts(Dataset):
    """Evaluation prompts: every object of view 0 with one fixed jittered box (seeded once), the same for every
    model and baseline. Items as :class:`TrainPrompts`."""

    def __init__(self, pv: PromptViews, *, jitter: float, seed: int, image_size: int) -> None:
        self.pv = pv
        self.size = int(image_size)
        tight = torch.stack([pv.boxes[pv.views[i][0], k - 1] for i, k in pv.objects]) if pv.objects else \
            torch.zeros(0, 4)
        self.boxes = jitter_boxes(tight, image_size=(self.size, self.size), max_shift=jitter,
                                  generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.pv.objects)

    def image(self, j: int) -> Tensor:
        """The image of prompt ``j`` (view 0, uint8 ``Tensor[3, S, S]``)."""
        return self.pv.images[self.pv.objects[j][0]]

    def mask(self, j: int) -> Tensor:
        img, k = self.pv.objects[j]
        return self.pv.instances[self.pv.views[img][0]] == k  # (S, S) bool

    def __getitem__(self, j: int) -> tuple[Tensor, Tensor, Tensor, int]:
        img, _ = self.pv.objects[j]
        return self.pv.features[self.pv.views[img][0]].float(), self.boxes[j], self.mask(j)[None].float(), j
