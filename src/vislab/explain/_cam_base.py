"""The shared machinery of the CAM family: layer lookup, hooks, targets, ReLU, scaling and upsampling.

Every method is ``cams, logits = METHOD(model, layer)(images, targets=None)``. A subclass says how the
layer's activations ``A[B, K, h, w]`` (and, for gradient methods, ``dy_c/dA``) become one raw map
``Tensor[B, h, w]`` per image; :class:`BaseCAM` does the rest the way pytorch-grad-cam's ``BaseCAM`` does
(``compute_cam_per_layer`` + ``aggregate_multi_layers`` for one layer), so that the maps are equal:

1. ``cam = ReLU(raw)``;
2. ``cam = (cam - min) / (max + 1e-7)`` per image (``scale_cam_image``);
3. bilinear resize to the image size, half-pixel centres (``cv2.resize`` with ``INTER_LINEAR``, which is
   ``F.interpolate(mode="bilinear", align_corners=False)`` when enlarging);
4. ``ReLU`` and the same min-max scaling again.

A layer that is called more than once in one forward pass contributes its first call (activation and
gradient of the same call), as in pytorch-grad-cam. When the network modifies the layer's output in place
(torchvision's ``ReLU(inplace=True)`` after a conv), the activations are the modified values and the gradient
is the one of the layer's own output, again as pytorch-grad-cam's hooks see them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ReshapeTransform = Callable[[Tensor], Tensor]


def last_conv_name(model: nn.Module) -> str:
    """Module name of the last ``nn.Conv2d`` in registration order (the default Grad-CAM layer)."""
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            name = n
    if name is None:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer to compute Grad-CAM on")
    return name


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> tuple[str, nn.Module]:
    """``(dotted name, module)`` of ``layer`` given as a name, the module itself or None (the last conv)."""
    if layer is None:
        layer = last_conv_name(model)
    if isinstance(layer, nn.Module):
        for n, m in model.named_modules():
            if m is layer:
                return n, m
        raise ValueError("the given layer module is not part of the model")
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a module name, an nn.Module or None, got {type(layer).__name__}")
    modules = dict(model.named_modules())
    if layer not in modules:
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        raise ValueError(f"model has no layer named {layer!r}; conv layers: {', '.join(convs[-8:])}")
    return layer, modules[layer]


def token_grid(grid_size: int | tuple[int, int] | None = None, *, has_class_token: bool = True) -> ReshapeTransform:
    """A ``reshape_transform`` for a ViT token layer: ``Tensor[B, 1 + N, D]`` → ``Tensor[B, D, gh, gw]``.

    The class token (first) is dropped, the ``N`` patch tokens are laid out row-major on the ``gh×gw``
    grid (square ``√N × √N`` by default) and the ``D`` channels come first, as a CNN's (pytorch-grad-cam's
    ``vit_reshape_transform``).
    """
    def reshape(tokens: Tensor) -> Tensor:
        if tokens.ndim != 3:
            raise ValueError(f"token_grid expects tokens Tensor[B, T, D], got {tuple(tokens.shape)}")
        t = tokens[:, 1:] if has_class_token else tokens  # (B, N, D)
        B, N, D = t.shape
        if grid_size is None:
            side = round(N ** 0.5)
            if side * side != N:
                raise ValueError(f"{N} patch tokens do not form a square grid; pass grid_size=(gh, gw)")
            gh = gw = side
        else:
            gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
            if gh * gw != N:
                raise ValueError(f"grid_size {gh}x{gw} does not hold the {N} patch tokens")
        return t.reshape(B, gh, gw, D).permute(0, 3, 1, 2)  # (B, D, gh, gw)

    return reshape


def scale_maps(cam: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-image ``(m - min) / (max + eps)`` of ``Tensor[B, ...]`` (pytorch-grad-cam's ``scale_cam_image``).

    An all-zero map stays zero. The ``eps`` is negligible once a map's maximum is far above it; the first
    scaling in :meth:`BaseCAM.finish` brings every map to a maximum near 1 before the second one.
    """
    flat = cam.flatten(1)
    flat = flat - flat.min(1, keepdim=True).values
    return (flat / (flat.max(1, keepdim=True).values + eps)).view_as(cam)


def _targets(logits: Tensor, targets: Tensor | Sequence[int] | None) -> Tensor:
    if logits.ndim != 2:
        raise ValueError(f"model must return logits Tensor[B, classes], got {tuple(logits.shape)}")
    if targets is None:
        return logits.argmax(1)
    t = torch.as_tensor(targets, device=logits.device).long().view(-1)
    if t.numel() != logits.shape[0]:
        raise ValueError(f"targets must have one class per image ({logits.shape[0]}), got {t.numel()}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= logits.shape[1]):
        raise ValueError(f"targets must be class indices in [0, {logits.shape[1]}), got {t.tolist()}")
    return t


class BaseCAM:
    """Base of the CAM family: ``cams, logits = METHOD(model, layer)(images, targets=None)``.

    Args:
        model: a classifier ``Tensor[B, C, H, W] → Tensor[B, num_classes]``; it is put in eval mode for
            the call and given back in its mode.
        layer: module name (``"layer4"``, ``"encoder.layers.encoder_layer_5.ln_1"``), the module itself,
            or None for the last ``nn.Conv2d``.
        reshape_transform: maps the layer's output (and its gradient) to ``Tensor[B, K, h, w]``; needed
            for token layers (:func:`token_grid` for a ViT).

    Call with ``images: Tensor[B, C, H, W]`` and optional ``targets`` (one class per image; default the
    predicted class). Returns ``cams: Tensor[B, H, W]`` in [0, 1] at the image size (``upsample=False``:
    at the layer's ``h×w``) and the logits ``Tensor[B, num_classes]`` of the unmodified forward pass.

    Subclasses set ``uses_gradients`` and implement :meth:`raw_cam` (or :meth:`weights`, for the methods
    whose map is a weighted sum of the activation channels).
    """

    name = "base"
    uses_gradients = True

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, *,
                 reshape_transform: ReshapeTransform | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.layer_name, self.layer = resolve_layer(model, layer)
        self.reshape_transform = reshape_transform

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.layer_name!r})"

    # --- what a method defines ---------------------------------------------------------------------
    def weights(self, images: Tensor, acts: Tensor, grads: Tensor | None, targets: Tensor) -> Tensor:
        """Channel weights ``Tensor[B, K]``; the map is ``sum_k w_k A_k``."""
        raise NotImplementedError(f"{type(self).__name__} defines neither weights nor raw_cam")

    def raw_cam(self, images: Tensor, acts: Tensor, grads: Tensor | None, targets: Tensor) -> Tensor:
        """The map before ReLU and scaling, ``Tensor[B, h, w]``, from ``acts``/``grads`` ``Tensor[B, K, h, w]``."""
        w = self.weights(images, acts, grads, targets)  # (B, K)
        return (w[:, :, None, None] * acts).sum(1)  # (B, h, w)

    # --- the shared steps --------------------------------------------------------------------------
    def _reshape(self, t: Tensor) -> Tensor:
        if self.reshape_transform is not None:
            t = self.reshape_transform(t)
        if t.ndim != 4:
            hint = "" if self.reshape_transform is not None else " (pass reshape_transform, e.g. token_grid())"
            raise ValueError(f"layer {self.layer_name!r} gives Tensor{list(t.shape)}; CAM methods need "
                             f"Tensor[B, K, h, w]{hint}")
        return t

    def activations(self, images: Tensor, targets: Tensor | Sequence[int] | None
                    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """One forward (and, for gradient methods, backward) pass: ``(acts, grads, logits, targets)``,
        ``acts``/``grads`` ``Tensor[B, K, h, w]`` after ``reshape_transform``."""
        outs: list[Tensor] = []  # the layer's output (first call): what the gradient is taken with respect to
        acts: list[Tensor] = []  # what the rest of the network got from it, read after the forward pass

        def hook(_m: nn.Module, _inp: object, out: Tensor) -> Tensor | None:
            if not isinstance(out, Tensor):
                raise ValueError(f"layer {self.layer_name!r} returns {type(out).__name__}, not a Tensor")
            if outs:
                return None
            outs.append(out)
            if not self.uses_gradients:
                acts.append(out)
                return None
            # the network continues on a copy: an in-place op after the layer (torchvision's ReLU(inplace=True))
            # then changes the copy, so the gradient is the one of the layer's own output and the activations
            # are what the network used, as pytorch-grad-cam's hooks read them
            copy = out.clone()
            acts.append(copy)
            return copy

        handle = self.layer.register_forward_hook(hook)
        was_training = self.model.training
        self.model.eval()
        try:
            logits, t, grad = self._forward(images, targets, outs, input_grad=False)
            if self.uses_gradients and grad is None and outs:
                # the layer's output needs no gradient when every parameter before it is frozen: track the input
                outs.clear()
                acts.clear()
                logits, t, grad = self._forward(images, targets, outs, input_grad=True)
        finally:
            handle.remove()
            self.model.train(was_training)
        if not outs or (self.uses_gradients and grad is None):
            raise ValueError(f"layer {self.layer_name!r} was not used in the forward pass")
        a = self._reshape(acts[0].detach()).float()  # (B, K, h, w): the first call's output
        g = self._reshape(grad).float() if self.uses_gradients else None  # (B, K, h, w)
        return a, g, logits.detach(), t

    def _forward(self, images: Tensor, targets: Tensor | Sequence[int] | None, outs: list[Tensor], *,
                 input_grad: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """Logits, targets and ``d(sum_b y_b,t_b) / d(layer output)`` (only the part of the graph above the layer
        is differentiated, and no parameter's ``.grad`` is touched)."""
        if not self.uses_gradients:
            with torch.no_grad():
                logits = self.model(images.detach())
            return logits, _targets(logits, targets), None
        with torch.enable_grad():
            x = images.detach().requires_grad_(input_grad)
            logits = self.model(x)
            t = _targets(logits, targets)
            if not outs or not outs[0].requires_grad:
                return logits, t, None
            (grad,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), outs[0])
        return logits, t, grad.detach()

    @staticmethod
    def finish(cam: Tensor, size: tuple[int, int] | None) -> Tensor:
        """ReLU, scale, resize to ``size`` (``(H, W)``; None keeps the layer's size), ReLU, scale."""
        cam = scale_maps(F.relu(cam))  # (B, h, w)
        if size is not None and tuple(cam.shape[-2:]) != tuple(size):
            cam = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]  # (B, H, W)
        return scale_maps(F.relu(cam))

    def __call__(self, images: Tensor, targets: Tensor | Sequence[int] | None = None, *,
                 upsample: bool = True) -> tuple[Tensor, Tensor]:
        if not isinstance(images, Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"expected images Tensor[B, C, H, W], got shape {shape}")
        a, g, logits, t = self.activations(images, targets)
        with torch.no_grad():
            raw = self.raw_cam(images.detach(), a, g, t)  # (B, h, w)
            cams = self.finish(raw, tuple(images.shape[-2:]) if upsample else None)
        return cams, logits
