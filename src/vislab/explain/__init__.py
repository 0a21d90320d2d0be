"""Explainability: the CAM family (one call shape), ViT attention rollout and gradient-weighted attention,
faithfulness measures (deletion/insertion, ROAD, model randomisation), the pointing game, the method × measure
table, overlays, deformable sampling locations.

The names load on first use (PEP 562), so that ``vislab --help``, which imports :mod:`vislab.explain.cli` to build
its parser, does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "vislab.explain.attention": ("AttentionRollout", "GradientAttention", "attention_gradients", "attention_maps",
                                 "attention_overlay", "attention_pointing_game", "attention_rollout",
                                 "gradient_attention", "position_embedding_similarity"),
    "vislab.explain.cams": ("CAM_METHODS", "AblationCAM", "BaseCAM", "EigenCAM", "GradCAMPlusPlus", "HiResCAM",
                            "LayerCAM", "RandomCAM", "ScoreCAM", "XGradCAM", "build_cam", "default_cam_layer",
                            "get_cam_method", "get_method", "token_grid"),
    "vislab.explain.deform_sampling": ("DeformSampling", "deform_sampling_locations", "plot_deform_sampling"),
    "vislab.explain.evaluate": ("explanation_table", "methods_figure"),
    "vislab.explain.faithfulness": ("deletion_curve", "insertion_curve", "model_randomisation", "road"),
    "vislab.explain.gradcam": ("GradCAM", "last_conv_name", "overlay", "pointing_game"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'vislab.explain' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
