"""Boundary metrics of binary masks, per image: normalised surface Dice (NSD), boundary IoU and HD95.

All take ``pred``, ``target``: ``Tensor[B, H, W]`` (bool or 0/1) and return ``Tensor[B]`` float64. Distances are
in pixels (unit spacing), between pixel centres.

* **Surface** of a mask (NSD, HD95): its pixels with a 4-neighbour outside the mask, ``mask ^ erosion(mask)``
  with a cross-shaped structuring element, pixels outside the image counted as background: a mask touching
  the image border has a surface there. This is MONAI's ``get_mask_edges`` (``spacing=None``), so the values
  equal ``monai.metrics.compute_surface_dice`` (``use_subvoxels=False``) and
  ``compute_hausdorff_distance`` (tested).
* :func:`nsd` (Nikolov et al. 2021, as in MedSAM): the fraction of both surfaces within ``tau`` pixels of the
  other, ``(|{p ∈ ∂P : d(p, ∂G) ≤ τ}| + |{g ∈ ∂G : d(g, ∂P) ≤ τ}|) / (|∂P| + |∂G|)``.
* :func:`hd95`: the symmetric 95th-percentile Hausdorff distance, ``max(q95(d(∂P → ∂G)), q95(d(∂G → ∂P)))``
  with linear interpolation between order statistics (``torch.quantile``/``numpy.percentile``'s default),
  as MONAI's ``percentile=95``.
* :func:`boundary_iou` (Cheng et al., CVPR 2021): ``|P_d ∩ G_d| / |P_d ∪ G_d|``, where ``M_d`` is the band of
  mask pixels within ``d`` pixels of its contour, ``M − erode(M, 3×3 square, d times)`` with the image
  border counted as contour; ``d = max(1, round(dilation_ratio · √(H² + W²)))`` (the paper's 2 % of the
  diagonal by default). Adapted from the authors' ``mask_to_boundary``
  (https://github.com/bowenc0221/boundary-iou-api, boundary_iou/utils/boundary_utils.py).

**Empty masks** (a convention, like :func:`vislab.metrics.iou`'s): both empty → NSD 1, boundary IoU 1, HD95 0
(nothing to find, nothing found; MONAI returns NaN for NSD and HD95 there); exactly one empty → NSD 0,
boundary IoU 0, HD95 ``inf`` (MONAI: NSD 0; Hausdorff distance ``inf``, but NaN with ``percentile=95``, the
quantile of infinities). A mean HD95 over a set with an empty prediction is
``inf``: report the median, or count them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from vislab.metrics.segmentation import check_binary_masks

__all__ = ["boundary_dilation", "boundary_iou", "hd95", "mask_boundary_band", "mask_surface", "nsd",
           "surface_distances"]


def mask_surface(mask: np.ndarray) -> np.ndarray:
    """The surface pixels of a bool ``ndarray[H, W]``: ``mask ^ binary_erosion(mask)`` (4-neighbourhood, the
    image border counted as background)."""
    from scipy.ndimage import binary_erosion

    m = np.asarray(mask, dtype=bool)
    return m ^ binary_erosion(m, border_value=0)


def surface_distances(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(d(∂P → ∂G), d(∂G → ∂P))``: for each surface pixel of one mask the Euclidean distance to the nearest
    surface pixel of the other (``float64`` arrays, one entry per surface pixel, in raster order). Both
    masks must be non-empty."""
    from scipy.ndimage import distance_transform_edt

    sp, sg = mask_surface(pred), mask_surface(target)
    if not sp.any() or not sg.any():
        raise ValueError("surface_distances needs two non-empty masks")
    to_g = distance_transform_edt(~sg)  # distance of every pixel to the nearest surface pixel of G
    to_p = distance_transform_edt(~sp)
    return to_g[sp].astype(np.float64), to_p[sg].astype(np.float64)


def _per_image(pred: Tensor, target: Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    p, g = check_binary_masks(pred, target)
    return [(a.cpu().numpy(), b.cpu().numpy()) for a, b in zip(p, g)]


def nsd(pred: Tensor, target: Tensor, tau: float = 2.0) -> Tensor:
    """Normalised surface Dice at tolerance ``tau`` pixels, per image: ``Tensor[B]`` float64 in [0, 1]."""
    if not (tau >= 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a finite number >= 0, got {tau}")
    out = []
    for p, g in _per_image(pred, target):
        if not p.any() or not g.any():
            out.append(1.0 if not p.any() and not g.any() else 0.0)
            continue
        d_pg, d_gp = surface_distances(p, g)
        out.append(float((d_pg <= tau).sum() + (d_gp <= tau).sum()) / (d_pg.size + d_gp.size))
    return torch.tensor(out, dtype=torch.float64)


def hd95(pred: Tensor, target: Tensor, percentile: float = 95.0) -> Tensor:
    """Symmetric percentile Hausdorff distance (pixels) per image: ``Tensor[B]`` float64 (``percentile=100``:
    the Hausdorff distance)."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    out = []
    for p, g in _per_image(pred, target):
        if not p.any() or not g.any():
            out.append(0.0 if not p.any() and not g.any() else math.inf)
            continue
        d_pg, d_gp = surface_distances(p, g)
        out.append(max(float(np.percentile(d_pg, percentile)), float(np.percentile(d_gp, percentile))))
    return torch.tensor(out, dtype=torch.float64)


def boundary_dilation(size: tuple[int, int], dilation_ratio: float = 0.02) -> int:
    """Cheng et al.'s band width ``d = max(1, round(dilation_ratio · √(H² + W²)))`` pixels."""
    if not dilation_ratio > 0:
        raise ValueError(f"dilation_ratio must be > 0, got {dilation_ratio}")
    h, w = size
    return max(1, int(round(dilation_ratio * math.sqrt(h * h + w * w))))


def mask_boundary_band(mask: np.ndarray, dilation: int) -> np.ndarray:
    """``M − erode(M)``: the mask pixels within ``dilation`` pixels (chessboard distance) of its contour, the
    image border counted as contour."""
    from scipy.ndimage import binary_erosion

    m = np.asarray(mask, dtype=bool)
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    eroded = binary_erosion(m, structure=np.ones((3, 3), bool), iterations=dilation, border_value=0)
    return m & ~eroded


def boundary_iou(pred: Tensor, target: Tensor, dilation_ratio: float = 0.02, *,
                 dilation: int | None = None) -> Tensor:
    """Boundary IoU per image: ``Tensor[B]`` float64. ``dilation`` (pixels) overrides ``dilation_ratio``."""
    pairs = _per_image(pred, target)
    if dilation is None:
        dilation = boundary_dilation(tuple(pred.shape[-2:]), dilation_ratio)
    out = []
    for p, g in pairs:
        bp, bg = mask_boundary_band(p, dilation), mask_boundary_band(g, dilation)
        union = (bp | bg).sum()
        out.append(float((bp & bg).sum()) / union if union else 1.0)
    return torch.tensor(out, dtype=torch.float64)
