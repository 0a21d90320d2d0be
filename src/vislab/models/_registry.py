"""One registry for every model vislab builds by name (timm's ``@register_model`` idea).

A builder is a function taking keyword-only arguments and returning an ``nn.Module``::

    @register_model("unet")
    def unet(*, in_channels=3, num_classes=1, widths=(64, 128, 256, 512)) -> nn.Module: ...

    model = create_model("unet", widths=(32, 64))
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``fn`` under ``name``; a duplicate name raises (torchvision ``_api.py`` behaviour)."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return deco


def _ensure_builtin() -> None:
    # Importing the family modules runs their @register_model decorators.
    from vislab.models import families  # noqa: F401


def list_models() -> list[str]:
    """Names of the vislab models (torchvision/timm names are accepted by ``create_model`` too)."""
    _ensure_builtin()
    return sorted(_MODELS)


def is_vislab_model(name: str) -> bool:
    _ensure_builtin()
    return name in _MODELS


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a vislab model by name; unknown names raise ``ValueError`` listing the known ones."""
    _ensure_builtin()
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; vislab models: {', '.join(sorted(_MODELS))}")
    return _MODELS[name](**kwargs)
