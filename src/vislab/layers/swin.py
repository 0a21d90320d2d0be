"""Swin Transformer window attention (Liu et al. 2021, https://arxiv.org/abs/2103.14030): W-MSA and SW-MSA.

Self-attention runs inside non-overlapping ``M×M`` windows of a ``(B, H, W, C)`` token map, so its
cost grows with ``M²·hw`` instead of ``(hw)²`` (``vislab.arith.attention``). Each window adds a learned
relative position bias ``B[i, j] = table[index[i, j]]`` to the attention logits: the table has one row
per relative offset ``(Δy, Δx) ∈ [−(M−1), M−1]²``, i.e. ``(2M−1)²`` rows, one column per head.

The shifted block (SW-MSA) rolls the map by ``(−s, −s)`` (``s = M // 2`` in Swin) so the windows
straddle the previous block's window borders, and masks the attention between tokens that the roll
brought together from opposite edges of the map (logit −100, as the reference implementation),
then rolls back.

Parameter names, buffers, the ``(B, H, W, C)`` layout, the window clamping for maps not larger than the
window and the padding of maps that are not a multiple of it follow timm's ``SwinTransformerBlock``
(timm 1.0), so its state dict loads and the outputs are equal (tests compare both block kinds).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SwinBlock", "WindowAttention", "relative_position_index", "shifted_window_mask", "window_partition",
           "window_reverse"]

MASK_VALUE = -100.0  # logit added between tokens of different regions of a shifted window (as Swin's code)


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    out = (v, v) if isinstance(v, int) else tuple(v)
    if len(out) != 2 or any(isinstance(a, bool) or not isinstance(a, int) for a in out):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return out  # type: ignore[return-value]


def window_partition(x: Tensor, window_size: int | tuple[int, int]) -> Tensor:
    """Cut a token map into non-overlapping windows.

    Args:
        x: ``Tensor[B, H, W, C]`` with ``H`` and ``W`` multiples of the window size.
        window_size: ``M`` or ``(Mh, Mw)``.

    Returns:
        ``Tensor[B·nW, Mh, Mw, C]``, windows in row-major order per image (``nW = H/Mh · W/Mw``).
    """
    mh, mw = _pair(window_size, "window_size")
    if x.ndim != 4:
        raise ValueError(f"x must be Tensor[B, H, W, C], got {tuple(x.shape)}")
    B, H, W, C = x.shape
    if H % mh or W % mw:
        raise ValueError(f"the map {H}x{W} must be a multiple of the window size {mh}x{mw}")
    x = x.view(B, H // mh, mh, W // mw, mw, C)  # (B, H/Mh, Mh, W/Mw, Mw, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, mh, mw, C)  # (B·nW, Mh, Mw, C)


def window_reverse(windows: Tensor, window_size: int | tuple[int, int], height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``Tensor[B·nW, Mh, Mw, C]`` → ``Tensor[B, H, W, C]``."""
    mh, mw = _pair(window_size, "window_size")
    if windows.ndim != 4 or windows.shape[1:3] != (mh, mw):
        raise ValueError(f"windows must be Tensor[B·nW, {mh}, {mw}, C], got {tuple(windows.shape)}")
    if height % mh or width % mw:
        raise ValueError(f"the map {height}x{width} must be a multiple of the window size {mh}x{mw}")
    nw = (height // mh) * (width // mw)
    if windows.shape[0] % nw:
        raise ValueError(f"{windows.shape[0]} windows are not a whole number of {height}x{width} maps ({nw} each)")
    C = windows.shape[-1]
    x = windows.view(-1, height // mh, width // mw, mh, mw, C)  # (B, H/Mh, W/Mw, Mh, Mw, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, C)  # (B, H, W, C)


def relative_position_index(window_size: int | tuple[int, int], device: torch.device | None = None) -> Tensor:
    """``Tensor[Mh·Mw, Mh·Mw]`` int64: the bias-table row of each (query, key) pair of a window.

    For tokens ``i = (yi, xi)`` and ``j = (yj, xj)`` (row-major in the window) the offset
    ``(yi − yj + Mh − 1, xi − xj + Mw − 1)`` lies in ``[0, 2Mh − 2] × [0, 2Mw − 2]`` and is flattened
    row-major to ``(yi − yj + Mh − 1)·(2Mw − 1) + (xi − xj + Mw − 1)``.
    """
    mh, mw = _pair(window_size, "window_size")
    ys, xs = torch.meshgrid(torch.arange(mh, device=device), torch.arange(mw, device=device), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, Mh·Mw)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, Mh·Mw, Mh·Mw): query minus key
    return (rel[0] + mh - 1) * (2 * mw - 1) + (rel[1] + mw - 1)  # (Mh·Mw, Mh·Mw)


def shifted_window_mask(height: int, width: int, window_size: int | tuple[int, int], shift_size: int | tuple[int, int],
                        *, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Additive attention mask of SW-MSA: ``Tensor[nW, Mh·Mw, Mh·Mw]``, 0 within a region, −100 across.

    After the cyclic shift by ``(−sh, −sw)`` the map is split along each axis into the regions
    ``[0, H−Mh)``, ``[H−Mh, H−sh)`` and ``[H−sh, H)`` (likewise for W); the last windows of each axis hold
    tokens from more than one region, which were not neighbours before the roll.
    """
    mh, mw = _pair(window_size, "window_size")
    sh, sw = _pair(shift_size, "shift_size")
    region = torch.zeros(1, height, width, 1, device=device, dtype=dtype)  # (1, H, W, 1): region label per token
    label = 0
    for hs in (slice(0, -mh), slice(-mh, -sh if sh else None), slice(-sh if sh else height, None)):
        for ws in (slice(0, -mw), slice(-mw, -sw if sw else None), slice(-sw if sw else width, None)):
            region[:, hs, ws, :] = label
            label += 1
    win = window_partition(region, (mh, mw)).reshape(-1, mh * mw)  # (nW, Mh·Mw)
    diff = win[:, None, :] - win[:, :, None]  # (nW, Mh·Mw, Mh·Mw): nonzero across regions
    return torch.zeros_like(diff).masked_fill(diff != 0, MASK_VALUE)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a relative position bias (timm's names).

    Args:
        dim: channels ``C`` of the tokens.
        num_heads: heads ``h``.
        window_size: ``M`` or ``(Mh, Mw)``.
        qkv_bias: biases of the query/key/value projection.
        head_dim: channels per head for queries, keys and values (default ``C / h``), as timm's ``head_dim``.
        head_dim_v: value channels per head when they differ from ``head_dim`` (the arithmetic's ``d_v``).
        out_dim: output channels of ``proj`` (default ``C``).
        attn_drop, proj_drop: dropout on the attention weights and on the output.

    Parameters: ``relative_position_bias_table Tensor[(2Mh−1)(2Mw−1), h]``, ``qkv`` (``Linear(C, h·(2d_k + d_v))``:
    all queries, then keys, then values), ``proj`` (``Linear(h·d_v, out_dim)``); buffer
    ``relative_position_index Tensor[Mh·Mw, Mh·Mw]`` (not saved, as in timm).

    ``forward(x: Tensor[B·nW, Mh·Mw, C], mask: Tensor[nW, Mh·Mw, Mh·Mw] | None = None, *, need_weights=False)``
    → ``Tensor[B·nW, Mh·Mw, out_dim]`` (and the weights ``Tensor[B·nW, h, Mh·Mw, Mh·Mw]`` when asked).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int | tuple[int, int], *, qkv_bias: bool = True,
                 head_dim: int | None = None, head_dim_v: int | None = None, out_dim: int | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        for name, v in (("dim", dim), ("num_heads", num_heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if head_dim is None and dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads}) unless head_dim is given")
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = _pair(window_size, "window_size")
        if min(self.window_size) < 1:
            raise ValueError(f"window_size must be positive, got {window_size!r}")
        self.window_area = self.window_size[0] * self.window_size[1]
        self.head_dim = dim // num_heads if head_dim is None else head_dim
        self.head_dim_v = self.head_dim if head_dim_v is None else head_dim_v
        self.out_dim = dim if out_dim is None else out_dim
        for name in ("head_dim", "head_dim_v", "out_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        self.scale = self.head_dim ** -0.5
        self.fused = True
        mh, mw = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.empty((2 * mh - 1) * (2 * mw - 1), num_heads))
        self.register_buffer("relative_position_index", relative_position_index(self.window_size), persistent=False)
        self.qkv = nn.Linear(dim, num_heads * (2 * self.head_dim + self.head_dim_v), bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(num_heads * self.head_dim_v, self.out_dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> Tensor:
        """``Tensor[h, Mh·Mw, Mh·Mw]``: the bias of each head for each (query, key) pair."""
        n = self.window_area
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (n·n, h)
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)  # (h, n, n)

    def forward(self, x: Tensor, mask: Tensor | None = None, *,
                need_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if x.ndim != 3 or x.shape[1:] != (self.window_area, self.dim):
            raise ValueError(f"expected windows Tensor[B·nW, {self.window_area}, {self.dim}], got {tuple(x.shape)}")
        Bw, N, _ = x.shape
        h, dk, dv = self.num_heads, self.head_dim, self.head_dim_v
        q, k, v = self.qkv(x).split([h * dk, h * dk, h * dv], dim=-1)  # (Bw, N, h·dk) ×2, (Bw, N, h·dv)
        q = q.view(Bw, N, h, dk).transpose(1, 2)  # (Bw, h, N, dk)
        k = k.view(Bw, N, h, dk).transpose(1, 2)  # (Bw, h, N, dk)
        v = v.view(Bw, N, h, dv).transpose(1, 2)  # (Bw, h, N, dv)
        bias = self.relative_position_bias()[None]  # (1, h, N, N)
        if mask is not None:
            nw = mask.shape[0]
            if mask.shape != (nw, N, N) or Bw % nw:
                raise ValueError(f"mask must be Tensor[nW, {N}, {N}] with nW dividing {Bw}, got {tuple(mask.shape)}")
            bias = (bias.view(1, 1, h, N, N) + mask.view(1, nw, 1, N, N)).expand(Bw // nw, -1, -1, -1, -1)
            bias = bias.reshape(Bw, h, N, N)  # (Bw, h, N, N): window b·nW + w gets mask[w]
        p = self.attn_drop.p if self.training else 0.0
        weights = None
        if self.fused and not need_weights:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=p,
                                                 scale=self.scale)  # (Bw, h, N, dv)
        else:
            logits = (q * self.scale) @ k.transpose(-2, -1) + bias  # (Bw, h, N, N)
            weights = logits.softmax(dim=-1)  # (Bw, h, N, N)
            out = self.attn_drop(weights) @ v  # (Bw, h, N, dv)
        out = out.transpose(1, 2).reshape(Bw, N, h * dv)  # (Bw, N, h·dv)
        out = self.proj_drop(self.proj(out))  # (Bw, N, out_dim)
        return (out, weights) if need_weights else out

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}, "
                f"d_k={self.head_dim}, d_v={self.head_dim_v}, out_dim={self.out_dim}")


class Mlp(nn.Module):
    """``fc1`` → GELU → dropout → ``fc2`` → dropout (timm's ``Mlp`` names)."""

    def __init__(self, dim: int, hidden: int, *, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class SwinBlock(nn.Module):
    """One Swin Transformer block: ``x + (S)W-MSA(LN(x))``, then ``x + MLP(LN(x))``, on ``Tensor[B, H, W, C]``.

    Args:
        dim: channels ``C``.
        input_resolution: ``(H, W)`` of the token map (an int for a square map); the SW-MSA mask is built for it.
        num_heads: attention heads.
        window_size: ``M`` (or ``(Mh, Mw)``); clamped to the map where the map is not larger (then no shift),
            as timm.
        shift_size: 0 for W-MSA; ``s`` (usually ``M // 2``) for SW-MSA; ``0 <= s < M``.
        mlp_ratio: MLP hidden channels = ``mlp_ratio · C``.
        qkv_bias, head_dim, attn_drop, proj_drop: as :class:`WindowAttention` (``proj_drop`` also in the MLP).

    Maps that are not a multiple of the window are padded at the bottom/right for the attention and
    cropped back (timm's behaviour). Parameters: ``norm1``, ``attn.{qkv, proj, relative_position_bias_table}``,
    ``norm2``, ``mlp.{fc1, fc2}``; buffers (not saved): ``attn.relative_position_index`` and ``attn_mask``.
    """

    def __init__(self, dim: int, input_resolution: int | tuple[int, int], num_heads: int,
                 window_size: int | tuple[int, int] = 7, shift_size: int | tuple[int, int] = 0,
                 mlp_ratio: float = 4.0, *, qkv_bias: bool = True, head_dim: int | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        res = _pair(input_resolution, "input_resolution")
        win = _pair(window_size, "window_size")
        shift = _pair(shift_size, "shift_size")
        if min(res) < 1 or min(win) < 1:
            raise ValueError(f"input_resolution and window_size must be positive, got {res} and {win}")
        if any(not 0 <= s < w for s, w in zip(shift, win)):
            raise ValueError(f"shift_size must satisfy 0 <= shift < window_size, got shift {shift}, window {win}")
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}")
        # a map not larger than the window: one window covering it, nothing to shift (timm's _calc_window_shift)
        self.window_size = tuple(r if r <= w else w for r, w in zip(res, win))
        self.shift_size = tuple(0 if r <= w else s for r, w, s in zip(res, self.window_size, shift))
        self.dim = dim
        self.input_resolution = res
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, self.window_size, qkv_bias=qkv_bias, head_dim=head_dim,
                                    attn_drop=attn_drop, proj_drop=proj_drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        mask = None
        if any(self.shift_size):
            hp = math.ceil(res[0] / self.window_size[0]) * self.window_size[0]
            wp = math.ceil(res[1] / self.window_size[1]) * self.window_size[1]
            mask = shifted_window_mask(hp, wp, self.window_size, self.shift_size)  # (nW, M², M²)
        self.register_buffer("attn_mask", mask, persistent=False)

    def window_attention(self, x: Tensor) -> Tensor:
        """(S)W-MSA on a normalised map: ``Tensor[B, H, W, C]`` → ``Tensor[B, H, W, C]``."""
        B, H, W, C = x.shape
        (mh, mw), (sh, sw) = self.window_size, self.shift_size
        if sh or sw:
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))  # cyclic shift
        pad_h, pad_w = (mh - H % mh) % mh, (mw - W % mw) % mw
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # (B, Hp, Wp, C), zeros at the bottom/right
        Hp, Wp = H + pad_h, W + pad_w
        windows = window_partition(x, self.window_size).reshape(-1, mh * mw, C)  # (B·nW, M², C)
        windows = self.attn(windows, mask=self.attn_mask)  # (B·nW, M², C)
        x = window_reverse(windows.view(-1, mh, mw, C), self.window_size, Hp, Wp)  # (B, Hp, Wp, C)
        x = x[:, :H, :W, :]  # (B, H, W, C)
        if sh or sw:
            x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))  # reverse cyclic shift
        return x

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1:] != (*self.input_resolution, self.dim):
            raise ValueError(f"expected Tensor[B, {self.input_resolution[0]}, {self.input_resolution[1]}, "
                             f"{self.dim}], got {tuple(x.shape)}")
        x = x + self.window_attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, input_resolution={self.input_resolution}, num_heads={self.num_heads}, "
                f"window_size={self.window_size}, shift_size={self.shift_size}, mlp_ratio={self.mlp_ratio}")
