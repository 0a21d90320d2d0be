"""Classical baselines for prompted segmentation, on the same prompts as the models.

* ``box`` -- the prompt box itself, filled: every pixel whose centre lies inside the box.
* ``grabcut`` -- OpenCV's GrabCut (``cv2.grabCut``, ``GC_INIT_WITH_RECT``) initialised with the same box:
  outside the box is background, inside probably foreground; colour GMMs and a graph cut refine it for a few
  iterations. OpenCV's RNG (used by the k-means that seeds the GMMs) is re-seeded with ``cv2.setRNGSeed``
  before every call, so a prompt's result does not depend on the order of the calls.

* ``click_seeded_mask`` / :class:`ClickSeededSegmenter` -- for point prompts (clicks), seeded by the same
  clicks: scikit-image's random walker (Grady 2006; ``skimage.segmentation.random_walker``, default) or a
  marker-controlled watershed on the Sobel gradient (``skimage.segmentation.watershed``). Each click seeds a
  disk of ``seed_radius`` pixels, foreground for a positive click, background for a negative one; with a box,
  everything outside it is background too; without a box, the image border is a background seed (the object
  is taken not to touch it; a one-click prompt says nothing else about the background). :class:`ClickSeededSegmenter`
  answers ``predict`` like :class:`vislab.models.sam.SamPrompter` (``coords="pixel"``), so the simulated-click
  protocol (``vislab.models.sam_clicks``) and the prompt table run on it unchanged; a lone box goes to GrabCut.
  The random walker's linear system is solved exactly (``mode="bf"``, a sparse direct solve: about 0.1 s at
  96 × 96; the default conjugate-gradient mode at ``tol=1e-4`` was not converged on these images and changed
  the masks). ``beta = 2000`` (edge sharpness; scikit-image's default is 130): on 19 objects of 8 generated
  scenes (``render_scene``, 96 px, ``scale=1.6``, rng 123, not the experiment's data) the mean IoU after 1 / 3 /
  5 simulated clicks was 0.37 / 0.50 / 0.60 at 130, 0.60 / 0.63 / 0.80 at 1000, 0.57 / 0.67 / 0.86 at 2000,
  0.57 / 0.70 / 0.81 at 4000; the watershed 0.45 / 0.66 / 0.74.

Boxes are ``Tensor[N, 4]`` XYXY in continuous pixel coordinates (see ``vislab.data.masks``); points are
continuous ``(x, y)`` too: the centre of pixel row ``r``, column ``c`` is ``(c + 0.5, r + 0.5)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["CLICK_METHODS", "ClickSeededSegmenter", "box_masks", "box_pixel_rect", "click_seeded_mask",
           "grabcut_masks"]

CLICK_METHODS = ("random_walker", "watershed")


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
    rgb = _rgb_array(image)
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


def _rgb_array(image: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"image must be a uint8 Tensor[3, H, W], got {image.dtype} {tuple(image.shape)}")
        return image.permute(1, 2, 0).numpy()  # (H, W, 3)
    rgb = np.asarray(image)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"image must be uint8[H, W, 3], got {rgb.dtype} {rgb.shape}")
    return rgb


def click_seeds(size: tuple[int, int], points: np.ndarray, labels: np.ndarray, *, box: np.ndarray | None = None,
                seed_radius: float = 2.0, border: bool = True) -> np.ndarray:
    """The seed map ``int32[H, W]`` of :func:`click_seeded_mask`: 1 foreground, 2 background, 0 unknown. Outside
    ``box`` is background; without a box, the image border is (``border=False``: only the clicks)."""
    h, w = size
    seeds = np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5  # pixel centres
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        seeds[~((xx > x0) & (xx < x1) & (yy > y0) & (yy < y1))] = 2
    if box is None and border:
        seeds[0, :] = seeds[-1, :] = seeds[:, 0] = seeds[:, -1] = 2
    for (x, y), lab in zip(points, labels):
        r, c = min(h - 1, max(0, int(np.floor(y)))), min(w - 1, max(0, int(np.floor(x))))
        disk = (xx - (c + 0.5)) ** 2 + (yy - (r + 0.5)) ** 2 <= seed_radius ** 2
        seeds[disk] = 1 if lab == 1 else 2
    return seeds


def click_seeded_mask(image: Tensor | np.ndarray, points: np.ndarray, labels: np.ndarray, *,
                      box: np.ndarray | None = None, method: str = "random_walker", seed_radius: float = 2.0,
                      beta: float = 2000.0) -> np.ndarray:
    """A bool mask ``[H, W]`` from clicks: ``points`` ``[N, 2]`` continuous XY, ``labels`` ``[N]`` (1 / 0), an
    optional ``box`` (continuous XYXY), segmented by ``method`` (``"random_walker"``: scikit-image's random
    walker, ``beta`` its edge sharpness on the RGB image scaled to 0..1; ``"watershed"``: flooding the Sobel
    gradient of the grey image from the seeds). Needs at least one positive click."""
    from skimage.segmentation import random_walker, watershed

    if method not in CLICK_METHODS:
        raise ValueError(f"method must be one of {', '.join(CLICK_METHODS)}, got {method!r}")
    if seed_radius < 0:
        raise ValueError(f"seed_radius must be >= 0, got {seed_radius}")
    rgb = _rgb_array(image)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    lab = np.asarray(labels).reshape(-1)
    if lab.shape[0] != pts.shape[0] or not np.isin(lab, (0, 1)).all():
        raise ValueError(f"labels must be one 1 (positive) or 0 (negative) per point, got {lab.tolist()}")
    if not (lab == 1).any():
        raise ValueError("a click-seeded baseline needs at least one positive click")
    h, w = rgb.shape[:2]
    seeds = click_seeds((h, w), pts, lab, box=box, seed_radius=seed_radius)
    if not (seeds == 2).any():  # nothing marks background (a box covering the image, no negative click)
        return np.ones((h, w), bool)
    data = rgb.astype(np.float64) / 255.0
    if method == "random_walker":
        out = random_walker(data, seeds, beta=beta, mode="bf", channel_axis=-1)
    else:
        from skimage.color import rgb2gray
        from skimage.filters import sobel

        out = watershed(sobel(rgb2gray(data)), markers=seeds)
    return np.asarray(out == 1)


def grabcut_box_clicks(image: Tensor | np.ndarray, box: np.ndarray, points: np.ndarray, labels: np.ndarray, *,
                       iterations: int = 5, seed_radius: float = 2.0, seed: int = 0) -> np.ndarray:
    """GrabCut from a box refined by clicks: a bool mask ``[H, W]``. Outside the box is sure background, inside
    probable foreground; each click's disk (radius ``seed_radius`` px, continuous XY) is sure foreground
    (label 1) or sure background (label 0), and GrabCut starts from that mask (``GC_INIT_WITH_MASK``). A box
    that leaves GrabCut no foreground or no background to model gives the box minus the negative disks."""
    import cv2

    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    rgb = _rgb_array(image)
    h, w = rgb.shape[:2]
    x, y, bw, bh = box_pixel_rect(tuple(np.asarray(box, dtype=np.float64).reshape(4)), (h, w))
    mask = np.full((h, w), cv2.GC_BGD, np.uint8)
    mask[y:y + bh, x:x + bw] = cv2.GC_PR_FGD
    seeds = click_seeds((h, w), np.asarray(points, np.float64).reshape(-1, 2), np.asarray(labels).reshape(-1),
                        seed_radius=seed_radius, border=False)
    mask[seeds == 1] = cv2.GC_FGD
    mask[seeds == 2] = cv2.GC_BGD
    fg = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    if fg.sum() < 2 or fg.all():
        return fg
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(seed)
    try:
        cv2.grabCut(np.ascontiguousarray(rgb[..., ::-1]), mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return fg
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


class ClickSeededSegmenter:
    """The classical baseline behind the same interface as :class:`vislab.models.sam.SamPrompter` (continuous
    coordinates): points (with or without a box) → :func:`click_seeded_mask`; a lone box → GrabCut
    (:func:`grabcut_masks`; a box it cannot take gives the filled box); a box with only negative clicks (the
    usual second step of box + clicks when the box's mask spills over) → :func:`grabcut_box_clicks`, since a
    random walker needs a foreground seed. It has no mask prompt (``mask_input``
    is ignored), one mask per call whatever ``multimask_output`` says, and no quality estimate
    (``iou_predictions`` NaN, ``low_res_logits`` ``None``)."""

    def __init__(self, *, method: str = "random_walker", seed_radius: float = 2.0, beta: float = 2000.0,
                 grabcut_iters: int = 5) -> None:
        if method not in CLICK_METHODS:
            raise ValueError(f"method must be one of {', '.join(CLICK_METHODS)}, got {method!r}")
        self.method, self.seed_radius, self.beta, self.grabcut_iters = method, seed_radius, beta, grabcut_iters
        self.image: np.ndarray | None = None

    def set_image(self, image: Tensor | np.ndarray) -> None:
        self.image = _rgb_array(image)

    def predict(self, point_coords: np.ndarray | None = None, point_labels: np.ndarray | None = None,
                box: np.ndarray | None = None, mask_input: np.ndarray | None = None,
                multimask_output: bool = False) -> tuple[np.ndarray, np.ndarray, None]:
        if self.image is None:
            raise RuntimeError("set an image with .set_image(...) first")
        if point_coords is None:
            if box is None:
                raise ValueError("give points or a box")
            masks, _ = grabcut_masks(self.image, torch.as_tensor(np.asarray(box, dtype=np.float32))[None],
                                     iterations=self.grabcut_iters)
            return masks.numpy(), np.array([np.nan]), None
        if point_labels is None:
            raise ValueError("point_labels must be given with point_coords")
        if box is not None and not (np.asarray(point_labels).reshape(-1) == 1).any():
            m = grabcut_box_clicks(self.image, box, point_coords, point_labels, iterations=self.grabcut_iters,
                                   seed_radius=self.seed_radius)
            return m[None], np.array([np.nan]), None
        m = click_seeded_mask(self.image, point_coords, point_labels, box=box, method=self.method,
                              seed_radius=self.seed_radius, beta=self.beta)
        return m[None], np.array([np.nan]), None
