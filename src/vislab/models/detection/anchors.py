"""Anchors: a fixed set of reference boxes repeated at every feature-map location (Ren et al., 2015, §3.1).

At one location there are ``A = len(sizes) · len(aspect_ratios)`` anchors. An anchor of size ``s`` and
aspect ratio ``r = h / w`` has ``w = s / √r`` and ``h = s · √r`` (area ``s²``), is centred on the
location's top-left image pixel ``(x, y) = (col · stride_w, row · stride_h)``, and its zero-centred
corners ``(−w/2, −h/2, w/2, h/2)`` are rounded to integers. Order and rounding are torchvision's
``AnchorGenerator``: aspect ratios outer, sizes inner within a location, locations row-major
("location-major": the ``A`` anchors of location 0, then those of location 1, ...), which is also the
order in which the RPN head's outputs are flattened.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["AnchorGenerator", "cell_anchors", "grid_anchors"]


def _pair(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    if len(value) != 2 or any(int(v) != v or v < 1 for v in value):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return int(value[0]), int(value[1])


def _check_sizes_ratios(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> None:
    if len(sizes) == 0 or any(s <= 0 for s in sizes):
        raise ValueError(f"sizes must be a non-empty sequence of positive numbers, got {tuple(sizes)!r}")
    if len(aspect_ratios) == 0 or any(r <= 0 for r in aspect_ratios):
        raise ValueError(f"aspect_ratios must be a non-empty sequence of positive numbers, "
                         f"got {tuple(aspect_ratios)!r}")


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> Tensor:
    """The ``A`` zero-centred anchors of one location: ``Tensor[A, 4]`` xyxy, ratios outer, sizes inner, rounded."""
    _check_sizes_ratios(sizes, aspect_ratios)
    scales = torch.as_tensor(sizes, dtype=dtype, device=device)  # (S,)
    ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)  # (R,)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)  # (R·S,) ratio-major
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()  # (A, 4)


def grid_anchors(feature_size: tuple[int, int], stride: int | tuple[int, int], sizes: Sequence[float],
                 aspect_ratios: Sequence[float], *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> Tensor:
    """All anchors of one feature map.

    Args:
        feature_size: ``(H, W)`` of the feature map.
        stride: image pixels per feature-map cell, an int or ``(stride_h, stride_w)``.
        sizes: anchor sizes in pixels (square root of the area), e.g. ``(128, 256, 512)``.
        aspect_ratios: ``h / w`` ratios, e.g. ``(0.5, 1.0, 2.0)``.

    Returns:
        ``Tensor[H·W·A, 4]`` xyxy in image pixels, location-major (row, then column, then anchor).
        Equal to torchvision ``AnchorGenerator((sizes,), (aspect_ratios,))`` for one feature map.
    """
    H, W = _pair("feature_size", feature_size)
    sh, sw = _pair("stride", stride)
    base = cell_anchors(sizes, aspect_ratios, dtype=dtype, device=device)  # (A, 4)
    shifts_x = torch.arange(W, dtype=torch.int32, device=base.device) * sw  # (W,)
    shifts_y = torch.arange(H, dtype=torch.int32, device=base.device) * sh  # (H,)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")  # (H, W) each
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)  # (H·W,)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)  # (H·W, 4)
    return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)  # (H·W·A, 4)


class AnchorGenerator(nn.Module):
    """Anchors for one stride-``s`` feature map, cached per ``(feature size, stride, dtype, device)``.

    ``forward(feature_size, stride)`` → ``Tensor[H·W·A, 4]``; ``num_anchors_per_location`` is ``A``.
    """

    def __init__(self, sizes: Sequence[float] = (128, 256, 512),
                 aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> None:
        super().__init__()
        _check_sizes_ratios(sizes, aspect_ratios)
        self.sizes = tuple(float(s) for s in sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self._cache: dict[tuple, Tensor] = {}

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.sizes) * len(self.aspect_ratios)

    def cell_anchors(self, *, dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> Tensor:
        """``Tensor[A, 4]``: the zero-centred anchors of one location."""
        return cell_anchors(self.sizes, self.aspect_ratios, dtype=dtype, device=device)

    def forward(self, feature_size: tuple[int, int], stride: int | tuple[int, int], *,
                dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        key = (tuple(int(v) for v in feature_size), _pair("stride", stride), dtype, str(device))
        anchors = self._cache.get(key)
        if anchors is None:
            if len(self._cache) > 32:  # many image sizes (multi-scale training): keep the cache small
                self._cache.clear()
            anchors = grid_anchors(feature_size, stride, self.sizes, self.aspect_ratios, dtype=dtype, device=device)
            self._cache[key] = anchors
        return anchors

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, aspect_ratios={self.aspect_ratios}"
