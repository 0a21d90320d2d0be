"""The maths as functions (shapes in the docstrings).

The names below load on first use (PEP 562): ``vislab change --method phase`` needs the registration functions
(NumPy, scikit-image) and must not pay for torch and torchvision, which the box and deformable-convolution ops
import. ``from vislab.ops import deform_conv2d`` works as before.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "box_iou": "boxes", "clip_boxes_to_image": "boxes", "decode_boxes": "boxes", "encode_boxes": "boxes",
    "remove_small_boxes": "boxes",
    "DeformConvValueError": "deform_conv", "deform_conv2d": "deform_conv", "deform_conv2d_gather": "deform_conv",
    "deform_conv2d_output_size": "deform_conv",
    "Registration": "registration", "fourier_mellin": "registration", "hybrid": "registration",
    "phase_correlation": "registration", "refine_direct": "registration", "refine_scale": "registration",
    "warp_back": "registration",
}

__all__ = ["DeformConvValueError", "Registration", "box_iou", "clip_boxes_to_image", "decode_boxes", "deform_conv2d",
           "deform_conv2d_gather", "deform_conv2d_output_size", "encode_boxes", "fourier_mellin", "hybrid",
           "phase_correlation", "refine_direct", "refine_scale", "remove_small_boxes", "warp_back"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:  # submodules (`from vislab.ops import boxes`) are found by the import system
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
