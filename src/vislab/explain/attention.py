"""What a Vision Transformer attends to: attention maps, attention rollout, overlays and the pointing game.

``attentions`` is what ``VisionTransformer(x, need_weights=True)`` returns beside the logits: one
``Tensor[B, heads, T, T]`` per block, ``T = N + 1`` tokens, token 0 the class token and tokens
``1..N`` the patches in row-major order of the ``gh×gw`` patch grid. Row ``i`` of a block's matrix is
the softmax distribution of query ``i`` over the keys.

* :func:`attention_maps`: the class token's attention to the patches in one block, per head and averaged.
* :func:`attention_rollout` (Abnar & Zuidema 2020, https://arxiv.org/abs/2005.00928): attention
  propagated through the layers. Per layer the heads are fused (mean, max or min), optionally the lowest
  ``discard_ratio`` of the fused weights of each image are set to zero (the class token's attention to
  itself is kept), the residual connection is modelled as ``0.5·A + 0.5·I``, every row is renormalised
  to sum to 1, and the layers are multiplied, ``R = Â_L ⋯ Â_1``. The map is the class token's row of
  ``R`` without its own column. (jacobgil/vit-explain discards only in the first image of a batch and
  divides by ``a.sum(dim=-1)`` without ``keepdim``, which scales columns instead of rows whenever the
  rows do not already sum to 1, i.e. with max/min fusion or discarding; neither is copied here.)
* :func:`gradient_attention` (Chefer, Gur & Wolf 2021, "Transformer Interpretability Beyond Attention
  Visualization", https://arxiv.org/abs/2012.09838, in the gradient-weighted form of their follow-up
  "Generic Attention-model Explainability", https://arxiv.org/abs/2103.15679, eqs. 5-6): the relevance of
  the tokens for the class token, ``R = I`` and for each block in forward order
  ``R ← R + mean_heads((∇A ⊙ A)⁺) · R`` with ``∇A`` the target score's gradient with respect to the
  block's attention; the map is the class token's row without its own column. (The CVPR paper weights LRP
  relevance instead of the raw attention; the gradient form needs no LRP rules.)
  :func:`attention_gradients` runs the model to get the attentions and their gradients.
* :class:`AttentionRollout` and :class:`GradientAttention` give both the CAM family's call shape,
  ``maps, logits = METHOD(model)(images, targets=None)``, maps at the image size in [0, 1].
* :func:`attention_overlay` and :func:`attention_pointing_game` put such a patch-grid map on the image.
* :func:`position_embedding_similarity`: cosine similarity of the learned positional embeddings
  (ViT paper, Fig. 7).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vislab.explain.gradcam import overlay

__all__ = ["AttentionMaps", "AttentionRollout", "GradientAttention", "HEAD_FUSIONS", "attention_gradients",
           "attention_maps", "gradient_attention", "relevance_matrix", "attention_overlay", "attention_pointing_game",
           "attention_rollout", "plot_position_similarity", "position_embedding_similarity", "rollout_matrix",
           "to_grid"]

HEAD_FUSIONS = ("mean", "max", "min")


class AttentionMaps(NamedTuple):
    """Class-token-to-patch attention of one block on the patch grid."""

    per_head: Tensor  # Tensor[B, heads, gh, gw]
    mean: Tensor  # Tensor[B, gh, gw]: averaged over the heads


def _check_attentions(attentions: Sequence[Tensor] | Tensor) -> list[Tensor]:
    if isinstance(attentions, Tensor):
        attentions = [attentions] if attentions.ndim == 4 else list(attentions)
    attentions = list(attentions)
    if not attentions:
        raise ValueError("attentions is empty; expected one Tensor[B, heads, T, T] per block")
    shape = tuple(attentions[0].shape)
    for i, a in enumerate(attentions):
        if a.ndim != 4 or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"attentions[{i}] must be Tensor[B, heads, T, T], got {tuple(a.shape)}")
        if a.shape[0] != shape[0] or a.shape[-1] != shape[-1]:
            raise ValueError(f"attentions[{i}] has shape {tuple(a.shape)}, attentions[0] {shape}: "
                             "batch and token counts must agree")
    if shape[-1] < 2:
        raise ValueError(f"need a class token and at least one patch token, got T = {shape[-1]}")
    return attentions


def _grid(n: int, grid_size: int | tuple[int, int] | None) -> tuple[int, int]:
    if grid_size is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} patch tokens do not form a square grid; pass grid_size=(gh, gw)")
        return side, side
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
    if gh * gw != n:
        raise ValueError(f"grid_size {gh}x{gw} does not hold the {n} patch tokens")
    return gh, gw


def to_grid(values: Tensor, grid_size: int | tuple[int, int] | None = None) -> Tensor:
    """Per-patch values ``Tensor[..., N]`` (row-major) → ``Tensor[..., gh, gw]`` (square grid by default)."""
    gh, gw = _grid(values.shape[-1], grid_size)
    return values.reshape(*values.shape[:-1], gh, gw)  # (..., gh, gw)


def attention_maps(attentions: Sequence[Tensor] | Tensor, layer: int = -1, *,
                   grid_size: int | tuple[int, int] | None = None) -> AttentionMaps:
    """The class token's attention to every patch in block ``layer``, per head and head-averaged.

    Args:
        attentions: one ``Tensor[B, heads, T, T]`` per block (``T = N + 1``, token 0 the class token).
        layer: which block (Python indexing; -1 is the last).
        grid_size: the patch grid ``(gh, gw)``; default the square ``√N × √N``.

    Returns:
        :class:`AttentionMaps` ``(per_head Tensor[B, heads, gh, gw], mean Tensor[B, gh, gw])``: the
        softmax weights of the class-token query on the patch keys (they sum to 1 minus the class
        token's attention to itself).
    """
    attentions = _check_attentions(attentions)
    if not -len(attentions) <= layer < len(attentions):
        raise ValueError(f"layer {layer} is out of range for {len(attentions)} blocks")
    a = attentions[layer]
    cls_to_patches = a[:, :, 0, 1:]  # (B, heads, N)
    per_head = to_grid(cls_to_patches, grid_size)  # (B, heads, gh, gw)
    return AttentionMaps(per_head=per_head, mean=per_head.mean(1))


def rollout_matrix(attentions: Sequence[Tensor] | Tensor, head_fusion: str = "mean",
                   discard_ratio: float = 0.0) -> Tensor:
    """The rolled-out attention ``R = Â_L ⋯ Â_1``: ``Tensor[B, T, T]``, every row summing to 1.

    ``Â_l = rownorm(0.5·D(fuse(A_l)) + 0.5·I)``, with ``fuse`` the mean, max or min over the heads and
    ``D`` the per-image discarding of the ``⌊discard_ratio·T²⌋`` lowest fused weights (never the class
    token's weight on itself).
    """
    attentions = _check_attentions(attentions)
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must lie in [0, 1), got {discard_ratio}")
    B, _, T, _ = attentions[0].shape
    eye = torch.eye(T, dtype=attentions[0].dtype, device=attentions[0].device)  # (T, T)
    result = eye.expand(B, T, T)
    k = int(T * T * discard_ratio)
    for a in attentions:
        if head_fusion == "mean":
            fused = a.mean(1)  # (B, T, T)
        elif head_fusion == "max":
            fused = a.amax(1)  # (B, T, T)
        else:
            fused = a.amin(1)  # (B, T, T)
        if k > 0:
            flat = fused.reshape(B, T * T)  # (B, T²)
            scores = flat.clone()
            scores[:, 0] = float("inf")  # the class token's attention to itself is never discarded
            lowest = scores.topk(k, dim=1, largest=False).indices  # (B, k): each image its own lowest weights
            fused = flat.scatter(1, lowest, 0.0).view(B, T, T)  # (B, T, T)
        a_hat = 0.5 * fused + 0.5 * eye  # the residual connection
        a_hat = a_hat / a_hat.sum(dim=-1, keepdim=True)  # (B, T, T): each row sums to 1
        result = a_hat @ result  # (B, T, T)
    return result


def attention_rollout(attentions: Sequence[Tensor] | Tensor, head_fusion: str = "mean",
                      discard_ratio: float = 0.0) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020) of the class token: ``Tensor[B, N]``.

    Args:
        attentions: one ``Tensor[B, heads, T, T]`` per block, in forward order (``T = N + 1``).
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over the heads of each block.
        discard_ratio: fraction in ``[0, 1)`` of each image's lowest fused weights per block set to
            zero before the identity is added (the class token's weight on itself is kept).

    Returns:
        The class token's row of :func:`rollout_matrix` without its own column: how much each patch
        contributes to the class token at the output (unnormalised; ``to_grid`` puts it on the grid).
    """
    return rollout_matrix(attentions, head_fusion, discard_ratio)[:, 0, 1:]  # (B, N)


def relevance_matrix(attentions: Sequence[Tensor] | Tensor, gradients: Sequence[Tensor] | Tensor) -> Tensor:
    """Gradient-weighted relevance ``R``: ``Tensor[B, T, T]`` (Chefer et al. 2021).

    ``R = I``; for each block ``l`` in forward order, ``Ā_l = mean_heads(max(∇A_l ⊙ A_l, 0))`` and
    ``R ← R + Ā_l · R``. ``attentions`` and ``gradients`` are one ``Tensor[B, heads, T, T]`` per block each.
    """
    attentions = _check_attentions(attentions)
    gradients = _check_attentions(gradients)
    if len(gradients) != len(attentions):
        raise ValueError(f"need one gradient per attention: {len(attentions)} attentions, {len(gradients)} gradients")
    for i, (a, g) in enumerate(zip(attentions, gradients)):
        if a.shape != g.shape:
            raise ValueError(f"gradients[{i}] has shape {tuple(g.shape)}, attentions[{i}] {tuple(a.shape)}")
    B, _, T, _ = attentions[0].shape
    r = torch.eye(T, dtype=attentions[0].dtype, device=attentions[0].device).expand(B, T, T)
    for a, g in zip(attentions, gradients):
        cam = (g * a).clamp(min=0).mean(1)  # (B, T, T): positive gradient-weighted attention, heads averaged
        r = r + cam @ r  # (B, T, T)
    return r


def gradient_attention(attentions: Sequence[Tensor] | Tensor, gradients: Sequence[Tensor] | Tensor) -> Tensor:
    """The class token's gradient-weighted relevance to each patch: ``Tensor[B, N]`` (row 0 of
    :func:`relevance_matrix` without its own column; ``to_grid`` puts it on the patch grid)."""
    return relevance_matrix(attentions, gradients)[:, 0, 1:]  # (B, N)


def attention_gradients(model: torch.nn.Module, images: Tensor, targets: Tensor | Sequence[int] | None = None
                        ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """``(logits, attentions, gradients)`` of a ViT that returns its attentions with ``need_weights=True``
    (vislab's ``VisionTransformer``, or a wrapper passing ``need_weights`` through).

    ``gradients[l] = d(sum_b logits[b, targets[b]]) / d attentions[l]`` (each image's own target, default its
    prediction), ``Tensor[B, heads, T, T]`` per block, as the attentions. The model runs in eval mode.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = model(images.detach(), need_weights=True)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ValueError(f"{type(model).__name__}(x, need_weights=True) must return (logits, attentions)")
            logits, attentions = out
            attentions = _check_attentions(attentions)
            if logits.ndim != 2:
                raise ValueError(f"model must return logits Tensor[B, classes], got {tuple(logits.shape)}")
            if targets is None:
                t = logits.argmax(1)
            else:
                t = torch.as_tensor(targets, device=logits.device).long().view(-1)
                if t.numel() != logits.shape[0] or int(t.min()) < 0 or int(t.max()) >= logits.shape[1]:
                    raise ValueError(f"targets must be one class index in [0, {logits.shape[1]}) per image "
                                     f"({logits.shape[0]}), got {t.tolist()}")
            grads = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), attentions)
    finally:
        model.train(was_training)
    return logits.detach(), [a.detach() for a in attentions], [g.detach() for g in grads]


def _to_image(values: Tensor, size: tuple[int, int]) -> Tensor:
    """Per-patch values ``Tensor[B, N]`` → maps ``Tensor[B, H, W]`` in [0, 1], scaled and upsampled as the
    CAM family's (:meth:`vislab.explain._cam_base.BaseCAM.finish`)."""
    from vislab.explain._cam_base import BaseCAM

    return BaseCAM.finish(to_grid(values.float()), size)


class _AttentionMethod:
    uses_gradients = False
    name = ""

    def __init__(self, model: torch.nn.Module, layer: object = None, *, reshape_transform: object = None) -> None:
        # layer and reshape_transform are accepted for the CAM family's call shape; every block is used
        self.model = model
        self.layer_name = "all blocks' attention"

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class AttentionRollout(_AttentionMethod):
    """Attention rollout with the CAM family's call: ``maps, logits = AttentionRollout(model)(images)``.

    ``maps``: :func:`attention_rollout` on the patch grid, scaled to [0, 1] and upsampled to the image
    size as the CAMs are (``targets`` is accepted and ignored: rollout does not depend on the class).
    """

    name = "rollout"

    def __init__(self, model: torch.nn.Module, layer: object = None, *, reshape_transform: object = None,
                 head_fusion: str = "mean", discard_ratio: float = 0.0) -> None:
        super().__init__(model, layer, reshape_transform=reshape_transform)
        if head_fusion not in HEAD_FUSIONS:
            raise ValueError(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, got {head_fusion!r}")
        self.head_fusion = head_fusion
        self.discard_ratio = discard_ratio

    def __call__(self, images: Tensor, targets: Tensor | Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                logits, attentions = self.model(images, need_weights=True)
        finally:
            self.model.train(was_training)
        roll = attention_rollout(attentions, self.head_fusion, self.discard_ratio)  # (B, N)
        return _to_image(roll, tuple(images.shape[-2:])), logits


class GradientAttention(_AttentionMethod):
    """Gradient-weighted attention (Chefer et al. 2021) with the CAM family's call:
    ``maps, logits = GradientAttention(model)(images, targets=None)``, maps at the image size in [0, 1]."""

    name = "gradattention"
    uses_gradients = True

    def __call__(self, images: Tensor, targets: Tensor | Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        logits, attentions, grads = attention_gradients(self.model, images, targets)
        return _to_image(gradient_attention(attentions, grads), tuple(images.shape[-2:])), logits


def _minmax(m: Tensor) -> Tensor:
    flat = m.flatten(1)
    flat = flat - flat.min(1, keepdim=True).values
    hi = flat.max(1, keepdim=True).values
    return (flat / torch.where(hi > 0, hi, torch.ones_like(hi))).view_as(m)


def attention_overlay(image: np.ndarray | Tensor, grid_map: Tensor, *, alpha: float = 0.45, colormap: str = "jet",
                      mode: str = "bilinear") -> np.ndarray:
    """Blend a patch-grid map over an image: ``grid_map Tensor[gh, gw]`` is min-max scaled to [0, 1],
    upsampled to the image (``mode``: ``"bilinear"`` or ``"nearest"``, which shows the patches) and
    drawn with :func:`vislab.explain.gradcam.overlay`. ``image``: ``H×W×3`` floats in [0, 1] or
    ``Tensor[3, H, W]``. Returns ``H×W×3`` floats."""
    if grid_map.ndim != 2:
        raise ValueError(f"grid_map must be Tensor[gh, gw], got {tuple(grid_map.shape)}")
    if isinstance(image, Tensor):
        h, w = (image.shape[-2:] if image.ndim == 3 and image.shape[0] == 3 else image.shape[:2])
    else:
        h, w = np.asarray(image).shape[:2]
    m = _minmax(grid_map.detach().float().cpu()[None])  # (1, gh, gw)
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    up = F.interpolate(m[None], size=(int(h), int(w)), mode=mode, **kwargs)[0, 0]  # (H, W)
    return overlay(image, up.clamp(0, 1), alpha=alpha, colormap=colormap)


def attention_pointing_game(maps: Tensor, boxes: Sequence[Sequence[float]], *,
                            image_size: int | tuple[int, int] | None = None,
                            tolerance: float = 0.0) -> list[bool]:
    """For each map, whether its peak lies inside the object's box (the pointing game, Zhang et al. 2016).

    Args:
        maps: ``Tensor[B, gh, gw]`` on the patch grid (or ``Tensor[B, N]`` for a square grid).
        boxes: one ``[x0, y0, x1, y1]`` per map, in pixels of the image.
        image_size: the image's ``(width, height)`` (or one int for square images); default the map's own
            size, i.e. boxes in map cells (then this equals ``vislab.explain.gradcam.pointing_game``).
        tolerance: grow each box by this many pixels.

    The peak is the centre of the highest cell, ``((px + 0.5)·W/gw, (py + 0.5)·H/gh)`` (the first one
    in row-major order on ties), so a coarse grid is judged at its patches' centres.
    """
    if maps.ndim == 2:
        maps = to_grid(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must be Tensor[B, gh, gw] or Tensor[B, N], got {tuple(maps.shape)}")
    if len(boxes) != maps.shape[0]:
        raise ValueError(f"need one box per map: {maps.shape[0]} maps, {len(boxes)} boxes")
    gh, gw = maps.shape[-2:]
    if image_size is None:
        width, height = gw, gh
    else:
        width, height = (image_size, image_size) if isinstance(image_size, int) else image_size
    sx, sy = width / gw, height / gh
    peaks = maps.detach().flatten(1).argmax(1)  # (B,)
    hits = []
    for peak, box in zip(peaks.tolist(), boxes):
        if len(box) != 4:
            raise ValueError(f"boxes must be [x0, y0, x1, y1], got {list(box)}")
        x0, y0, x1, y1 = box
        cx, cy = (peak % gw + 0.5) * sx, (peak // gw + 0.5) * sy
        hits.append(x0 - tolerance <= cx <= x1 + tolerance and y0 - tolerance <= cy <= y1 + tolerance)
    return hits


def position_embedding_similarity(pos_embedding: Tensor, grid_size: int | tuple[int, int] | None = None, *,
                                  has_class_token: bool = True) -> Tensor:
    """Cosine similarity between the positional embeddings of all patch positions (ViT paper, Fig. 7).

    Args:
        pos_embedding: ``Tensor[1, T, D]`` or ``Tensor[T, D]`` (``encoder.pos_embedding``).
        grid_size: the patch grid; default square.
        has_class_token: drop the first (class-token) embedding.

    Returns:
        ``Tensor[gh, gw, gh, gw]``: entry ``[i, j]`` is the ``gh×gw`` map of similarities of position
        ``(i, j)`` to every position.
    """
    pe = pos_embedding.detach().float()
    if pe.ndim == 3:
        if pe.shape[0] != 1:
            raise ValueError(f"pos_embedding must be Tensor[1, T, D] or Tensor[T, D], got {tuple(pe.shape)}")
        pe = pe[0]
    if pe.ndim != 2:
        raise ValueError(f"pos_embedding must be Tensor[1, T, D] or Tensor[T, D], got {tuple(pos_embedding.shape)}")
    if has_class_token:
        pe = pe[1:]  # (N, D)
    gh, gw = _grid(pe.shape[0], grid_size)
    unit = F.normalize(pe, dim=-1)  # (N, D)
    sim = unit @ unit.T  # (N, N)
    return sim.view(gh, gw, gh, gw)


def plot_position_similarity(sim: Tensor, path: str | Path, *, title: str | None = None) -> Path:
    """Draw :func:`position_embedding_similarity` as a ``gh×gw`` grid of ``gh×gw`` maps (ViT Fig. 7)."""
    from vislab.report.figures import plt

    if sim.ndim != 4 or sim.shape[:2] != sim.shape[2:]:
        raise ValueError(f"sim must be Tensor[gh, gw, gh, gw], got {tuple(sim.shape)}")
    gh, gw = sim.shape[:2]
    size = min(0.55 * max(gh, gw), 9.0)
    fig, axes = plt.subplots(gh, gw, figsize=(size * gw / max(gh, gw) + 0.8, size * gh / max(gh, gw)),
                             squeeze=False)
    im = None
    for i in range(gh):
        for j in range(gw):
            ax = axes[i][j]
            im = ax.imshow(sim[i, j].cpu().numpy(), vmin=-1, vmax=1, cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(str(i + 1), fontsize=7)
            if i == gh - 1:
                ax.set_xlabel(str(j + 1), fontsize=7)
    fig.supylabel("input patch row", fontsize=9)
    fig.supxlabel("input patch column", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.colorbar(im, ax=axes, shrink=0.6, label="cosine similarity")
    import io

    from vislab.engine.run_dir import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
