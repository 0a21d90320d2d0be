"""Patch shuffling: the cells of a ``g×g`` grid of each image permuted at random (the "face with displaced parts"
test of how much a model relies on where its parts are)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["shuffle_patches"]


def shuffle_patches(x: Tensor, grid: int, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Permute the ``grid×grid`` cells of each image at random (never the identity when ``grid > 1``).

    Args:
        x: ``Tensor[B, C, H, W]`` with ``H`` and ``W`` multiples of ``grid``.
        grid: cells per side.
        generator: seeds the permutations.

    Returns:
        ``(shuffled Tensor[B, C, H, W], perms Tensor[B, grid²])``: cell ``k`` (row-major) of the output is
        cell ``perms[b, k]`` of the input.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be Tensor[B, C, H, W], got {tuple(x.shape)}")
    B, C, H, W = x.shape
    if grid < 1 or H % grid or W % grid:
        raise ValueError(f"grid {grid} must divide the image size {H}x{W}")
    n = grid * grid
    perms = []
    for _ in range(B):
        p = torch.randperm(n, generator=generator)
        while n > 1 and torch.equal(p, torch.arange(n)):
            p = torch.randperm(n, generator=generator)
        perms.append(p)
    perm = torch.stack(perms)  # (B, n)
    ch, cw = H // grid, W // grid
    cells = x.view(B, C, grid, ch, grid, cw).permute(0, 2, 4, 1, 3, 5).reshape(B, n, C, ch, cw)  # (B, n, C, ch, cw)
    cells = cells[torch.arange(B)[:, None], perm]  # (B, n, C, ch, cw): cell k ← input cell perm[b, k]
    out = cells.view(B, grid, grid, C, ch, cw).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)  # (B, C, H, W)
    return out, perm
