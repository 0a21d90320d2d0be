"""The CAM family with one call shape: ``cams, logits = METHOD(model, layer)(images, targets=None)``.

Each method turns the activations ``A[B, K, h, w]`` of one layer (and, for the gradient methods, the
target score's gradient ``G = dy_c/dA``) into a map; :class:`~vislab.explain._cam_base.BaseCAM` applies
ReLU, scaling and upsampling. The formulas follow pytorch-grad-cam 1.5 (which the tests compare against,
to 1e-5) and the papers:

* Grad-CAM (Selvaraju et al. 2017): ``w_k = mean(G_k)`` (:class:`vislab.explain.gradcam.GradCAM`).
* Grad-CAM++ (Chattopadhay et al. 2018, eq. 19 with first-order gradients for the exponential's):
  ``a = G² / (2G² + sum(A_k)·G³ + 1e-6)`` where ``G ≠ 0`` else 0, ``w_k = sum(ReLU(G_k)·a_k)``.
* HiResCAM (Draelos & Carin 2020): the map is ``sum_k G_k ⊙ A_k`` (no spatial averaging).
* XGrad-CAM (Fu et al. 2020): ``w_k = sum(G_k ⊙ A_k) / (sum(A_k) + 1e-7)``.
* LayerCAM (Jiang et al. 2021): the map is ``sum_k ReLU(G_k) ⊙ A_k``.
* Eigen-CAM (Muhammad & Yeasin 2020): the projection of the spatially centred activations on their
  first principal direction (no target; SVD's sign is LAPACK's, as pytorch-grad-cam's NumPy call).
* Score-CAM (Wang et al. 2020): each channel, upsampled (``align_corners=True``) and min-max scaled,
  masks the image; ``w = softmax_k(y_c(image ⊙ mask_k))``. The ``B·K`` masked forwards run in batches.
* Ablation-CAM (Desai & Ramaswamy 2020): ``w_k = (y_c - y_c(A with channel k zeroed)) / y_c``, the
  ``B·K`` ablated forwards in batches. Zeroing is the paper's ablation; pytorch-grad-cam zeroes as well
  when the layer's minimum is 0 (any layer after a ReLU) and otherwise writes a very negative value that
  grows along its batch, which is not copied.
* Random: a random-map baseline (uniform noise on the layer's grid, seeded), which ignores the model;
  ``kind="channels"`` gives pytorch-grad-cam's ``RandomCAM`` (uniform(-1, 1) channel weights drawn with
  NumPy's legacy generator).

:data:`CAM_METHODS` maps CLI names to the classes; :func:`get_cam_method` also accepts spellings such as
``score-cam``, ``Grad-CAM++`` or ``gradcam_pp``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vislab.explain._cam_base import BaseCAM, ReshapeTransform, resolve_layer, token_grid
from vislab.explain._names import METHOD_NAMES, SUMMARIES, canonical_method
from vislab.explain.gradcam import GradCAM

__all__ = ["CAM_METHODS", "AblationCAM", "BaseCAM", "EigenCAM", "GradCAM", "GradCAMPlusPlus", "HiResCAM",
           "LayerCAM", "RandomCAM", "ScoreCAM", "XGradCAM", "build_cam", "default_cam_layer", "get_cam_method",
           "get_method", "methods_help", "token_grid"]


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++: positive gradients weighted per pixel (``a``) and summed, one weight per channel."""

    name = "gradcam++"

    def weights(self, images: Tensor, acts: Tensor, grads: Tensor | None, targets: Tensor) -> Tensor:
        g2 = grads ** 2  # (B, K, h, w)
        g3 = g2 * grads
        sum_a = acts.sum(dim=(2, 3), keepdim=True)  # (B, K, 1, 1)
        aij = g2 / (2 * g2 + sum_a * g3 + 1e-6)
        aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
        return (F.relu(grads) * aij).sum(dim=(2, 3))  # (B, K)


class HiResCAM(BaseCAM):
    """HiResCAM: the element-wise product of gradient and activation, summed over the channels."""

    name = "hirescam"

    def raw_cam(self, images: Tensor, acts: Tensor, grads: Tensor | None, targets: Tensor) -> Tensor:
        return (grads * acts).sum(1)  # (B, h, w)


class XGradCAM(BaseCAM):
    """XGrad-CAM: gradients weighted by the normalised activations, one weight per channel."""

    name = "xgradcam"

    def weights(self, images: Tensor, acts: Tensor, grads: Tensor | None, targets: Tensor) -> Tensor:
        sum_a = acts.sum(dim=(2, 3), keepdim=True)  # (B, K, 1, 1)
        return (grads * acts / (sum_a + 1e-7)).sum(dim=(2, 3))  # (B, K)


class LayerCAM(BaseCAM):
    """LayerCAM: positive gradients as per-pixel weights of the activations."""

    name = "layercam"

    def raw_cam(self, images: Tensor, acts: Tensor, grads: Tensor | None, targets: Tensor) -> Tensor:
        return (F.relu(grads) * acts).sum(1)  # (B, h, w)


def principal_projection(acts: Tensor) -> Tensor:
    """``Tensor[B, K, h, w]`` → ``Tensor[B, h, w]``: each image's ``h·w`` activation vectors, centred over the
    positions, projected on their first right singular vector (pytorch-grad-cam's ``get_2d_projection``;
    NaNs count as 0)."""
    B, K, h, w = acts.shape
    x = torch.nan_to_num(acts, nan=0.0).reshape(B, K, h * w).transpose(1, 2)  # (B, hw, K)
    x = x - x.mean(dim=1, keepdim=True)
    out = []
    for xi in x.cpu().numpy():  # NumPy's LAPACK call fixes the singular vectors' signs as the reference's
        _, _, vt = np.linalg.svd(xi, full_matrices=False)
        out.append(xi @ vt[0])  # (hw,)
    return torch.from_numpy(np.stack(out)).to(acts.device).view(B, h, w)


class EigenCAM(BaseCAM):
    """Eigen-CAM: the first principal component of the activations (no gradient, no target)."""

    name = "eigencam"
    uses_gradients = False

    def raw_cam(self, images: Tensor, acts: Tensor, grads: Tensor | None, targets: Tensor) -> Tensor:
        return principal_projection(acts)


class _MaskedForwards(BaseCAM):
    """A method whose weights come from ``B·K`` extra forward passes, run ``batch_size`` at a time."""

    uses_gradients = False

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, *,
                 reshape_transform: ReshapeTransform | None = None, batch_size: int = 32) -> None:
        super().__init__(model, layer, reshape_transform=reshape_transform)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = batch_size

    def _scores(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """``y_target`` of each row of ``inputs``, ``Tensor[n]``."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                logits = self.model(inputs)  # (n, classes)
        finally:
            self.model.train(was_training)
        return logits.gather(1, targets[:, None])[:, 0].float()


class ScoreCAM(_MaskedForwards):
    """Score-CAM: each channel's upsampled, min-max-scaled activation masks the image; the target's logit
    on the masked images, softmaxed over the channels, weights the channels.

    Args:
        batch_size: masked images per forward pass (pairs of image and channel are batched together).
    """

    name = "scorecam"

    def weights(self, images: Tensor, acts: Tensor, grads: Tensor | None, targets: Tensor) -> Tensor:
        B, K, h, w = acts.shape
        H, W = images.shape[-2:]
        flat = acts.reshape(B * K, 1, h, w)  # (B·K, 1, h, w)
        scores = torch.empty(B * K, device=images.device)
        for start in range(0, B * K, self.batch_size):
            idx = torch.arange(start, min(start + self.batch_size, B * K), device=images.device)
            up = F.interpolate(flat[idx], size=(H, W), mode="bilinear", align_corners=True)  # (n, 1, H, W)
            lo = up.amin(dim=(2, 3), keepdim=True)
            hi = up.amax(dim=(2, 3), keepdim=True)
            masks = (up - lo) / (hi - lo + 1e-8)  # (n, 1, H, W) in [0, 1]
            b = idx // K
            scores[idx] = self._scores(images[b] * masks.to(images.dtype), targets[b])
        return scores.view(B, K).softmax(dim=1)  # (B, K)


class AblationCAM(_MaskedForwards):
    """Ablation-CAM: the relative drop of the target's logit when one channel of the layer is zeroed.

    Args:
        batch_size: ablated forward passes per batch (pairs of image and channel are batched together).

    The layer's output of the first pass is cached and, with channel ``k`` zeroed, replaces the layer in the
    ablated passes (the layer itself is not run; the layers before it still are, as in pytorch-grad-cam).
    Channel ``k`` is dimension 1 of a ``Tensor[B, K, h, w]`` output and the last dimension of a token output
    ``Tensor[B, T, D]`` (with ``reshape_transform``). The weights are differences of nearly equal scores,
    so they carry the float32 rounding of the scores, amplified by ``1 / (y_c - y_c^k)``.
    """

    name = "ablationcam"

    def weights(self, images: Tensor, acts: Tensor, grads: Tensor | None, targets: Tensor) -> Tensor:
        B, K = acts.shape[:2]
        raw = self._raw_output  # the layer's output in the first pass, Tensor[B, K, h, w] or Tensor[B, T, D]
        channel_dim = raw.ndim - 1 if raw.ndim == 3 else 1
        if raw.shape[channel_dim] != K:
            raise ValueError(f"layer {self.layer_name!r}: {raw.shape[channel_dim]} output channels, the reshaped "
                             f"activations have {K}; Ablation-CAM ablates the layer's own channels")
        rows: list[Tensor] = []

        def ablated_output(*_args: object, **_kwargs: object) -> Tensor:
            # the cached activation of each row's image with channel k zeroed stands in for the layer, which is
            # not run (as pytorch-grad-cam's ablation layer replaces it), so the ablated scores differ from the
            # original ones only by the ablated channel
            b, k = rows
            new = raw[b].clone()  # (n, K, h, w) or (n, T, D)
            n = torch.arange(new.shape[0], device=new.device)
            if channel_dim == 1:
                new[n, k] = 0.0
            else:
                new[n, :, k] = 0.0
            return new

        ablated = torch.empty(B * K, device=images.device)
        own = self.layer.__dict__.get("forward")
        self.layer.forward = ablated_output  # this instance only; the class's forward comes back below
        try:
            for start in range(0, B * K, self.batch_size):
                idx = torch.arange(start, min(start + self.batch_size, B * K), device=images.device)
                rows[:] = [idx // K, idx % K]
                ablated[idx] = self._scores(images[idx // K], targets[idx // K])
        finally:
            if own is None:
                del self.layer.forward
            else:
                self.layer.forward = own
        original = self._original_scores  # (B,): the target scores of the unmodified pass
        return (original[:, None] - ablated.view(B, K)) / original[:, None]  # (B, K)

    def activations(self, images: Tensor, targets: Tensor | Sequence[int] | None
                    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        raw: list[Tensor] = []
        handle = self.layer.register_forward_hook(lambda _m, _i, out: raw.append(out.detach()))
        try:
            a, g, logits, t = super().activations(images, targets)
        finally:
            handle.remove()
        self._raw_output = raw[0]
        self._original_scores = logits.gather(1, t[:, None])[:, 0].float()
        return a, g, logits, t


class RandomCAM(BaseCAM):
    """A random-map baseline.

    Args:
        seed: the generator's seed; each call starts from it, so the same images give the same maps.
        kind: ``"map"`` (default): uniform noise on the layer's ``h×w`` grid, independent of the model and
            the image (what a faithfulness or sanity measure should rank last); ``"channels"``:
            pytorch-grad-cam's ``RandomCAM``, random channel weights ``uniform(-1, 1)`` on the activations
            (drawn with ``np.random.RandomState(seed)``, the legacy generator that ``np.random.seed``
            seeds).
    """

    name = "random"
    uses_gradients = False

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, *,
                 reshape_transform: ReshapeTransform | None = None, seed: int = 0, kind: str = "map") -> None:
        super().__init__(model, layer, reshape_transform=reshape_transform)
        if kind not in ("map", "channels"):
            raise ValueError(f"kind must be 'map' or 'channels', got {kind!r}")
        self.seed = int(seed)
        self.kind = kind

    def raw_cam(self, images: Tensor, acts: Tensor, grads: Tensor | None, targets: Tensor) -> Tensor:
        B, K, h, w = acts.shape
        if self.kind == "channels":
            wts = np.random.RandomState(self.seed).uniform(-1, 1, size=(B, K))
            return (torch.from_numpy(wts).to(acts)[:, :, None, None] * acts).sum(1)  # (B, h, w)
        g = torch.Generator().manual_seed(self.seed)
        return torch.rand(B, h, w, generator=g).to(acts.device)


CAM_METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
    "random": RandomCAM,
}

def _attention_methods() -> dict[str, type]:
    from vislab.explain.attention import AttentionRollout, GradientAttention

    return {"rollout": AttentionRollout, "gradattention": GradientAttention}


def get_cam_method(name: str) -> type[BaseCAM]:
    """The CAM class registered as ``name``; case, ``-``, ``_`` and spaces are ignored (``Score-CAM``,
    ``grad_cam++``, ``gradcam_pp`` all work)."""
    try:
        key = canonical_method(name)
    except ValueError:
        key = None
    if key not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {name!r}; known: {', '.join(CAM_METHODS)}")
    return CAM_METHODS[key]


def get_method(name: str) -> type:
    """A CAM method (:data:`CAM_METHODS`) or, for ViTs that return their attentions, ``rollout`` (attention
    rollout) or ``gradattention`` (Chefer et al.'s gradient-weighted attention), all with the same call
    ``maps, logits = METHOD(model, layer)(images, targets=None)``; spellings as :func:`get_cam_method`."""
    key = canonical_method(name)
    return CAM_METHODS[key] if key in CAM_METHODS else _attention_methods()[key]


def _unwrap_vit(model: nn.Module) -> tuple[str, nn.Module | None]:
    from vislab.models.vit import VisionTransformer

    for name, m in model.named_modules():
        if isinstance(m, VisionTransformer):
            return name, m
    return "", None


def default_cam_layer(model: nn.Module) -> tuple[str, ReshapeTransform | None]:
    """The usual CAM layer of a model and its ``reshape_transform``: for a vislab ``VisionTransformer``
    (also inside a wrapper) the first LayerNorm of the last block with :func:`token_grid` on its patch
    grid (pytorch-grad-cam's ViT recipe); otherwise the last ``nn.Conv2d`` and None."""
    prefix, vit = _unwrap_vit(model)
    if vit is not None:
        last = list(vit.encoder.layers.named_children())[-1][0]
        name = f"{prefix + '.' if prefix else ''}encoder.layers.{last}.ln_1"
        return name, token_grid(vit.grid_size)
    return resolve_layer(model, None)[0], None


def build_cam(method: str | type, model: nn.Module, layer: str | nn.Module | None = None, *,
              reshape_transform: ReshapeTransform | None = None, **kwargs: object) -> BaseCAM:
    """``METHOD(model, layer)`` by name (:func:`get_method`), with :func:`default_cam_layer` when ``layer``
    is None."""
    cls = get_method(method) if isinstance(method, str) else method
    if layer is None:
        layer, default_rt = default_cam_layer(model)
        reshape_transform = reshape_transform or default_rt
    return cls(model, layer, reshape_transform=reshape_transform, **kwargs)


def methods_help() -> str:
    """One line per method (the CAM family, then the ViT attention methods): its CLI name and what it is."""
    return "\n".join(f"{name:<14}{SUMMARIES[name]}" for name in METHOD_NAMES)

