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
  differentiates it; it is what ``torch.compile`` and ONNX export see.
- :func:`deform_conv2d` (the default), a custom autograd Function with a hand-written backward.
  On CPU it writes the bilinear sampling as a sparse matrix ``S`` with four non-zeros per row, so
  that "im2col" is one sparse × dense product ``cols = S @ X``; the backward is ``S^T @ grad_cols``
  for the input and a sampled dense-dense product (``torch.sparse.sampled_addmm``) for the four
  corner gradients, from which the offset and mask gradients follow. The batch is processed in
  chunks so the column buffer stays small (a few MiB: fast in cache and bounded in memory).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["deform_conv2d", "deform_conv2d_gather", "deform_conv2d_output_size"]

# Column-buffer budget per batch chunk, in bytes of the compute dtype. A few MiB keeps the gathered
# columns and the padded input chunk in cache; it also bounds the extra memory of the operator.
_CHUNK_BYTES = 4 * 2**20

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
    if isinstance(value, bool) or not isinstance(value, int | tuple | list):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
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


def _check(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None, stride: _IntPair,
           padding: _IntPair, dilation: _IntPair, mask: Tensor | None) -> _Geometry:
    for name, t in (("input", input), ("offset", offset), ("weight", weight)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (("bias", bias), ("mask", mask)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if input.dim() != 4:
        raise ValueError(f"input must be Tensor[B, C, H, W] (4-D), got shape {tuple(input.shape)}")
    if weight.dim() != 4:
        raise ValueError(
            f"weight must be Tensor[C_out, C_in/groups, kh, kw] (4-D), got shape {tuple(weight.shape)}")
    if not input.dtype.is_floating_point:
        raise TypeError(f"input must be a floating-point tensor, got dtype {input.dtype}")
    for name, t in (("offset", offset), ("weight", weight), ("bias", bias), ("mask", mask)):
        if t is None:
            continue
        if t.dtype != input.dtype:
            raise TypeError(f"{name} must have the input's dtype {input.dtype}, got {t.dtype}")
        if t.device != input.device:
            raise ValueError(f"{name} must be on the input's device {input.device}, got {t.device}")

    stride_, padding_ = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    dilation_ = _pair(dilation, "dilation", 1)
    B, C, H, W = (int(v) for v in input.shape)  # ints also under the legacy (tracing) ONNX exporter
    C_out, C_per_group, kh, kw = (int(v) for v in weight.shape)
    if C_per_group == 0 or C % C_per_group != 0:
        raise ValueError(
            f"weight.shape[1] (input channels per group) must divide the input's {C} channels, "
            f"got weight shape {tuple(weight.shape)}")
    groups = C // C_per_group
    if C_out == 0 or C_out % groups != 0:
        raise ValueError(
            f"weight.shape[0] (output channels) must be a positive multiple of groups={groups} "
            f"(= {C} input channels / weight.shape[1]={C_per_group}), got weight shape {tuple(weight.shape)}")
    if kh == 0 or kw == 0:
        raise ValueError(f"weight must have a non-empty kernel, got weight shape {tuple(weight.shape)}")
    Ho, Wo = deform_conv2d_output_size((H, W), (kh, kw), stride_, padding_, dilation_)
    if Ho <= 0 or Wo <= 0:
        raise ValueError(
            f"the output would be empty: input {H}×{W} with kernel {kh}×{kw}, stride {stride_}, "
            f"padding {padding_}, dilation {dilation_} gives {Ho}×{Wo}")

    K = kh * kw
    offset_shape = tuple(int(v) for v in offset.shape)
    if len(offset_shape) != 4 or offset_shape[0] != B or offset_shape[2:] != (Ho, Wo) \
            or offset_shape[1] == 0 or offset_shape[1] % (2 * K) != 0:
        raise ValueError(
            f"offset must be Tensor[B, 2·G·kh·kw, Ho, Wo] = [{B}, 2·G·{K}, {Ho}, {Wo}] for some offset "
            f"group count G, got shape {tuple(offset.shape)}")
    G = offset_shape[1] // (2 * K)
    if C % G != 0:
        raise ValueError(
            f"the offset's {G} offset groups (offset.shape[1]={offset_shape[1]} = 2·G·{K}) must divide "
            f"the input's {C} channels")
    if mask is not None and tuple(int(v) for v in mask.shape) != (B, G * K, Ho, Wo):
        raise ValueError(
            f"mask must be Tensor[B, G·kh·kw, Ho, Wo] = {[B, G * K, Ho, Wo]} (G={G} from the offset), "
            f"got shape {tuple(mask.shape)}")
    if bias is not None and tuple(int(v) for v in bias.shape) != (C_out,):
        raise ValueError(f"bias must be Tensor[C_out] = [{C_out}], got shape {tuple(bias.shape)}")
    return _Geometry(B, C, H, W, C_out, kh, kw, stride_, padding_, dilation_, Ho, Wo, groups, G,
                     mask is not None)


# ----------------------------------------------------------------------------------------------
# Shared building blocks (standard ops only)
# ----------------------------------------------------------------------------------------------


def _sampling_points(offset: Tensor, mask: Tensor | None, geom: _Geometry, dtype: torch.dtype):
    """Bilinear corners and weights of every sampling point of a batch chunk, computed in ``dtype``
    promoted to at least float32 (half precision cannot hold coordinates like 55.3 exactly enough).

    Points are ordered ``(b, ho, wo, g', i, j)`` — the row order of the column matrix — where ``g'``
    runs over the ``G'`` channel sub-groups (each sub-group uses the offsets of its offset group).

    Returns ``pixel`` (``LongTensor[b, Ho, Wo, G, kh, kw]``, flat index of the top-left corner in
    the input padded by one pixel of zeros, 0 for points that read nothing), ``ly``, ``lx``
    (fractional parts), ``valid`` (the point may read the map: ``-1 <= y < H`` and ``-1 <= x < W``)
    and ``scale`` (``valid·mask``), all ``[b, Ho, Wo, G, kh, kw]``. With the padding, the corners of
    a valid point are ``pixel + (0, 1, Wp, Wp + 1)`` and never leave the padded map, so no corner
    needs a bounds test; a corner in the padding reads zero, which is torchvision's rule.
    """
    b = offset.shape[0]
    G, kh, kw, Ho, Wo = geom.offset_groups, geom.kh, geom.kw, geom.out_h, geom.out_w
    (sh, sw), (ph, pw), (dh, dw) = geom.stride, geom.padding, geom.dilation
    H, W = geom.height, geom.width
    device = offset.device
    dtype = torch.promote_types(dtype, torch.float32)
    delta = offset.to(dtype).reshape(b, G, kh, kw, 2, Ho, Wo).permute(0, 5, 6, 1, 2, 3, 4)
    # (b, Ho, Wo, G, kh, kw, 2)
    base_y = (torch.arange(Ho, device=device, dtype=dtype) * sh - ph).view(Ho, 1, 1, 1, 1) \
        + (torch.arange(kh, device=device, dtype=dtype) * dh).view(kh, 1)  # (Ho, 1, 1, kh, 1)
    base_x = (torch.arange(Wo, device=device, dtype=dtype) * sw - pw).view(Wo, 1, 1, 1) \
        + (torch.arange(kw, device=device, dtype=dtype) * dw)  # (Wo, 1, 1, kw)
    y = delta[..., 0] + base_y  # (b, Ho, Wo, G, kh, kw)
    x = delta[..., 1] + base_x
    y0, x0 = torch.floor(y), torch.floor(x)
    ly, lx = y - y0, x - x0
    valid = (y >= -1) & (y < H) & (x >= -1) & (x < W)
    zero = torch.zeros((), dtype=dtype, device=device)
    # corner rows/cols in the padded map: y0 + 1 ∈ [0, H], x0 + 1 ∈ [0, W]
    pixel = (torch.where(valid, y0 + 1, zero) * (W + 2) + torch.where(valid, x0 + 1, zero)).long()
    scale = valid.to(dtype)
    if mask is not None:
        m = mask.to(dtype).reshape(b, G, kh, kw, Ho, Wo).permute(0, 4, 5, 1, 2, 3)
        scale = scale * m  # (b, Ho, Wo, G, kh, kw)
    return pixel, ly, lx, valid, scale


def _corner_weights(ly: Tensor, lx: Tensor, scale: Tensor) -> Tensor:
    """Bilinear weights of the corners (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1): ``[..., 4]``."""
    hy, hx = 1 - ly, 1 - lx
    return torch.stack((hy * hx, hy * lx, ly * hx, ly * lx), dim=-1) * scale.unsqueeze(-1)


def _point_rows(pixel: Tensor, geom: _Geometry) -> Tensor:
    """Row index into the padded channels-last input ``X[b·G'·Hp·Wp, C/G']`` of each point's
    top-left corner, for every sub-group: ``LongTensor[b, Ho, Wo, G', kh, kw]``."""
    b, Ho, Wo, G, kh, kw = pixel.shape
    r = geom.sub_groups // G
    P = (geom.height + 2) * (geom.width + 2)
    block = torch.arange(b * geom.sub_groups, device=pixel.device).view(b, 1, 1, G, r, 1, 1) * P
    return (pixel.reshape(b, Ho, Wo, G, 1, kh, kw) + block).reshape(b, Ho, Wo, G * r, kh, kw)


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


def _apply_weight(cols: Tensor, w: Tensor, geom: _Geometry, b: int) -> Tensor:
    """Columns ``[b·Ho·Wo, G'·kh·kw·C/G']`` × grouped weight → ``Tensor[b, C_out, Ho, Wo]``."""
    groups, L = geom.groups, geom.out_h * geom.out_w
    R = geom.taps * geom.in_channels // groups
    cols_g = cols.reshape(b * L, groups, R).transpose(0, 1)  # (groups, b·L, R)
    out = torch.bmm(w, cols_g.transpose(1, 2))  # (groups, C_out/groups, b·L)
    return out.reshape(geom.out_channels, b, geom.out_h, geom.out_w).transpose(0, 1)


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
    (gather, floor, where, matmul) exists in ONNX and in Inductor, and autograd provides the
    backward. It holds four column-sized temporaries at once, so it is the memory-hungry path.
    """
    geom = _check(input, offset, weight, bias, stride, padding, dilation, mask)
    B = input.shape[0]
    dtype = input.dtype
    pixel, ly, lx, _valid, scale = _sampling_points(offset, mask, geom, dtype)
    rows = _point_rows(pixel, geom).reshape(-1)  # (B·Ho·Wo·G'·kh·kw,)
    weights = _expand_sub_groups(_corner_weights(ly, lx, scale), geom).reshape(-1, 4).to(dtype)
    Gs, Cs, Hp, Wp = geom.sub_groups, geom.sub_channels, geom.height + 2, geom.width + 2
    X = F.pad(input, (1, 1, 1, 1)).reshape(B, Gs, Cs, Hp, Wp).permute(0, 1, 3, 4, 2).reshape(-1, Cs)
    # X: (B·G'·Hp·Wp, C/G'), zero-padded channels-last rows
    cols = X.index_select(0, rows) * weights[:, 0:1]
    for corner, shift in ((1, 1), (2, Wp), (3, Wp + 1)):
        cols = cols + X.index_select(0, rows + shift) * weights[:, corner:corner + 1]
    # cols: (B·Ho·Wo·G'·kh·kw, C/G') = (B·Ho·Wo, G'·kh·kw·C/G') row-major
    out = _apply_weight(cols, _grouped_weight(weight, geom, dtype), geom, B)  # (B, C_out, Ho, Wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out.contiguous()


# ----------------------------------------------------------------------------------------------
# The fast formulation: custom autograd Function, batch chunks, sparse sampling matrix on CPU
# ----------------------------------------------------------------------------------------------


class _Sampler:
    """Bilinear sampling of one batch chunk as products with the sampling matrix ``S``
    (``n`` points × ``b·G'·Hp·Wp`` padded pixels, four non-zeros per row: the corner weights):

    - ``sample(X, out)``: ``out = S @ X``, the columns ``[n, C/G']``;
    - ``sample_t(grad_cols, out)``: ``S^T @ grad_cols``, the input gradient as padded rows;
    - ``corner_dots(grad_cols, X)``: ``[n, 4]``, ``<grad_cols[r], X[corner_k(r)]>``, from which the
      offset and mask gradients follow.

    ``kind="sparse"`` uses ``torch.sparse`` CSR products, one fused multi-threaded pass each (CPU,
    float32/float64); ``kind="gather"`` uses ``index_select``/``index_add_`` on any device and dtype.
    """

    def __init__(self, kind: str, top_left: Tensor, weights: Tensor, num_pixels: int, row_width: int):
        self.kind = kind
        self.n = top_left.numel()
        self.num_pixels = num_pixels
        self.row_width = row_width
        self.top_left = top_left  # (n,) flat row of each point's top-left corner in X
        self.weights = weights  # (n, 4)
        shifts = torch.tensor([0, 1, row_width, row_width + 1], device=top_left.device)
        if kind == "sparse":
            index = torch.int32 if num_pixels < 2**31 - row_width - 2 and 4 * self.n < 2**31 else torch.int64
            crow = torch.arange(0, 4 * self.n + 1, 4, device=top_left.device, dtype=index)
            corners = (top_left.view(-1, 1) + shifts).to(index)  # (n, 4), sorted within each row
            self.S = _csr(crow, corners.view(-1), weights.reshape(-1), (self.n, num_pixels))
        else:
            self.corners = top_left.view(-1, 1) + shifts  # (n, 4)

    def sample(self, X: Tensor, out: Tensor) -> Tensor:
        if self.kind == "sparse":
            return torch.addmm(out, self.S, X, beta=0, out=out)
        torch.index_select(X, 0, self.corners[:, 0], out=out).mul_(self.weights[:, 0:1])
        for k in range(1, 4):
            out.addcmul_(X.index_select(0, self.corners[:, k]), self.weights[:, k:k + 1])
        return out

    def sample_t(self, grad_cols: Tensor, out: Tensor) -> Tensor:
        """``out``: a buffer of at least ``4·num_pixels`` rows; returns a view of ``num_pixels`` rows."""
        P, Wp = self.num_pixels, self.row_width
        if self.kind == "sparse":
            # S^T sorted by the top-left corner only: block k of the result holds corner k's
            # contributions at the top-left pixel, and shifting block k by its corner offset adds it.
            order = torch.sort(self.top_left, stable=True).indices
            index = self.S.crow_indices().dtype
            counts = torch.bincount(self.top_left, minlength=P)
            crow = torch.zeros(4 * P + 1, dtype=index, device=grad_cols.device)
            torch.cumsum(counts.repeat(4), 0, out=crow[1:])
            cols = order.to(index).repeat(4)
            values = self.weights.index_select(0, order).t().reshape(-1)  # (4·n,) block-major
            blocks = torch.addmm(out[:4 * P], _csr(crow, cols, values, (4 * P, self.n)), grad_cols,
                                 beta=0, out=out[:4 * P]).view(4, P, -1)
            result = blocks[0]
            result[1:] += blocks[1, :-1]
            result[Wp:] += blocks[2, :-Wp]
            result[Wp + 1:] += blocks[3, :-Wp - 1]
            return result
        result = out[:P].zero_()
        for k in range(4):
            result.index_add_(0, self.corners[:, k], grad_cols * self.weights[:, k:k + 1])
        return result

    def corner_dots(self, grad_cols: Tensor, X: Tensor) -> Tensor:
        if self.kind == "sparse":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta" (once per process)
                dots = torch.sparse.sampled_addmm(self.S, grad_cols, X.t(), beta=0.0)
            return dots.values().view(self.n, 4)
        return torch.stack([(X.index_select(0, self.corners[:, k]) * grad_cols).sum(1) for k in range(4)], 1)


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta" (once per process)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


def _chunks(geom: _Geometry, element_size: int) -> list[tuple[int, int]]:
    """Batch ranges whose column buffer fits the chunk budget (at least one image each)."""
    per_image = geom.out_h * geom.out_w * geom.taps * geom.in_channels * element_size
    step = max(1, _CHUNK_BYTES // max(per_image, 1))
    return [(s, min(s + step, geom.batch)) for s in range(0, geom.batch, step)]


def _compute_dtype(dtype: torch.dtype, kind: str) -> torch.dtype:
    # torch.sparse products exist for float32/float64 only: half precisions compute in float32
    if kind == "sparse" and dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


class _Chunk:
    """Sampling points, sampler and padded input ``X`` of one batch chunk ``[s, e)``."""

    def __init__(self, input, offset, mask, s, e, geom: _Geometry, dtype, kind, X_buffer):
        b = e - s
        mask_c = None if mask is None else mask[s:e]
        pixel, self.ly, self.lx, self.valid, self.scale = _sampling_points(offset[s:e], mask_c, geom, dtype)
        top_left = _point_rows(pixel, geom).reshape(-1)  # (b·Ho·Wo·G'·kh·kw,)
        weights = _expand_sub_groups(_corner_weights(self.ly, self.lx, self.scale), geom).reshape(-1, 4).to(dtype)
        Gs, Cs, H, W = geom.sub_groups, geom.sub_channels, geom.height, geom.width
        X = X_buffer[:b]  # zero border, interior rewritten for every chunk
        X[:, :, 1:-1, 1:-1, :] = input[s:e].reshape(b, Gs, Cs, H, W).permute(0, 1, 3, 4, 2)
        self.X = X.view(-1, Cs)  # (b·G'·Hp·Wp, C/G')
        self.sampler = _Sampler(kind, top_left, weights, self.X.shape[0], W + 2)


def _buffers(geom: _Geometry, dtype, device, chunk_images: int):
    Gs, Cs = geom.sub_groups, geom.sub_channels
    X = torch.zeros((chunk_images, Gs, geom.height + 2, geom.width + 2, Cs), dtype=dtype, device=device)
    n = chunk_images * geom.out_h * geom.out_w * Gs * geom.taps
    return X, torch.empty((n, Cs), dtype=dtype, device=device)


def _weight_product(cols: Tensor, w: Tensor, geom: _Geometry, out: Tensor) -> None:
    """``out[b, C_out, Ho, Wo] = weight ⊛ cols`` for the columns ``[b·Ho·Wo, G'·kh·kw·C/G']``."""
    b, L = out.shape[0], geom.out_h * geom.out_w
    direct = out.dtype == cols.dtype
    if geom.groups == 1:
        target = out.view(b, -1, L) if direct else None
        res = torch.bmm(w.expand(b, -1, -1), cols.view(b, L, -1).transpose(1, 2), **_out(target))
        # res: (b, C_out, Ho·Wo)
    else:
        target = out.view(geom.groups, -1, L) if direct and b == 1 else None
        colsg = cols.view(b * L, geom.groups, -1).permute(1, 2, 0)  # (groups, R, b·L)
        res = torch.bmm(w, colsg, **_out(target))  # (groups, C_out/groups, b·L)
        res = res.view(geom.out_channels, b, L).transpose(0, 1)  # (b, C_out, Ho·Wo)
    if target is None:
        out.view(b, -1, L).copy_(res)


def _out(target: Tensor | None) -> dict:
    return {} if target is None else {"out": target}


class _DeformConv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, offset, mask, weight, bias, geom: _Geometry, kind: str):
        dtype = _compute_dtype(input.dtype, kind)
        out = input.new_empty((geom.batch, geom.out_channels, geom.out_h, geom.out_w))
        chunks = _chunks(geom, torch.finfo(dtype).bits // 8)
        if chunks:
            w = _grouped_weight(weight, geom, dtype)  # (groups, C_out/groups, R)
            X_buffer, cols_buffer = _buffers(geom, dtype, input.device, chunks[0][1])
            for s, e in chunks:
                chunk = _Chunk(input, offset, mask, s, e, geom, dtype, kind, X_buffer)
                cols = chunk.sampler.sample(chunk.X, cols_buffer[:chunk.sampler.n])
                _weight_product(cols, w, geom, out[s:e])  # cols: (b·Ho·Wo·G'·kh·kw, C/G')
            if bias is not None:
                out += bias.view(1, -1, 1, 1)
        ctx.geom, ctx.kind = geom, kind
        ctx.save_for_backward(input, offset, mask, weight)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        input, offset, mask, weight = ctx.saved_tensors
        geom, kind = ctx.geom, ctx.kind
        need_input, need_offset, need_mask, need_weight, need_bias = ctx.needs_input_grad[:5]
        dtype = _compute_dtype(input.dtype, kind)
        Ho, Wo, L = geom.out_h, geom.out_w, geom.out_h * geom.out_w
        G, K, groups = geom.offset_groups, geom.taps, geom.groups
        Gs, Cs, H, W = geom.sub_groups, geom.sub_channels, geom.height, geom.width
        grad_input = torch.zeros_like(input) if need_input else None
        grad_offset = torch.zeros_like(offset) if need_offset else None
        grad_mask = torch.zeros_like(mask) if need_mask else None
        w = _grouped_weight(weight, geom, dtype)  # (groups, C_out/groups, R)
        grad_w = torch.zeros_like(w) if need_weight else None
        chunks = _chunks(geom, torch.finfo(dtype).bits // 8)
        if chunks and (need_input or need_offset or need_mask or need_weight):
            X_buffer, cols_buffer = _buffers(geom, dtype, input.device, chunks[0][1])
            grad_cols_buffer = torch.empty_like(cols_buffer)
            gX_buffer = torch.empty((4 * X_buffer[:, :, :, :, 0].numel(), Cs), dtype=dtype,
                                    device=input.device) if need_input else None
            for s, e in chunks:
                b = e - s
                chunk = _Chunk(input, offset, mask, s, e, geom, dtype, kind, X_buffer)
                n = chunk.sampler.n
                go = grad_out[s:e].to(dtype).reshape(b, groups, -1, L).permute(1, 2, 0, 3)
                go = go.reshape(groups, -1, b * L)  # (groups, C_out/groups, b·Ho·Wo)
                if need_weight:
                    cols = chunk.sampler.sample(chunk.X, cols_buffer[:n]).view(b * L, groups, -1)
                    grad_w.baddbmm_(go, cols.transpose(0, 1))  # += (groups, C_out/groups, R)
                grad_cols = grad_cols_buffer[:n]
                if groups == 1:
                    torch.mm(go[0].t(), w[0], out=grad_cols.view(b * L, -1))
                else:
                    grad_cols.view(b * L, groups, -1).copy_(torch.bmm(go.transpose(1, 2), w).transpose(0, 1))
                # grad_cols: (b·Ho·Wo·G'·kh·kw, C/G')
                if need_input:
                    gX = chunk.sampler.sample_t(grad_cols, gX_buffer).view(b, Gs, H + 2, W + 2, Cs)
                    grad_input[s:e].view(b, Gs, Cs, H, W).copy_(gX[:, :, 1:-1, 1:-1, :].permute(0, 1, 4, 2, 3))
                if need_offset or need_mask:
                    dots = chunk.sampler.corner_dots(grad_cols, chunk.X)  # (n, 4)
                    dots = dots.view(b, Ho, Wo, G, Gs // G, geom.kh, geom.kw, 4).sum(4)
                    d00, d01, d10, d11 = dots.unbind(-1)  # each (b, Ho, Wo, G, kh, kw)
                    ly, lx = chunk.ly, chunk.lx
                    if need_offset:
                        gy = ((d10 - d00) * (1 - lx) + (d11 - d01) * lx) * chunk.scale
                        gx = ((d01 - d00) * (1 - ly) + (d11 - d10) * ly) * chunk.scale
                        g = torch.stack((gy, gx), -1).permute(0, 3, 4, 5, 6, 1, 2)  # (b, G, kh, kw, 2, Ho, Wo)
                        grad_offset[s:e] = g.reshape(b, 2 * G * K, Ho, Wo)
                    if need_mask:
                        hy, hx = 1 - ly, 1 - lx
                        gm = (d00 * hy * hx + d01 * hy * lx + d10 * ly * hx + d11 * ly * lx) * chunk.valid
                        grad_mask[s:e] = gm.permute(0, 3, 4, 5, 1, 2).reshape(b, G * K, Ho, Wo)
        grad_weight = _ungroup_weight(grad_w, geom).to(weight.dtype) if need_weight else None
        grad_bias = grad_out.sum((0, 2, 3)) if need_bias else None
        return grad_input, grad_offset, grad_mask, grad_weight, grad_bias, None, None


def _default_kind(input: Tensor) -> str:
    return "sparse" if input.device.type == "cpu" else "gather"


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
    ``torch.compile``/``torch.export``/ONNX export the standard-op formulation
    :func:`deform_conv2d_gather` is used so that the graph contains only standard ops.
    """
    if torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return deform_conv2d_gather(input, offset, weight, bias, stride, padding, dilation, mask)
    geom = _check(input, offset, weight, bias, stride, padding, dilation, mask)
    return _DeformConv2dFunction.apply(input, offset, mask, weight, bias, geom, _default_kind(input))


def _deform_conv2d_with(kind: str, input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None,
                        stride: _IntPair = 1, padding: _IntPair = 0, dilation: _IntPair = 1,
                        mask: Tensor | None = None) -> Tensor:
    """The autograd Function with an explicit sampler kind (``"sparse"`` or ``"gather"``), for tests."""
    geom = _check(input, offset, weight, bias, stride, padding, dilation, mask)
    return _DeformConv2dFunction.apply(input, offset, mask, weight, bias, geom, kind)
