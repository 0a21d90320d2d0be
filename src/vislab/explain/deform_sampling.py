"""Where do deformable convolutions look? Sampling locations of chosen output pixels.

Figure 1 of Dai et al. (2017), "Deformable Convolutional Networks", shows for one activation of a
stack of deformable layers the points it reads from the image: the top layer's 3×3 taps moved by
its offsets, then for each of those the 3×3 taps of the layer below at that position, and so on
(9, 81, 729 points for 1, 2, 3 layers). This module computes those points for
:class:`vislab.layers.DeformableConv2d` layers of any model and draws them.

Coordinates: image pixels as ``(x, y)`` = (column, row), ``x`` to the right and ``y`` down, pixel
centres at integers. Between feature maps of different resolution a point is carried over by the
pixel-centre rule ``u' = (u + 0.5) · size' / size − 0.5`` (exact for the stride-1 "same" layers
of most small nets, the usual approximation across strides and pooling).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vislab.layers.deform_conv import DeformableConv2d

__all__ = ["DeformSampling", "deform_sampling_locations", "plot_deform_sampling"]

# Points followed grow as K^L (9, 81, 729, 6561, ... for 3×3 kernels): refuse chains beyond this many
# points in all (6561 per pixel for 4 layers of 3×3 is still fine for a few pixels; 11 layers would be 3·10^10).
MAX_POINTS = 200_000


@dataclass
class DeformSampling:
    """Sampling locations for ``P`` chosen output pixels through ``L`` deformable layers."""

    points: Tensor  # [P, 2] the chosen activations, (x, y) in image pixels (centre of the output pixel)
    levels: list[Tensor]  # levels[l]: [P, K^(l+1), 2] (x, y) in image pixels; level 0 = top layer's taps
    weights: list[Tensor]  # weights[l]: [P, K^(l+1)] product of the modulation masks along the chain (1 for v1)
    layers: list[str]  # the layers, top first


def _bilinear(field: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """Values of ``field[C, H, W]`` at fractional ``(y, x)`` (any shape ``S``), borders clamped: ``[S..., C]``."""
    C, H, W = field.shape
    y = y.clamp(0, H - 1)
    x = x.clamp(0, W - 1)
    y0 = y.floor().clamp(max=H - 2) if H > 1 else torch.zeros_like(y)
    x0 = x.floor().clamp(max=W - 2) if W > 1 else torch.zeros_like(x)
    ly, lx = (y - y0).unsqueeze(-1), (x - x0).unsqueeze(-1)
    y0, x0 = y0.long(), x0.long()
    y1, x1 = (y0 + 1).clamp(max=H - 1), (x0 + 1).clamp(max=W - 1)
    f = field.permute(1, 2, 0)  # (H, W, C)
    return (f[y0, x0] * (1 - ly) * (1 - lx) + f[y0, x1] * (1 - ly) * lx
            + f[y1, x0] * ly * (1 - lx) + f[y1, x1] * ly * lx)


def _rescale(u: Tensor, size_from: int, size_to: int) -> Tensor:
    return (u + 0.5) * (size_to / size_from) - 0.5


def _choose_layers(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    deformable = [name for name, m in model.named_modules() if isinstance(m, DeformableConv2d)]
    if not deformable:
        raise ValueError(f"the model has no DeformableConv2d layer (got a {type(model).__name__})")
    if layers is None:
        return deformable[-3:]
    modules = dict(model.named_modules())
    chosen = list(layers)
    if not chosen:
        raise ValueError(f"layers is empty; the model's deformable layers are {deformable}")
    for name in chosen:
        if not isinstance(modules.get(name), DeformableConv2d):
            raise ValueError(f"layer {name!r} is not a DeformableConv2d of the model; its deformable "
                             f"layers are {deformable}")
    return chosen


@torch.no_grad()
def deform_sampling_locations(model: nn.Module, image: Tensor, points: Sequence[tuple[float, float]] | Tensor,
                              *, layers: Sequence[str] | None = None, offset_group: int = 0,
                              regular: bool = False) -> DeformSampling:
    """Sampling locations, in image pixels, of the output pixels nearest to ``points``.

    Args:
        model: a :class:`~vislab.layers.DeformableConv2d` or a model containing some.
        image: ``Tensor[C, H, W]`` or ``Tensor[1, C, H, W]``, as the model takes it.
        points: ``(x, y)`` image positions; each selects the nearest output pixel of the top layer.
        layers: names (as in ``named_modules()``) of the deformable layers to follow, in forward
            order (bottom first); default: the last three deformable layers.
        offset_group: which offset group's offsets to follow when a layer has several.
        regular: ignore the learned offsets and masks (what a regular convolution would read).

    Returns:
        :class:`DeformSampling`; ``levels[l]`` has ``K^(l+1)`` points per chosen pixel.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(image, Tensor) or image.dim() not in (3, 4) or (image.dim() == 4 and image.shape[0] != 1):
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be Tensor[C, H, W] or Tensor[1, C, H, W], got {shape}")
    batch = image.unsqueeze(0) if image.dim() == 3 else image
    H_img, W_img = batch.shape[-2:]
    pts = torch.as_tensor(points, dtype=torch.float64).reshape(-1, 2)
    if pts.numel() == 0 or ((pts[:, 0] < -0.5) | (pts[:, 0] > W_img - 0.5) | (pts[:, 1] < -0.5)
                            | (pts[:, 1] > H_img - 0.5)).any():
        raise ValueError(f"points must be (x, y) positions inside the {W_img}×{H_img} image, got {pts.tolist()}")
    names = [""] if isinstance(model, DeformableConv2d) else _choose_layers(model, layers)  # bottom first
    modules = dict(model.named_modules())
    per_pixel = 1
    for n in names:
        kh, kw = modules[n].kernel_size
        per_pixel *= kh * kw
    if per_pixel * len(pts) > MAX_POINTS:
        raise ValueError(f"following {len(names)} deformable layers gives {per_pixel:,} sampling points per chosen "
                         f"pixel ({per_pixel * len(pts):,} for {len(pts)} pixels), more than {MAX_POINTS:,}; pass "
                         f"fewer layers (layers=[...], e.g. the first two or three) or fewer points")

    captured: dict[str, tuple[Tensor, Tensor | None, tuple[int, int]]] = {}

    def hook(name):
        def fn(module: DeformableConv2d, args):
            offset, mask = module.offset_and_mask(args[0])
            captured[name] = (offset[0].double(), None if mask is None else mask[0].double(),
                              tuple(args[0].shape[-2:]))
        return fn

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    was_training = model.training
    try:
        model.eval()
        model(batch)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in captured]
    if missing:
        raise ValueError(f"layers {missing} were not called in the model's forward pass")

    offset, _, _ = captured[names[-1]]
    Ho, Wo = offset.shape[-2:]
    # the chosen activations: nearest output pixel of the top layer
    wo = _rescale(pts[:, 0], W_img, Wo).round().clamp(0, Wo - 1)
    ho = _rescale(pts[:, 1], H_img, Ho).round().clamp(0, Ho - 1)
    chosen = torch.stack((_rescale(wo, Wo, W_img), _rescale(ho, Ho, H_img)), -1)

    ys, xs = ho.view(-1, 1), wo.view(-1, 1)  # current positions, in the current layer's output grid
    weight = torch.ones_like(ys)
    levels, weights = [], []
    for level, name in enumerate(reversed(names)):
        layer: DeformableConv2d = modules[name]
        offset, mask, (Hin, Win) = captured[name]
        kh, kw = layer.kernel_size
        G, K = layer.offset_groups, kh * kw
        if not 0 <= offset_group < G:
            raise ValueError(f"offset_group must be in [0, {G}) for layer {name!r}, got {offset_group}")
        (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
        ti = torch.arange(kh, dtype=torch.float64).repeat_interleave(kw)  # tap rows, row-major
        tj = torch.arange(kw, dtype=torch.float64).repeat(kh)
        y = ys.unsqueeze(-1) * sh - ph + ti * dh  # (P, N, K)
        x = xs.unsqueeze(-1) * sw - pw + tj * dw
        w = weight.unsqueeze(-1).expand_as(y)
        if not regular:
            delta = _bilinear(offset[2 * K * offset_group: 2 * K * (offset_group + 1)], ys, xs)  # (P, N, 2K)
            y = y + delta[..., 0::2]  # (dy, dx) interleaved per tap
            x = x + delta[..., 1::2]
            if mask is not None:
                w = w * _bilinear(mask[K * offset_group: K * (offset_group + 1)], ys, xs)
        ys, xs, weight = y.flatten(1), x.flatten(1), w.flatten(1)  # (P, N·K)
        levels.append(torch.stack((_rescale(xs, Win, W_img), _rescale(ys, Hin, H_img)), -1))
        weights.append(weight.clone())
        if level + 1 < len(names):  # into the output grid of the layer below
            below, _, _ = captured[list(reversed(names))[level + 1]]
            ys, xs = _rescale(ys, Hin, below.shape[-2]), _rescale(xs, Win, below.shape[-1])
    return DeformSampling(points=chosen, levels=levels, weights=weights, layers=list(reversed(names)))


def plot_deform_sampling(model: nn.Module, image: Tensor, points: Sequence[tuple[float, float]] | Tensor, *,
                         layers: Sequence[str] | None = None, offset_group: int = 0, compare_regular: bool = True,
                         display_image: Tensor | None = None, title: str | None = None):
    """Draw where ``model``'s deformable layers sample for the output pixels at ``points``
    (the DCN paper's Figure 1): red dots are the bottom layer's sampling locations (opacity = the
    product of the modulation masks along the chain), green crosses the chosen activations.

    With ``compare_regular`` a first panel shows what a regular convolution of the same geometry
    reads. ``display_image`` (``Tensor[C, H, W]`` or ``[H, W]``; default: ``image`` min-max scaled)
    is what is drawn underneath. Returns the matplotlib Figure.
    """
    from matplotlib.figure import Figure

    learned = deform_sampling_locations(model, image, points, layers=layers, offset_group=offset_group)
    panels = [("deformable (learned offsets)", learned)]
    if compare_regular:
        panels.insert(0, ("regular convolution", deform_sampling_locations(
            model, image, points, layers=learned.layers[::-1], regular=True)))
    shown = (image[0] if image.dim() == 4 else image) if display_image is None else display_image
    shown = shown.detach().float().cpu()
    if shown.dim() == 3:
        shown = shown.permute(1, 2, 0) if shown.shape[0] in (3, 4) else shown.mean(0)
    shown = (shown - shown.min()) / (shown.max() - shown.min()).clamp_min(1e-12)
    fig = Figure(figsize=(4.2 * len(panels), 4.4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (name, s) in zip(axes[0], panels):
        ax.imshow(shown.numpy(), cmap="gray" if shown.dim() == 2 else None)
        pts, w = s.levels[-1].reshape(-1, 2), s.weights[-1].reshape(-1)
        alpha = (w / w.max().clamp_min(1e-12)).clamp(0.05, 1).numpy()
        ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=9, c="red", alpha=alpha, linewidths=0)
        ax.scatter(s.points[:, 0].numpy(), s.points[:, 1].numpy(), s=60, c="lime", marker="x", linewidths=2)
        ax.set_title(f"{name}\n{len(s.layers)} layer(s), {s.levels[-1].shape[1]} points per pixel", fontsize=9)
        ax.set_xlim(-0.5, shown.shape[1] - 0.5)
        ax.set_ylim(shown.shape[0] - 0.5, -0.5)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
