"""Deformable convolution v1 (Dai et al., 2017) and v2 (Zhu et al., 2019), written in PyTorch.

A deformable convolution is an ordinary convolution whose kernel taps are moved: for output pixel
``(ho, wo)``, kernel tap ``(i, j)`` and offset group ``g`` it reads the input at

    y = ho·stride_h − pad_h + i·dilation_h + Δy[g, i, j, ho, wo]
    x = wo·stride_w − pad_w + j·dilation_w + Δx[g, i, j, ho, wo]

by bilinear interpolation (zero outside the map), multiplies the value by the modulation
``mask[g, i, j, ho, wo]`` (v2; ``mask=None`` is v1) and then applies the weights as a convolution
would. The semantics are exactly those of ``torchvision.ops.deform_conv2d``:

- ``offset`` is ``Tensor[B, 2·G·kh·kw, Ho, Wo]`` holding ``(Δy, Δx)`` pairs, kernel taps in
  row-major order, offset group ``g`` outermost; ``G`` (offset groups) is inferred from its size
  and splits the input channels into ``G`` equal blocks;
- a sampling point with ``y <= -1``, ``y >= H``, ``x <= -1`` or ``x >= W`` reads 0, and inside
  that range each of the four bilinear corners that falls outside the map counts as zero;
- ``groups`` of the convolution are inferred from ``weight``: ``C_in / weight.shape[1]``.

Two formulations live here, tested equal:

- :func:`deform_conv2d_gather`, the readable one: gather the four corners of every sampling point
  with standard ops, blend them, and contract with the weights in one matrix product. Autograd
  differentiates it; it is what ONNX export sees (ONNX has no deformable convolution).
- :func:`deform_conv2d` (the default) calls the registered operator ``vislab::deform_conv2d``
  (``torch.library.custom_op``, CPU and CUDA kernels, a fake kernel for FakeTensor/meta, and an
  autograd formula whose backward is the operator ``vislab::deform_conv2d_backward``), so that
  ``torch.compile``, ``torch.export`` and ``torch.library.opcheck`` see one op. Its kernels:
  on CPU the bilinear sampling is a sparse matrix ``S`` with four non-zeros per row, so that
  "im2col" is one sparse × dense product ``cols = S @ X``; the backward is ``S^T @ grad_cols``
  for the input and a sampled dense-dense product (``torch.sparse.sampled_addmm``) for the four
  corner gradients, from which the offset and mask gradients follow. The batch is processed in
  chunks so the column buffer stays small (a few MiB: fast in cache and bounded in memory).
  With very few channels per offset group (a grayscale first layer) the per-point cost of building
  ``S`` dominates; there the sampling is done by ATen's ``grid_sample`` kernels instead (forward and
  ``grid_sampler_2d_backward``). On CUDA the same chunked passes gather with ``index_select``.

Wrong sizes raise :class:`DeformConvValueError`, a ``ValueError`` that is also a ``RuntimeError``
(what torchvision raises), with the phrases of torchvision's messages in ours.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from vislab.ops import _deform_cpp

__all__ = ["DeformConvValueError", "deform_conv2d", "deform_conv2d_gather", "deform_conv2d_output_size"]


class DeformConvValueError(ValueError, RuntimeError):
    """Wrong sizes or values of the arguments of a deformable convolution.

    A ``ValueError`` (vislab's rule for bad input) that is also a ``RuntimeError``, the class that
    ``torchvision.ops.deform_conv2d`` raises, so that code written for either catches it."""

# Column-buffer budget per batch chunk, in bytes of the compute dtype. On CPU a few MiB keeps the
# gathered columns and the padded input chunk in cache; on a GPU chunks are larger so that kernels
# stay big. Either way it bounds the extra memory of the operator (at least one image per chunk).
_CHUNK_BYTES = 4 * 2**20
_CHUNK_BYTES_GPU = 256 * 2**20
# The C++ kernels read and write the columns in one fused pass each, so cache matters less than
# the number of calls per chunk (each GEMM is a parallel region): larger chunks
_CHUNK_BYTES_CPP = 16 * 2**20
_MIN_CHUNK_COLUMNS = 512
# For these output-channel counts (groups = 1), and for one input channel per offset group, the C++ path
# multiplies each pixel's column by the weight inside the sampling kernel, without a column buffer (see
# _fused_forward); its chunks hold this much padded input.
_FUSED_OUT = (8, 16)
_FUSED_SINGLE_MAX_OUT = 64
_FUSED_X_BYTES = 16 * 2**20
_FUSED_BLOCK = 16  # the kernel's column-gradient block (VB): its weight rows are padded to a multiple
# How the backward forms the transposed sampling matrix: "csr", "coo" or "auto" (see _transpose_as_csr)
_TRANSPOSE = "auto"
# On CPU, up to this many input channels per offset group sample with grid_sample (see _default_kind)
_GRID_MAX_CHANNELS = 2

_IntPair = int | tuple[int, int]


@dataclass(frozen=True)
class _Geometry:
    """Everything about one call that is not a tensor (all sizes are Python ints)."""

    batch: int  # B
    in_channels: int  # C
    height: int  # H
    width: int  # W
    out_channels: int  # C_out
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out_h: int  # Ho
    out_w: int  # Wo
    groups: int  # convolution groups, inferred from the weight
    offset_groups: int  # G, inferred from the offset
    use_mask: bool

    @property
    def taps(self) -> int:  # K = kh·kw
        return self.kh * self.kw

    @property
    def sub_groups(self) -> int:
        """G' = lcm(G, groups): channel blocks that lie in one offset group and one conv group."""
        return math.lcm(self.offset_groups, self.groups)

    @property
    def sub_channels(self) -> int:  # C / G'
        return self.in_channels // self.sub_groups


# ----------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------


def _pair(value: _IntPair, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(value, bool) or not isinstance(value, int | torch.SymInt | tuple | list):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    pair = tuple(value) if isinstance(value, tuple | list) else (value, value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int | torch.SymInt) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise DeformConvValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair  # type: ignore[return-value]


def deform_conv2d_output_size(
    size: tuple[int, int], kernel_size: _IntPair, stride: _IntPair = 1, padding: _IntPair = 0,
    dilation: _IntPair = 1,
) -> tuple[int, int]:
    """Output ``(Ho, Wo)`` of a (deformable) convolution on an ``H × W`` map, as for ``nn.Conv2d``."""
    (kh, kw), (sh, sw) = _pair(kernel_size, "kernel_size", 1), _pair(stride, "stride", 1)
    (ph, pw), (dh, dw) = _pair(padding, "padding", 0), _pair(dilation, "dilation", 1)
    h, w = size
    return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def _dims(t: Tensor) -> tuple:
    # the legacy (tracing) ONNX exporter gives sizes as tensors; ints and SymInts stay as they are
    return tuple(int(v) if isinstance(v, Tensor) else v for v in t.shape)


def _check(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None, stride: _IntPair,
           padding: _IntPair, dilation: _IntPair, mask: Tensor | None) -> _Geometry:
    """The call's geometry; raises TypeError for wrong types and :class:`DeformConvValueError` for
    wrong sizes (checked first, in torchvision's order: the sizes, then dtypes and devices)."""
    for name, t in (("input", input), ("offset", offset), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (("bias", bias), ("mask", mask)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if input.dim() != 4:
        raise DeformConvValueError(f"input must be Tensor[B, C, H, W] (4-D), got shape {tuple(input.shape)}")
    if weight.dim() != 4:
        raise DeformConvValueError(
            f"weight must be Tensor[C_out, C_in/groups, kh, kw] (4-D), got shape {tuple(weight.shape)}")

    stride_, padding_ = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    dilation_ = _pair(dilation, "dilation", 1)
    B, C, H, W = _dims(input)
    C_out, C_per_group, kh, kw = _dims(weight)
    if C_per_group == 0 or C % C_per_group != 0:
        raise DeformConvValueError(
            f"weight.shape[1] (input channels per group) must divide the input's {C} channels, "
            f"got weight shape {tuple(weight.shape)}")
    groups = C // C_per_group
    if C_out == 0 or C_out % groups != 0:
        raise DeformConvValueError(
            f"weight.shape[0] (output channels) must be a positive multiple of groups={groups} "
            f"(= {C} input channels / weight.shape[1]={C_per_group}), got weight shape {tuple(weight.shape)}")
    if kh == 0 or kw == 0:
        raise DeformConvValueError(f"weight must have a non-empty kernel, got weight shape {tuple(weight.shape)}")
    Ho, Wo = deform_conv2d_output_size((H, W), (kh, kw), stride_, padding_, dilation_)
    if Ho <= 0 or Wo <= 0:
        raise DeformConvValueError(
            f"the output would be empty: input {H}×{W} with kernel {kh}×{kw}, stride {stride_}, "
            f"padding {padding_}, dilation {dilation_} gives {Ho}×{Wo}")

    K = kh * kw
    offset_shape = _dims(offset)
    if len(offset_shape) != 4 or offset_shape[0] != B or offset_shape[2:] != (Ho, Wo) \
            or offset_shape[1] == 0 or offset_shape[1] % (2 * K) != 0:
        raise DeformConvValueError(
            f"the shape of the offset is wrong: offset must be Tensor[B, 2·G·kh·kw, Ho, Wo] = [{B}, 2·G·{K}, "
            f"{Ho}, {Wo}] for some offset group count G, got shape {tuple(offset.shape)}")
    G = offset_shape[1] // (2 * K)
    if C % G != 0:
        raise DeformConvValueError(
            f"the shape of the offset is wrong: its {G} offset groups (offset.shape[1]={offset_shape[1]} "
            f"= 2·G·{K}) must divide the input's {C} channels")
    if mask is not None and _dims(mask) != (B, G * K, Ho, Wo):
        what = "mask.shape[1] is not valid" if mask.dim() == 4 and _dims(mask)[1] != G * K \
            else "the shape of the mask is wrong"
        raise DeformConvValueError(
            f"{what}: mask must be Tensor[B, G·kh·kw, Ho, Wo] = {[B, G * K, Ho, Wo]} (G={G} from the offset), "
            f"got shape {tuple(mask.shape)}")
    if bias is not None and _dims(bias) != (C_out,):
        raise DeformConvValueError(f"bias must be Tensor[C_out] = [{C_out}], got shape {tuple(bias.shape)}")

    if not input.dtype.is_floating_point:
        raise TypeError(f"input must be a floating-point tensor, got dtype {input.dtype}")
    for name, t in (("offset", offset), ("weight", weight), ("bias", bias), ("mask", mask)):
        if t is None:
            continue
        if t.dtype != input.dtype:
            raise TypeError(f"{name} must have the input's dtype {input.dtype}, got {t.dtype}")
        if t.device != input.device:
            raise DeformConvValueError(f"{name} must be on the input's device {input.device}, got {t.device}")
    return _Geometry(B, C, H, W, C_out, kh, kw, stride_, padding_, dilation_, Ho, Wo, groups, G,
                     mask is not None)


# ----------------------------------------------------------------------------------------------
# Shared building blocks (standard ops only)
# ----------------------------------------------------------------------------------------------

# The input is padded by two pixels of zeros and every sampling coordinate is clamped to
# [-2, H] × [-2, W]. A point inside (-1 <= y < H) reads its four corners as torchvision does (a
# corner in the border reads 0); a point outside has all four corners in the border, so it reads
# 0 and gets zero gradients, which is torchvision's rule — with no bounds test and no mask.
_PAD = 2


def _sampling_points(offset: Tensor, mask: Tensor | None, geom: _Geometry, dtype: torch.dtype):
    """Top-left corners and bilinear fractions of every sampling point of a batch chunk.

    Returns ``pixel`` (flat index of the top-left corner in one padded ``(H+4)×(W+4)`` map, as an
    integer-valued float), the fractional parts ``ly``, ``lx`` and the mask ``m`` (None for v1), each
    ``[b, Ho, Wo, G, kh, kw]``: the points in the row order of the column matrix. Coordinates are
    computed in ``dtype`` promoted to at least float32 (half precision cannot hold 55.3 well enough).
    """
    b = offset.shape[0]
    G, kh, kw, Ho, Wo = geom.offset_groups, geom.kh, geom.kw, geom.out_h, geom.out_w
    (sh, sw), (ph, pw), (dh, dw) = geom.stride, geom.padding, geom.dilation
    H, W, Wp = geom.height, geom.width, geom.width + 2 * _PAD
    device = offset.device
    dtype = torch.promote_types(dtype, torch.float32)
    if (H + 2 * _PAD) * Wp >= 2**24:  # flat indices must stay exact
        dtype = torch.float64
    delta = offset.to(dtype).reshape(b, G, kh, kw, 2, Ho, Wo).permute(0, 5, 6, 1, 2, 3, 4)
    # delta: (b, Ho, Wo, G, kh, kw, 2), a view
    base_y = (torch.arange(Ho, device=device, dtype=dtype) * sh - ph).view(Ho, 1, 1, 1, 1) \
        + (torch.arange(kh, device=device, dtype=dtype) * dh).view(kh, 1)  # (Ho, 1, 1, kh, 1)
    base_x = (torch.arange(Wo, device=device, dtype=dtype) * sw - pw).view(Wo, 1, 1, 1) \
        + (torch.arange(kw, device=device, dtype=dtype) * dw)  # (Wo, 1, 1, kw)
    y = (delta[..., 0] + base_y).clamp(-_PAD, H)  # (b, Ho, Wo, G, kh, kw)
    x = (delta[..., 1] + base_x).clamp(-_PAD, W)
    y0, x0 = torch.floor(y), torch.floor(x)
    pixel = y0 * Wp + x0 + (_PAD * Wp + _PAD)
    m = None if mask is None else mask.to(dtype).reshape(b, G, kh, kw, Ho, Wo).permute(0, 4, 5, 1, 2, 3)
    return pixel, y - y0, x - x0, m


def _corner_rows(pixel: Tensor, geom: _Geometry, index_dtype: torch.dtype = torch.int64, *,
                 contiguous: bool = False) -> Tensor:
    """Row of each point's top-left corner in the padded channels-last input ``X[b·G'·Hp·Wp, C/G']``,
    for every channel sub-group: ``[b, Ho, Wo, G', kh, kw]`` (integer; ``contiguous``: in row order)."""
    b, Ho, Wo, G, kh, kw = pixel.shape
    r = geom.sub_groups // G
    P = (geom.height + 2 * _PAD) * (geom.width + 2 * _PAD)
    block = torch.arange(0, b * geom.sub_groups * P, P, device=pixel.device, dtype=index_dtype)
    block = block.view(b, 1, 1, G, r, 1, 1)
    if contiguous:
        rows = torch.empty((b, Ho, Wo, G, r, kh, kw), dtype=index_dtype, device=pixel.device)
        torch.add(pixel.to(index_dtype).unsqueeze(4), block, out=rows)
    else:
        rows = pixel.to(index_dtype).unsqueeze(4) + block
    # a NaN offset gives an undefined integer: keep every index inside its map
    return rows.clamp_(0, b * geom.sub_groups * P - 1).reshape(b, Ho, Wo, G * r, kh, kw)


def _corner_weights(ly: Tensor, lx: Tensor, m: Tensor | None) -> Tensor:
    """Weights of the corners (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1): ``[..., 4]``."""
    hy, hx = 1 - ly, 1 - lx
    if m is not None:
        hy, ly = hy * m, ly * m
    return torch.stack((hy * hx, hy * lx, ly * hx, ly * lx), dim=-1)


def _expand_sub_groups(t: Tensor, geom: _Geometry) -> Tensor:
    """Repeat per-offset-group point data ``[b, Ho, Wo, G, kh, kw, ...]`` for the G' sub-groups."""
    r = geom.sub_groups // geom.offset_groups
    if r == 1:
        return t
    b, Ho, Wo, G = t.shape[:4]
    return t.unsqueeze(4).expand(b, Ho, Wo, G, r, *t.shape[4:]).reshape(b, Ho, Wo, G * r, *t.shape[4:])


def _grouped_weight(weight: Tensor, geom: _Geometry, dtype: torch.dtype) -> Tensor:
    """``weight[C_out, C/groups, kh, kw]`` → ``[groups, C_out/groups, (G'/groups)·kh·kw·(C/G')]``,
    the reduction axis in the column order (sub-group, tap, channel)."""
    groups, Gs, Cs, K = geom.groups, geom.sub_groups, geom.sub_channels, geom.taps
    w = weight.to(dtype).reshape(groups, geom.out_channels // groups, Gs // groups, Cs, K)
    return w.permute(0, 1, 2, 4, 3).reshape(groups, geom.out_channels // groups, -1)


def _ungroup_weight(grad: Tensor, geom: _Geometry) -> Tensor:
    """Inverse of :func:`_grouped_weight`: ``[groups, C_out/groups, R]`` → ``[C_out, C/groups, kh, kw]``."""
    groups, Gs, Cs = geom.groups, geom.sub_groups, geom.sub_channels
    g = grad.reshape(groups, geom.out_channels // groups, Gs // groups, geom.taps, Cs)
    return g.permute(0, 1, 2, 4, 3).reshape(geom.out_channels, geom.in_channels // groups, geom.kh, geom.kw)


# ----------------------------------------------------------------------------------------------
# The readable formulation: standard ops, autograd differentiates it (ONNX export, torch.compile)
# ----------------------------------------------------------------------------------------------


def deform_conv2d_gather(
    input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None, stride: _IntPair = 1,
    padding: _IntPair = 0, dilation: _IntPair = 1, mask: Tensor | None = None,
) -> Tensor:
    """Deformable convolution with standard ops only (same arguments and result as
    :func:`deform_conv2d`).

    Gathers the four bilinear corners of every sampling point from the zero-padded input, blends
    them into the column matrix ``[B·Ho·Wo, C·kh·kw]`` and multiplies by the weights. Every op
    (pad, gather, floor, clamp, matmul) exists in ONNX and in Inductor, and autograd provides the
    backward. It holds several column-sized temporaries at once: the memory-hungry path.
    """
    geom = _check(input, offset, weight, bias, stride, padding, dilation, mask)
    B, dtype = input.shape[0], input.dtype
    pixel, ly, lx, m = _sampling_points(offset, mask, geom, dtype)
    rows = _corner_rows(pixel, geom).reshape(-1)  # (B·Ho·Wo·G'·kh·kw,)
    weights = _expand_sub_groups(_corner_weights(ly, lx, m), geom).reshape(-1, 4).to(dtype)
    Gs, Cs, Hp, Wp = geom.sub_groups, geom.sub_channels, geom.height + 2 * _PAD, geom.width + 2 * _PAD
    X = F.pad(input, (_PAD,) * 4).reshape(B, Gs, Cs, Hp, Wp).permute(0, 1, 3, 4, 2).reshape(-1, Cs)
    # X: (B·G'·Hp·Wp, C/G'), zero-padded channels-last rows
    cols = X.index_select(0, rows) * weights[:, 0:1]
    for corner, shift in ((1, 1), (2, Wp), (3, Wp + 1)):
        cols = cols + X.index_select(0, rows + shift) * weights[:, corner:corner + 1]
    # cols: (B·Ho·Wo·G'·kh·kw, C/G') = (B·Ho·Wo, G'·kh·kw·C/G') row-major
    groups, L, R = geom.groups, geom.out_h * geom.out_w, geom.taps * geom.in_channels // geom.groups
    out = torch.bmm(_grouped_weight(weight, geom, dtype), cols.reshape(B * L, groups, R).permute(1, 2, 0))
    # out: (groups, C_out/groups, B·Ho·Wo)
    out = out.reshape(geom.out_channels, B, geom.out_h, geom.out_w).transpose(0, 1)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out.contiguous()


# ----------------------------------------------------------------------------------------------
# The fast formulation: custom autograd Function, batch chunks, sparse sampling matrix on CPU
# ----------------------------------------------------------------------------------------------


class _Chunk:
    """Sampling points, sampling matrix and padded input of one batch chunk ``[s, e)``.

    The bilinear sampling of the chunk is the matrix ``S`` (``n`` points × ``b·G'·Hp·Wp`` padded
    pixels, four non-zeros per row: the corner weights). Three products with it do all the work:

    - :meth:`sample`: ``S @ X``, the columns ``[n, C/G']`` (im2col);
    - :meth:`sample_t`: ``S^T @ grad_cols``, the input gradient as padded rows (col2im);
    - :meth:`corner_dots`: ``[n, 4]``, ``<grad_cols[r], X[corner_k(r)]>``, from which the offset and
      mask gradients follow.

    ``kind="sparse"`` uses ``torch.sparse`` products, one fused pass each (CPU, float32/float64);
    ``kind="gather"`` uses ``index_select``/``index_add_`` (any device and dtype).
    """

    def __init__(self, input, offset, mask, s, e, geom: _Geometry, dtype, kind: str, X_buffer):
        b = e - s
        Gs, Cs, H, W = geom.sub_groups, geom.sub_channels, geom.height, geom.width
        self.kind, self.geom = kind, geom
        self.X = X_buffer[:b]  # zero border, interior rewritten for every chunk
        self.X[:, :, _PAD:-_PAD, _PAD:-_PAD, :] = input[s:e].reshape(b, Gs, Cs, H, W).permute(0, 1, 3, 4, 2)
        self.X = self.X.view(-1, Cs)  # (b·G'·Hp·Wp, C/G')
        self.num_pixels, self.row_width = self.X.shape[0], W + 2 * _PAD

        pixel, self.ly, self.lx, self.m = _sampling_points(offset[s:e], None if mask is None else mask[s:e],
                                                           geom, dtype)
        r, shape = Gs // geom.offset_groups, pixel.shape  # (b, Ho, Wo, G, kh, kw)
        self.n = pixel.numel() * r
        top_left = _corner_rows(pixel, geom, contiguous=True).view(-1)  # (n,)
        # the four weights, written straight into row order: (b, Ho, Wo, G, r, kh, kw, 4)
        self.weights = torch.empty((*shape[:4], r, *shape[4:], 4), dtype=dtype, device=pixel.device)
        hy, hx, ly, lx = 1 - self.ly, 1 - self.lx, self.ly, self.lx
        if self.m is not None:
            hy, ly = hy * self.m, ly * self.m
        for k, (a, c) in enumerate(((hy, hx), (hy, lx), (ly, hx), (ly, lx))):
            target = self.weights[..., k]  # (b, Ho, Wo, G, r, kh, kw): the sub-groups share the weights
            torch.mul(a.unsqueeze(4).expand_as(target), c.unsqueeze(4), out=target)
        self.weights = self.weights.view(self.n, 4)
        shifts = torch.tensor([0, 1, self.row_width, self.row_width + 1], device=pixel.device)
        # (pixel, point) of every non-zero of S^T, as a COO index; row 0 holds the four corners
        self.coo_index = torch.empty((2, 4 * self.n), dtype=torch.int64, device=pixel.device)
        self.corners = torch.add(top_left.view(-1, 1), shifts, out=self.coo_index[0].view(-1, 4))
        # corners: (n, 4), ascending within each row
        if kind == "sparse":
            crow = torch.arange(0, 4 * self.n + 1, 4, device=pixel.device)
            self.S = _csr(crow, self.coo_index[0], self.weights.view(-1), (self.n, self.num_pixels))

    def sample(self, out: Tensor) -> Tensor:
        if self.kind == "sparse":
            return torch.addmm(out, self.S, self.X, beta=0, out=out)
        torch.index_select(self.X, 0, self.corners[:, 0], out=out).mul_(self.weights[:, 0:1])
        for k in range(1, 4):
            out.addcmul_(self.X.index_select(0, self.corners[:, k]), self.weights[:, k:k + 1])
        return out

    def sample_t(self, grad_cols: Tensor, out: Tensor, point_ids: Tensor | None) -> Tensor:
        """``point_ids``: ``arange(4·n) // 4`` (or longer), shared by the chunks of a call (COO only)."""
        if self.kind == "sparse" and _transpose_as_csr():
            # S^T in CSR form: the (point, corner) entries grouped by the pixel they read, by a
            # stable (radix) sort; then a multi-threaded product
            key = self.corners.view(-1)
            if 4 * self.n < 2**31 and self.num_pixels < 2**31:
                key = key.to(torch.int32)
            order = torch.sort(key, stable=True).indices
            crow = torch.zeros(self.num_pixels + 1, dtype=key.dtype, device=key.device)
            torch.cumsum(torch.bincount(key, minlength=self.num_pixels), 0, dtype=key.dtype, out=crow[1:])
            St = _csr(crow, (order // 4).to(key.dtype), self.weights.view(-1).index_select(0, order),
                      (self.num_pixels, self.n))
            return torch.addmm(out, St, grad_cols, beta=0, out=out)
        if self.kind == "sparse":
            # S^T as an unsorted COO matrix: one serial pass over its entries, no sort
            self.coo_index[1].copy_(point_ids[:4 * self.n])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                St = torch.sparse_coo_tensor(self.coo_index, self.weights.view(-1), (self.num_pixels, self.n),
                                             check_invariants=False)
            return torch.addmm(out, St, grad_cols, beta=0, out=out)
        out.zero_()
        for k in range(4):
            out.index_add_(0, self.corners[:, k], grad_cols * self.weights[:, k:k + 1])
        return out

    def corner_dots(self, grad_cols: Tensor) -> Tensor:
        if self.kind == "sparse":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta" (once per process)
                dots = torch.sparse.sampled_addmm(self.S, grad_cols, self.X.t(), beta=0.0)
            return dots.values().view(self.n, 4)
        return torch.stack([(self.X.index_select(0, self.corners[:, k]) * grad_cols).sum(1) for k in range(4)], 1)

    def coordinate_grads(self, dots: Tensor, grad_offset: Tensor | None, grad_mask: Tensor | None) -> None:
        """Offset and mask gradients of the chunk from the corner dots ``[n, 4]``, written into
        ``grad_offset[b, 2·G·kh·kw, Ho, Wo]`` and ``grad_mask[b, G·kh·kw, Ho, Wo]``."""
        geom = self.geom
        b, Ho, Wo, G, kh, kw = self.ly.shape
        dots = dots.view(b, Ho, Wo, G, geom.sub_groups // G, kh, kw, 4).sum(4)  # sub-groups share offsets
        d00, d01, d10, d11 = dots.unbind(-1)  # each (b, Ho, Wo, G, kh, kw)
        ly, lx, hy, hx = self.ly, self.lx, 1 - self.ly, 1 - self.lx
        if grad_offset is not None:
            g = grad_offset.view(b, G, kh, kw, 2, Ho, Wo).permute(0, 5, 6, 1, 2, 3, 4)  # (b, Ho, Wo, G, kh, kw, 2)
            gy = (d10 - d00) * hx + (d11 - d01) * lx
            gx = (d01 - d00) * hy + (d11 - d10) * ly
            if self.m is None:
                g[..., 0], g[..., 1] = gy, gx
            else:
                torch.mul(gy, self.m, out=g[..., 0])
                torch.mul(gx, self.m, out=g[..., 1])
        if grad_mask is not None:
            gm = grad_mask.view(b, G, kh, kw, Ho, Wo).permute(0, 4, 5, 1, 2, 3)  # (b, Ho, Wo, G, kh, kw)
            torch.add((d00 * hx + d01 * lx) * hy, (d10 * hx + d11 * lx) * ly, out=gm)


def _transpose_as_csr() -> bool:
    """How :meth:`_Chunk.sample_t` forms ``S^T``: sorted into CSR (a parallel radix sort, then a
    parallel product) or as unsorted COO (one serial pass). On an idle 2-core machine CSR is about
    2.5× faster, but its sort synchronises its threads many times and collapses when the cores are
    busy (10-40× slower measured); COO costs the same either way. "auto" takes CSR from 4 threads."""
    return _TRANSPOSE == "csr" or (_TRANSPOSE == "auto" and torch.get_num_threads() >= 4)


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta" (once per process)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


def _chunks(geom: _Geometry, element_size: int, device: torch.device,
            budget: int | None = None) -> list[tuple[int, int]]:
    """Batch ranges whose column buffer fits the chunk budget (at least one image each)."""
    per_image = geom.out_h * geom.out_w * geom.taps * geom.in_channels * element_size
    if budget is None:
        budget = _CHUNK_BYTES if device.type == "cpu" else _CHUNK_BYTES_GPU
    # small maps: enough images that the matrix products have a few hundred columns
    step = max(1, budget // max(per_image, 1), -(-_MIN_CHUNK_COLUMNS // (geom.out_h * geom.out_w)))
    return [(s, min(s + step, geom.batch)) for s in range(0, geom.batch, step)]


def _compute_dtype(dtype: torch.dtype, kind: str) -> torch.dtype:
    # torch.sparse products exist for float32/float64 only: half precisions compute in float32
    if kind == "sparse" and dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


def _buffers(geom: _Geometry, dtype, device, chunk_images: int, columns: bool = True) -> tuple[Tensor, Tensor | None]:
    """The padded channels-last input ``[b, G', Hp, Wp, C/G']`` (zeros) and a columns buffer (or None)."""
    Gs, Cs = geom.sub_groups, geom.sub_channels
    X = torch.zeros((chunk_images, Gs, geom.height + 2 * _PAD, geom.width + 2 * _PAD, Cs), dtype=dtype,
                    device=device)
    n = chunk_images * geom.out_h * geom.out_w * Gs * geom.taps
    return X, (torch.empty((n, Cs), dtype=dtype, device=device) if columns else None)


def _weight_product(cols: Tensor, w: Tensor, geom: _Geometry, out: Tensor) -> None:
    """``out[b, C_out, Ho, Wo] = weight ⊛ cols`` for the columns ``[b·Ho·Wo, G'·kh·kw·C/G']``: one
    matrix product per group over all the chunk's images (the weight is read once)."""
    b, L = out.shape[0], geom.out_h * geom.out_w
    R = w.shape[-1]
    target = out.view(geom.groups, -1, L) if out.dtype == cols.dtype and b == 1 else None
    colsg = cols.view(b * L, geom.groups, R).permute(1, 2, 0)  # (groups, R, b·L)
    res = torch.bmm(w, colsg, **_out(target))  # (groups, C_out/groups, b·L)
    if target is None:
        out.view(b, -1, L).copy_(res.view(geom.out_channels, b, L).transpose(0, 1))


def _out(target: Tensor | None) -> dict:
    return {} if target is None else {"out": target}


def _chunked_forward(input, offset, mask, weight, bias, geom: _Geometry, kind: str) -> Tensor:
    """Forward pass of the chunked formulation (``kind``: "sparse" or "gather"): ``[B, C_out, Ho, Wo]``."""
    dtype = _compute_dtype(input.dtype, kind)
    out = input.new_empty((geom.batch, geom.out_channels, geom.out_h, geom.out_w))
    chunks = _chunks(geom, torch.finfo(dtype).bits // 8, input.device)
    w = _grouped_weight(weight, geom, dtype)  # (groups, C_out/groups, R)
    if chunks:
        X_buffer, cols_buffer = _buffers(geom, dtype, input.device, chunks[0][1])
        for s, e in chunks:
            chunk = _Chunk(input, offset, mask, s, e, geom, dtype, kind, X_buffer)
            cols = chunk.sample(cols_buffer[:chunk.n])  # (b·Ho·Wo·G'·kh·kw, C/G')
            _weight_product(cols, w, geom, out[s:e])
        if bias is not None:
            out += bias.view(1, -1, 1, 1)
    return out


def _chunked_backward(grad_out, input, offset, mask, weight, geom: _Geometry, kind: str,
                      needs: tuple[bool, bool, bool, bool]) -> tuple:
    """Gradients ``(input, offset, mask, weight)`` of the chunked formulation (None where not in
    ``needs``, the same order); the bias gradient is ``grad_out.sum((0, 2, 3))``."""
    need_input, need_offset, need_mask, need_weight = needs
    need_mask = need_mask and mask is not None
    dtype = _compute_dtype(input.dtype, kind)
    w = _grouped_weight(weight, geom, dtype)  # (groups, C_out/groups, R)
    L, groups = geom.out_h * geom.out_w, geom.groups
    Gs, Cs, H, W = geom.sub_groups, geom.sub_channels, geom.height, geom.width
    grad_input = torch.zeros_like(input, memory_format=torch.contiguous_format) if need_input else None
    grad_offset = torch.zeros_like(offset, memory_format=torch.contiguous_format) if need_offset else None
    grad_mask = torch.zeros_like(mask, memory_format=torch.contiguous_format) if need_mask else None
    grad_w = None  # (groups, C_out/groups, R), summed over the chunks
    chunks = _chunks(geom, torch.finfo(dtype).bits // 8, input.device)
    if chunks and (need_input or need_offset or need_mask or need_weight):
        # one column buffer: the columns, used up by the weight gradient, then their gradient
        X_buffer, cols_buffer = _buffers(geom, dtype, input.device, chunks[0][1])
        gX_buffer = torch.empty_like(X_buffer).view(-1, Cs) if need_input else None
        point_ids = torch.arange(4 * cols_buffer.shape[0], device=input.device) // 4 \
            if need_input and kind == "sparse" and not _transpose_as_csr() else None
        for s, e in chunks:
            b = e - s
            chunk = _Chunk(input, offset, mask, s, e, geom, dtype, kind, X_buffer)
            go = grad_out[s:e].to(dtype).reshape(b, groups, -1, L).permute(1, 2, 0, 3)
            go = go.reshape(groups, -1, b * L)  # (groups, C_out/groups, b·Ho·Wo)
            if need_weight:
                cols = chunk.sample(cols_buffer[:chunk.n]).view(b * L, groups, -1)
                if grad_w is None:
                    grad_w = torch.bmm(go, cols.transpose(0, 1))  # (groups, C_out/groups, R)
                else:
                    grad_w.baddbmm_(go, cols.transpose(0, 1))
            grad_cols = cols_buffer[:chunk.n]
            if groups == 1:
                torch.mm(go[0].t(), w[0], out=grad_cols.view(b * L, -1))
            else:  # group by group: a temporary of 1/groups of the columns, not a second buffer
                for j, strided in enumerate(grad_cols.view(b * L, groups, -1).unbind(1)):
                    strided.copy_(torch.mm(go[j].t(), w[j]))
            # grad_cols: (b·Ho·Wo·G'·kh·kw, C/G')
            if need_input:
                gX = chunk.sample_t(grad_cols, gX_buffer[:chunk.num_pixels], point_ids)
                gX = gX.view(b, Gs, H + 2 * _PAD, W + 2 * _PAD, Cs)[:, :, _PAD:-_PAD, _PAD:-_PAD, :]
                grad_input[s:e].view(b, Gs, Cs, H, W).copy_(gX.permute(0, 1, 4, 2, 3))
            if need_offset or need_mask:
                chunk.coordinate_grads(chunk.corner_dots(grad_cols),
                                       None if grad_offset is None else grad_offset[s:e],
                                       None if grad_mask is None else grad_mask[s:e])
    if need_weight and grad_w is None:  # empty batch
        grad_w = torch.zeros_like(w)
    grad_weight = _ungroup_weight(grad_w, geom).to(weight.dtype).contiguous() if need_weight else None
    return grad_input, grad_offset, grad_mask, grad_weight


def _default_kind(input: Tensor, geom: _Geometry | None = None) -> str:
    """The sampler for a call. On CPU the C++ kernels ("cpp") when they could be built; otherwise
    the sparse matrix, or grid_sample for very few channels per offset group (measured at
    64×48×48, 3×3, f+b: 1 channel 92 vs 614 ms; 8 channels 657 vs 544 ms). Elsewhere "gather"."""
    if input.device.type != "cpu":
        return "gather"
    if _deform_cpp.library() is not None:
        return "cpp"
    if geom is not None and geom.in_channels // geom.offset_groups <= _GRID_MAX_CHANNELS:
        return "grid"
    return "sparse"


# ----------------------------------------------------------------------------------------------
# Few channels: bilinear sampling by grid_sample, the same Function interface
# ----------------------------------------------------------------------------------------------


def _grid(offset: Tensor, geom: _Geometry, dtype: torch.dtype) -> Tensor:
    """``grid_sample`` grid (``align_corners=False``) of a chunk's sampling points: ``[b·G, K·Ho, Wo, 2]``
    holding normalised ``(x, y)``, tap-major within each offset group."""
    b, G, K, Ho, Wo = offset.shape[0], geom.offset_groups, geom.taps, geom.out_h, geom.out_w
    (sh, sw), (ph, pw), (dh, dw) = geom.stride, geom.padding, geom.dilation
    dev = offset.device
    base_y = (torch.arange(Ho, device=dev, dtype=dtype) * sh - ph).view(1, Ho, 1) \
        + (torch.arange(geom.kh, device=dev, dtype=dtype) * dh).repeat_interleave(geom.kw).view(K, 1, 1)
    base_x = (torch.arange(Wo, device=dev, dtype=dtype) * sw - pw).view(1, 1, Wo) \
        + (torch.arange(geom.kw, device=dev, dtype=dtype) * dw).repeat(geom.kh).view(K, 1, 1)
    delta = offset.to(dtype).reshape(b, G, K, 2, Ho, Wo)
    grid = torch.empty((b, G, K, Ho, Wo, 2), dtype=dtype, device=dev)
    # align_corners=False: pixel p ↔ (2p + 1) / size − 1 (valid for maps of any size, 1 included)
    torch.add(delta[:, :, :, 1], base_x, out=grid[..., 0]).add_(0.5).mul_(2.0 / geom.width).sub_(1)
    torch.add(delta[:, :, :, 0], base_y, out=grid[..., 1]).add_(0.5).mul_(2.0 / geom.height).sub_(1)
    return grid.view(b * G, K * Ho, Wo, 2)


def _grid_columns(input: Tensor, grid: Tensor, geom: _Geometry, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The chunk's input as ``[b·G, C/G, H, W]`` and its sampled columns ``[b, G, C/G, K, Ho·Wo]``."""
    b, G = input.shape[0], geom.offset_groups
    x = input.to(dtype).reshape(b * G, geom.in_channels // G, geom.height, geom.width)
    cols = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return x, cols.view(b, G, geom.in_channels // G, geom.taps, geom.out_h * geom.out_w)


def _grid_forward(input, offset, mask, weight, bias, geom: _Geometry) -> Tensor:
    """Forward pass with ``grid_sample`` as the bilinear sampler (the same semantics: zero padding,
    corners outside the map read 0); the weight product is one batched matmul per chunk. Chosen on
    CPU for few channels per offset group, where the sparse formulation's per-point cost dominates."""
    dtype = _compute_dtype(input.dtype, "sparse")
    G, K, L, groups = geom.offset_groups, geom.taps, geom.out_h * geom.out_w, geom.groups
    out = input.new_empty((geom.batch, geom.out_channels, geom.out_h, geom.out_w))
    w = weight.to(dtype).reshape(groups, geom.out_channels // groups, -1)  # (groups, C_out/groups, C/groups·K)
    for s, e in _chunks(geom, torch.finfo(dtype).bits // 8, input.device):
        b = e - s
        _, cols = _grid_columns(input[s:e], _grid(offset[s:e], geom, dtype), geom, dtype)
        if mask is not None:
            cols.mul_(mask[s:e].to(dtype).reshape(b, G, 1, K, L))
        res = torch.matmul(w, cols.view(b, groups, -1, L))  # (b, groups, C_out/groups, L)
        out[s:e].copy_(res.view(b, geom.out_channels, geom.out_h, geom.out_w))
    if bias is not None:
        out += bias.view(1, -1, 1, 1)
    return out


def _grid_backward(grad_out, input, offset, mask, weight, geom: _Geometry,
                   needs: tuple[bool, bool, bool, bool]) -> tuple:
    """Gradients ``(input, offset, mask, weight)`` of :func:`_grid_forward`: the columns are
    recomputed and ``grid_sampler_2d_backward`` gives the input and coordinate gradients."""
    need_input, need_offset, need_mask, need_weight = needs
    need_mask = need_mask and mask is not None
    dtype = _compute_dtype(input.dtype, "sparse")
    G, K, L, groups = geom.offset_groups, geom.taps, geom.out_h * geom.out_w, geom.groups
    Cg = geom.in_channels // G
    w = weight.to(dtype).reshape(groups, geom.out_channels // groups, -1)
    grad_input = torch.zeros_like(input, memory_format=torch.contiguous_format) if need_input else None
    grad_offset = torch.zeros_like(offset, memory_format=torch.contiguous_format) if need_offset else None
    grad_mask = torch.zeros_like(mask, memory_format=torch.contiguous_format) if need_mask else None
    grad_w = torch.zeros_like(w) if need_weight else None
    wt = w.transpose(1, 2)  # (groups, C/groups·K, C_out/groups)
    for s, e in _chunks(geom, torch.finfo(dtype).bits // 8, input.device):
        if not (need_input or need_offset or need_mask or need_weight):
            break
        b = e - s
        grid = _grid(offset[s:e], geom, dtype)
        x, cols = _grid_columns(input[s:e], grid, geom, dtype)  # cols: (b, G, C/G, K, L), unmodulated
        m = None if mask is None else mask[s:e].to(dtype).reshape(b, G, 1, K, L)
        go = grad_out[s:e].to(dtype).reshape(b, groups, -1, L)  # (b, groups, C_out/groups, L)
        if need_weight:
            mod = cols if m is None else cols * m
            grad_w += torch.matmul(go, mod.view(b, groups, -1, L).transpose(2, 3)).sum(0)
        grad_mod = torch.matmul(wt, go).view(b, G, Cg, K, L)  # d loss / d modulated columns
        if need_mask:
            grad_mask[s:e].view(b, G, K, L).copy_((grad_mod * cols).sum(2))
        if need_input or need_offset:
            grad_cols = grad_mod if m is None else grad_mod.mul_(m)
            gx, gg = torch.ops.aten.grid_sampler_2d_backward(
                grad_cols.view(b * G, Cg, K * geom.out_h, geom.out_w), x, grid, 0, 0, False,
                [bool(need_input), bool(need_offset)])
            if need_input:
                grad_input[s:e].copy_(gx.view(b, geom.in_channels, geom.height, geom.width))
            if need_offset:
                gg = gg.view(b, G, K, geom.out_h, geom.out_w, 2)
                go_ = grad_offset[s:e].view(b, G, K, 2, geom.out_h, geom.out_w)
                torch.mul(gg[..., 1], 2.0 / geom.height, out=go_[:, :, :, 0])
                torch.mul(gg[..., 0], 2.0 / geom.width, out=go_[:, :, :, 1])
    grad_weight = grad_w.reshape(weight.shape).to(weight.dtype).contiguous() if need_weight else None
    return grad_input, grad_offset, grad_mask, grad_weight


# ----------------------------------------------------------------------------------------------
# The C++ kernels (csrc/deform_conv_cpu.cpp): the same chunks, sampling fused into two passes
# ----------------------------------------------------------------------------------------------


class _Kernels:
    """The C++ functions of one compute dtype and the per-call constants they share."""

    def __init__(self, input: Tensor, offset: Tensor, mask: Tensor | None, geom: _Geometry):
        lib = _deform_cpp.library()
        self.dtype = _compute_dtype(input.dtype, "sparse")
        suffix = "f64" if self.dtype == torch.float64 else "f32"
        self.im2col, self.col2im, self.pad, self.unpad, self.fused_forward, self.fused_backward = (
            getattr(lib, f"vislab_deform_{name}_{suffix}")
            for name in ("im2col", "col2im", "pad", "unpad", "fused_forward", "fused_backward"))
        self.geom = geom
        self.input = input.to(self.dtype)
        self.offset = offset.to(self.dtype).contiguous()
        self.mask = None if mask is None else mask.to(self.dtype).contiguous()
        self.chunks = _chunks(geom, torch.finfo(self.dtype).bits // 8, input.device, _CHUNK_BYTES_CPP)

    @staticmethod
    def run(fn: Any, *args: Any, bounds: list[int]) -> Any:
        """``fn(*args, pieces...)``: one C++ pass over the pieces ``bounds`` on the kernels' OpenMP threads."""
        pieces, n = _deform_cpp.pieces(bounds)
        return fn(*args, pieces.data_ptr(), n, _deform_cpp.threads())

    def start_chunk(self, s: int, e: int, X_buffer: Tensor) -> None:
        """Write the chunk's input into ``X_buffer``'s interior; set the chunk's pointers and ranges."""
        geom, b = self.geom, e - s
        self.b, self.s = b, s
        self.X = X_buffer[:b]
        self.geo = _kernel_geometry(geom, b)
        self.ranges = _deform_cpp.row_ranges(b * geom.out_h)  # one per worker of the row passes
        x = self.input[s:e]
        strides = torch.tensor(x.stride(), dtype=torch.int64)
        self.run(self.pad, x.data_ptr(), strides.data_ptr(), self.X.data_ptr(), self.geo.data_ptr(),
                 bounds=_deform_cpp.piece_bounds(b * geom.sub_groups * geom.height))
        self.off_ptr = self.offset[s:e].data_ptr()
        self.mask_ptr = None if self.mask is None else self.mask[s:e].data_ptr()

    def sample(self, cols: Tensor) -> Tensor:
        self.run(self.im2col, self.X.data_ptr(), self.off_ptr, self.mask_ptr, cols.data_ptr(), self.geo.data_ptr(),
                 bounds=_deform_cpp.piece_bounds(self.b * self.geom.out_h))
        return cols

    def scatter(self, kernel: Any, gX: Tensor | None) -> Tensor | None:
        """Run ``kernel(gX pointer, mode, image size, bounds=...)`` over the chunk's output rows so that the
        input gradient it scatters never depends on the scheduling (:func:`~vislab.ops._deform_cpp.scatter_pieces`):
        pieces of whole images into the shared buffer ``gX[0]`` (mode 1: each piece zeroes its images first),
        or, with few images, pieces within one image, each into a one-image buffer of its own (mode 2), then
        summed per image in piece order into ``gX[0]``. Returns the buffers :meth:`unpad_sum` reads
        (``gX[:1]``), or None."""
        bounds, shared = _deform_cpp.scatter_pieces(self.b, self.geom.out_h)
        if gX is None:
            kernel(None, 0, 0, bounds=bounds)
            return None
        if shared:
            kernel(gX[0].data_ptr(), 1, gX.stride(1), bounds=bounds)
            return gX[:1]
        own = gX.new_empty((len(bounds) - 1, gX.stride(1)))  # one image's padded gradient per piece
        kernel(own.data_ptr(), 2, gX.stride(1), bounds=bounds)
        per_image = own.view(self.b, -1, gX.stride(1))  # every image has the same number of pieces
        torch.sum(per_image, dim=1, out=gX[0].reshape(self.b, -1))
        return gX[:1]

    def sample_backward(self, grad_cols: Tensor, gX: Tensor | None, grad_offset: Tensor | None,
                        grad_mask: Tensor | None) -> Tensor | None:
        """Input gradient into the padded buffers ``gX`` (:meth:`scatter`; returns those to sum), offset and
        mask gradients of the chunk (contiguous, compute dtype) straight into place."""
        args = (self.X.data_ptr(), self.off_ptr, self.mask_ptr, grad_cols.data_ptr())
        tail = (_ptr(grad_offset), _ptr(grad_mask), self.geo.data_ptr())
        return self.scatter(lambda gx, mode, image, bounds: self.run(self.col2im, *args, gx, mode, image, *tail,
                                                                     bounds=bounds), gX)

    def unpad_sum(self, gX: Tensor, grad_input: Tensor) -> None:
        """``grad_input`` (contiguous ``[b, C, H, W]``) = the sum of the workers' padded buffers' interiors."""
        geom = self.geom
        self.run(self.unpad, gX.data_ptr(), gX.shape[0], gX.stride(0), grad_input.data_ptr(), self.geo.data_ptr(),
                 bounds=_deform_cpp.piece_bounds(self.b * geom.sub_groups * geom.height))


def _kernel_geometry(geom: _Geometry, b: int) -> Tensor:
    (sh, sw), (ph, pw), (dh, dw) = geom.stride, geom.padding, geom.dilation
    G = geom.offset_groups
    return torch.tensor([b, geom.out_h, geom.out_w, G, geom.sub_groups // G, geom.kh, geom.kw, geom.sub_channels,
                         geom.height, geom.width, sh, sw, ph, pw, dh, dw], dtype=torch.int64)


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _fused(geom: _Geometry) -> bool:
    """groups = 1 with 8 or 16 output channels, or one input channel per offset group (up to
    ``_FUSED_SINGLE_MAX_OUT`` outputs): the fused kernels (no column buffer). Measured at batch 64, 2 threads,
    forward+backward with mask: docs/deformable.md."""
    if geom.groups != 1:
        return False
    if geom.sub_channels == 1 and geom.sub_groups == geom.offset_groups:
        return geom.out_channels <= _FUSED_SINGLE_MAX_OUT
    return geom.out_channels in _FUSED_OUT


def _fused_chunks(k: _Kernels) -> list[tuple[int, int]]:
    """Batch ranges whose padded input fits ``_FUSED_X_BYTES`` (the column budget of the same images is
    about ``taps`` times larger)."""
    return _chunks(k.geom, torch.finfo(k.dtype).bits // 8, torch.device("cpu"), _FUSED_X_BYTES * k.geom.taps)


def _fused_forward(k: _Kernels, weight: Tensor, geom: _Geometry, out: Tensor) -> None:
    """``out`` (without bias) by the fused kernel: per output row, each pixel's column gathered into a local
    buffer and multiplied by the weight there."""
    res = out if out.dtype == k.dtype else torch.empty_like(out, dtype=k.dtype)
    wt = _grouped_weight(weight, geom, k.dtype)[0].t().contiguous()  # (R, C_out)
    chunks = _fused_chunks(k)
    X_buffer, _ = _buffers(geom, k.dtype, out.device, chunks[0][1], columns=False)
    for s, e in chunks:
        k.start_chunk(s, e, X_buffer)
        done = k.run(k.fused_forward, k.X.data_ptr(), k.off_ptr, k.mask_ptr, wt.data_ptr(), res[s:e].data_ptr(),
                     k.geo.data_ptr(), geom.out_channels, bounds=_deform_cpp.piece_bounds((e - s) * geom.out_h))
        if not done:
            raise RuntimeError(f"no fused kernel for {geom.out_channels} output channels")  # _fused() said yes
    if res is not out:
        out.copy_(res)


def _fused_backward(k: _Kernels, grad_out: Tensor, w: Tensor, geom: _Geometry, gi: Tensor | None,
                    go_off: Tensor | None, go_mask: Tensor | None, need_weight: bool) -> Tensor | None:
    """The gradients by the fused kernel into ``gi``, ``go_off``, ``go_mask`` (compute dtype, contiguous; None:
    not needed); returns the transposed weight gradient ``[R, C_out]`` (summed over the workers) or None."""
    dtype, C_out = k.dtype, geom.out_channels
    go = grad_out.to(dtype).contiguous()
    R = w.shape[1]
    w_padded = w.new_zeros((C_out, -(-R // _FUSED_BLOCK) * _FUSED_BLOCK))
    w_padded[:, :R] = w
    chunks = _fused_chunks(k)
    X_buffer, _ = _buffers(geom, dtype, grad_out.device, chunks[0][1], columns=False)
    parts = len(_deform_cpp.row_ranges(chunks[0][1] * geom.out_h))
    gX_buffers = X_buffer.new_empty((parts, *X_buffer.shape)) if gi is not None else None
    # the weight gradient is accumulated per piece of rows (k.scatter's pieces), not per worker, and summed in
    # piece order: which worker takes which piece varies from call to call, the result must not
    pieces = max(len(_deform_cpp.scatter_pieces(e - s, geom.out_h)[0]) - 1 for s, e in chunks)
    gwt = X_buffer.new_zeros((pieces, R, C_out)) if need_weight else None
    for s, e in chunks:
        k.start_chunk(s, e, X_buffer)
        head = (k.X.data_ptr(), k.off_ptr, k.mask_ptr, w_padded.data_ptr(), go[s:e].data_ptr())
        tail = (None if go_off is None else go_off[s:e].data_ptr(),
                None if go_mask is None else go_mask[s:e].data_ptr())

        def kernel(gx: int | None, mode: int, image: int, bounds: list[int], head: tuple = head,
                   tail: tuple = tail) -> None:
            k.run(k.fused_backward, *head, gx, mode, image, *tail, None if gwt is None else gwt.data_ptr(),
                  R * C_out, k.geo.data_ptr(), C_out, bounds=bounds)

        used = k.scatter(kernel, gX_buffers[:len(k.ranges), :e - s] if gi is not None else None)
        if gi is not None:
            k.unpad_sum(used, gi[s:e])
    return None if gwt is None else gwt.sum(0)


def _native_forward(input, offset, mask, weight, bias, geom: _Geometry) -> Tensor:
    """Forward pass with the C++ kernels: per chunk, the padded input, the columns (one fused
    sampling pass) and the weight product."""
    out = input.new_empty((geom.batch, geom.out_channels, geom.out_h, geom.out_w))
    k = _Kernels(input, offset, mask, geom)
    if not k.chunks:
        return out
    if _fused(geom):
        _fused_forward(k, weight, geom, out)
        if bias is not None:
            out += bias.view(1, -1, 1, 1)
        return out
    w = _grouped_weight(weight, geom, k.dtype)
    L, C_out = geom.out_h * geom.out_w, geom.out_channels
    X_buffer, cols_buffer = _buffers(geom, k.dtype, input.device, k.chunks[0][1])
    for s, e in k.chunks:
        k.start_chunk(s, e, X_buffer)
        b = e - s
        cols = k.sample(cols_buffer[:b * L * geom.sub_groups * geom.taps])
        # large maps: out[i] = W @ cols[i]^T per image, in place; small maps (L < R): one product of the
        # chunk's images side by side (per-image products with few columns are slow)
        if geom.groups == 1 and out.dtype == k.dtype and L >= w.shape[-1]:
            torch.bmm(w[0].expand(b, -1, -1), cols.view(b, L, -1).transpose(1, 2), out=out[s:e].view(b, C_out, L))
        else:
            _weight_product(cols, w, geom, out[s:e])
    if bias is not None:
        out += bias.view(1, -1, 1, 1)
    return out


def _native_backward(grad_out, input, offset, mask, weight, geom: _Geometry,
                     needs: tuple[bool, bool, bool, bool]) -> tuple:
    """Gradients ``(input, offset, mask, weight)`` with the C++ kernels: per chunk the columns again
    (weight gradient), the column gradient (GEMM), then one fused pass for the input gradient (each
    thread into its own padded buffer, summed by the un-padding pass) and the offset and mask
    gradients."""
    need_input, need_offset, need_mask, need_weight = needs
    need_mask = need_mask and mask is not None
    k = _Kernels(input, offset, mask, geom)
    dtype, L, groups, C_out = k.dtype, geom.out_h * geom.out_w, geom.groups, geom.out_channels
    contiguous = torch.contiguous_format
    # every element of these is written by the kernels
    grad_input = torch.empty_like(input, memory_format=contiguous) if need_input else None
    grad_offset = torch.empty_like(offset, memory_format=contiguous) if need_offset else None
    grad_mask = torch.empty_like(mask, memory_format=contiguous) if need_mask else None
    # the kernels write the compute dtype: half-precision gradients go through float32 buffers
    gi = grad_input if grad_input is None or grad_input.dtype == dtype else torch.empty_like(grad_input, dtype=dtype)
    go_off = grad_offset if grad_offset is None or grad_offset.dtype == dtype else torch.empty_like(k.offset)
    go_mask = grad_mask if grad_mask is None or grad_mask.dtype == dtype else torch.empty_like(k.mask)
    w = _grouped_weight(weight, geom, dtype)
    grad_w = torch.zeros_like(w) if need_weight else None
    if k.chunks and _fused(geom) and (need_input or need_offset or need_mask or need_weight):
        gwt = _fused_backward(k, grad_out, w[0], geom, gi, go_off, go_mask, need_weight)
        if need_weight:
            grad_w = gwt.t().unsqueeze(0)
    elif k.chunks and (need_input or need_offset or need_mask or need_weight):
        X_buffer, cols_buffer = _buffers(geom, dtype, input.device, k.chunks[0][1])
        parts = len(_deform_cpp.row_ranges(k.chunks[0][1] * geom.out_h))
        gX_buffers = X_buffer.new_empty((parts, *X_buffer.shape)) if need_input else None
        for s, e in k.chunks:
            b = e - s
            k.start_chunk(s, e, X_buffer)
            cols_or_grad = cols_buffer[:b * L * geom.sub_groups * geom.taps]
            go = grad_out[s:e].to(dtype).reshape(b, C_out, L)
            if need_weight:  # grad_W[g] += sum_i go[i, g] @ cols[i, :, g]
                cols = k.sample(cols_or_grad).view(b, L, groups, -1)
                R = cols.shape[-1]
                if L >= R:  # large maps: one batched product per image, summed (a temporary of b·C_out·R)
                    per_image = torch.bmm(go.reshape(b * groups, -1, L),
                                          cols.permute(0, 2, 1, 3).reshape(b * groups, L, R))
                    grad_w += per_image.view(b, groups, *grad_w.shape[1:]).sum(0)
                else:  # small maps, many channels: the images side by side (a copy of go, b·C_out·L)
                    go_all = go.view(b, groups, -1, L).permute(1, 2, 0, 3).reshape(groups, -1, b * L)
                    grad_w.baddbmm_(go_all, cols.view(b * L, groups, R).transpose(0, 1))
            if not (need_input or need_offset or need_mask):
                continue
            grad_cols = cols_or_grad
            if groups == 1 and L >= w.shape[-1]:  # large maps: grad_cols[i] = go[i]^T @ W per image
                torch.bmm(go.transpose(1, 2), w[0].expand(b, -1, -1), out=grad_cols.view(b, L, -1))
            elif groups == 1:  # small maps: one product with the images side by side
                torch.mm(go.permute(0, 2, 1).reshape(b * L, C_out), w[0], out=grad_cols.view(b * L, -1))
            else:  # group by group: a temporary of 1/groups of the columns
                go_groups = go.view(b, groups, -1, L)
                for j, strided in enumerate(grad_cols.view(b, L, groups, -1).unbind(2)):
                    strided.copy_(torch.bmm(go_groups[:, j].transpose(1, 2), w[j].expand(b, -1, -1)))
            used = k.sample_backward(grad_cols, gX_buffers[:len(k.ranges), :b] if need_input else None,
                                     None if go_off is None else go_off[s:e], None if go_mask is None else go_mask[s:e])
            if need_input:
                k.unpad_sum(used, gi[s:e])
    for target, source in ((grad_input, gi), (grad_offset, go_off), (grad_mask, go_mask)):
        if target is not None and source is not target:
            target.copy_(source)
    grad_weight = _ungroup_weight(grad_w, geom).to(weight.dtype).contiguous() if need_weight else None
    return grad_input, grad_offset, grad_mask, grad_weight


# ----------------------------------------------------------------------------------------------
# The two passes of a sampler kind, as an autograd Function and as the registered operator
# ----------------------------------------------------------------------------------------------


def _forward(kind: str, input, offset, mask, weight, bias, geom: _Geometry) -> Tensor:  # noqa: ANN001
    if kind == "cpp":
        return _native_forward(input, offset, mask, weight, bias, geom)
    if kind == "grid":
        return _grid_forward(input, offset, mask, weight, bias, geom)
    return _chunked_forward(input, offset, mask, weight, bias, geom, kind)


def _backward(kind: str, grad_out, input, offset, mask, weight, geom: _Geometry, needs) -> tuple:  # noqa: ANN001
    """``(grad_input, grad_offset, grad_mask, grad_weight)``, None where ``needs`` is False."""
    if kind == "cpp":
        return _native_backward(grad_out, input, offset, mask, weight, geom, needs)
    if kind == "grid":
        return _grid_backward(grad_out, input, offset, mask, weight, geom, needs)
    return _chunked_backward(grad_out, input, offset, mask, weight, geom, kind, needs)


class _DeformConv2dFunction(torch.autograd.Function):
    """The two passes with an explicit sampler kind ("sparse", "gather" or "grid"), to compare them."""

    @staticmethod
    def forward(ctx, input, offset, mask, weight, bias, geom: _Geometry, kind: str):
        ctx.geom, ctx.kind = geom, kind
        ctx.save_for_backward(input, offset, mask, weight)
        return _forward(kind, input, offset, mask, weight, bias, geom)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        input, offset, mask, weight = ctx.saved_tensors
        need_input, need_offset, need_mask, need_weight, need_bias = ctx.needs_input_grad[:5]
        grads = _backward(ctx.kind, grad_out, input, offset, mask, weight, ctx.geom,
                          (need_input, need_offset, need_mask, need_weight))
        return *grads, (grad_out.sum((0, 2, 3)) if need_bias else None), None, None


_SCHEMA = ("(Tensor input, Tensor offset, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
           "int[2] dilation, Tensor? mask) -> Tensor")
_BACKWARD_SCHEMA = ("(Tensor grad_out, Tensor input, Tensor offset, Tensor weight, Tensor? mask, int[2] stride, "
                    "int[2] padding, int[2] dilation, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)")


@torch.library.custom_op("vislab::deform_conv2d", mutates_args=(), device_types=("cpu", "cuda"), schema=_SCHEMA)
def _deform_conv2d_op(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int],
                      padding: list[int], dilation: list[int], mask: Tensor | None) -> Tensor:
    """``vislab::deform_conv2d``: the sparse or grid_sample sampler on CPU, the gather one on CUDA."""
    geom = _check(input, offset, weight, bias, stride, padding, dilation, mask)
    return _forward(_default_kind(input, geom), input, offset, mask, weight, bias, geom)


@_deform_conv2d_op.register_fake
def _deform_conv2d_fake(input, offset, weight, bias, stride, padding, dilation, mask):  # noqa: ANN001
    geom = _check(input, offset, weight, bias, stride, padding, dilation, mask)
    return input.new_empty((geom.batch, geom.out_channels, geom.out_h, geom.out_w))


@torch.library.custom_op("vislab::deform_conv2d_backward", mutates_args=(), device_types=("cpu", "cuda"),
                         schema=_BACKWARD_SCHEMA)
def _deform_conv2d_backward_op(grad_out: Tensor, input: Tensor, offset: Tensor, weight: Tensor, mask: Tensor | None,
                               stride: list[int], padding: list[int], dilation: list[int],
                               output_mask: list[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``vislab::deform_conv2d_backward``: the gradients of (input, offset, weight, mask) selected by
    ``output_mask``; an unselected one (and the mask's when there is no mask) is an empty tensor."""
    geom = _check(input, offset, weight, None, stride, padding, dilation, mask)
    need_input, need_offset, need_weight, need_mask = output_mask
    gi, go, gm, gw = _backward(_default_kind(input, geom), grad_out, input, offset, mask, weight, geom,
                               (need_input, need_offset, need_mask and mask is not None, need_weight))
    return tuple(input.new_empty(0) if g is None else g for g in (gi, go, gw, gm))


@_deform_conv2d_backward_op.register_fake
def _deform_conv2d_backward_fake(grad_out, input, offset, weight, mask, stride, padding, dilation,  # noqa: ANN001
                                 output_mask):
    _check(input, offset, weight, None, stride, padding, dilation, mask)
    need_input, need_offset, need_weight, need_mask = output_mask
    sizes = (input.shape if need_input else (0,), offset.shape if need_offset else (0,),
             weight.shape if need_weight else (0,), mask.shape if need_mask and mask is not None else (0,))
    return tuple(input.new_empty(size) for size in sizes)


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
    input, offset, weight, _, stride, padding, dilation, mask = inputs
    ctx.save_for_backward(input, offset, weight, mask)
    ctx.geometry = (stride, padding, dilation)


def _autograd_backward(ctx, grad_out):  # noqa: ANN001
    input, offset, weight, mask = ctx.saved_tensors
    need_input, need_offset, need_weight, need_bias, _, _, _, need_mask = ctx.needs_input_grad
    grads = torch.ops.vislab.deform_conv2d_backward(
        grad_out, input, offset, weight, mask, *ctx.geometry,
        [need_input, need_offset, need_weight, need_mask and mask is not None])
    gi, go, gw, gm = (g if need else None for g, need in zip(grads, (need_input, need_offset, need_weight,
                                                                      need_mask)))
    gb = grad_out.sum((0, 2, 3)) if need_bias else None
    return gi, go, gw, gb, None, None, None, gm


_deform_conv2d_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def deform_conv2d(
    input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None, stride: _IntPair = 1,
    padding: _IntPair = 0, dilation: _IntPair = 1, mask: Tensor | None = None,
) -> Tensor:
    """Deformable convolution v1 (``mask=None``) and v2 (with ``mask``), torchvision's semantics.

    Args:
        input: ``Tensor[B, C, H, W]``.
        offset: ``Tensor[B, 2·G·kh·kw, Ho, Wo]``, ``(Δy, Δx)`` per kernel tap (row-major), per offset
            group ``G`` (inferred; it must divide ``C``).
        weight: ``Tensor[C_out, C/groups, kh, kw]``; ``groups`` is inferred.
        bias: ``Tensor[C_out]`` or None.
        stride, padding, dilation: int or ``(h, w)`` pair, as for ``nn.Conv2d``.
        mask: ``Tensor[B, G·kh·kw, Ho, Wo]`` modulation (a plain multiplier) or None.

    Returns:
        ``Tensor[B, C_out, Ho, Wo]`` in the input's dtype.

    Float16/bfloat16 inputs are computed in float32 on CPU and returned in their own dtype. Under
    ``torch.autocast`` (``--precision bf16-mixed``), as torchvision's rule does, mixed dtypes are accepted:
    every argument is computed in float32 and the result returned in the input's dtype. This
    calls the registered operator ``torch.ops.vislab.deform_conv2d`` (one node under
    ``torch.compile`` and ``torch.export``); under ONNX export the standard-op formulation
    :func:`deform_conv2d_gather` is used so that the graph contains only standard ops.

    Raises:
        TypeError: an argument of the wrong type or dtype.
        DeformConvValueError: wrong sizes (also a ``RuntimeError``, as torchvision's errors are).
    """
    if torch.onnx.is_in_onnx_export():  # ONNX has no such op: standard ops only
        return deform_conv2d_gather(input, offset, weight, bias, stride, padding, dilation, mask)
    if isinstance(input, Tensor) and torch.is_autocast_enabled(input.device.type):
        # torchvision's autocast rule: every floating argument (not float64) in float32, the op run outside
        # autocast, the result in the input's dtype. Under bf16-mixed the offset conv gives bfloat16 offsets
        # beside a float32 input, which the op itself refuses.
        def f32(t: Tensor | None) -> Tensor | None:
            return t.float() if isinstance(t, Tensor) and t.is_floating_point() and t.dtype != torch.float64 else t

        with torch.autocast(input.device.type, enabled=False):
            out = deform_conv2d(f32(input), f32(offset), f32(weight), f32(bias), stride, padding, dilation,
                                f32(mask))
        return out.to(input.dtype)
    geom = _check(input, offset, weight, bias, stride, padding, dilation, mask)
    return torch.ops.vislab.deform_conv2d(input, offset, weight, bias, list(geom.stride), list(geom.padding),
                                          list(geom.dilation), mask)


def _deform_conv2d_with(kind: str, input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None,
                        stride: _IntPair = 1, padding: _IntPair = 0, dilation: _IntPair = 1,
                        mask: Tensor | None = None) -> Tensor:
    """The autograd Function with an explicit sampler kind (``"sparse"``, ``"gather"`` or ``"grid"``), for tests."""
    geom = _check(input, offset, weight, bias, stride, padding, dilation, mask)
    return _DeformConv2dFunction.apply(input, offset, mask, weight, bias, geom, kind)
