"""Explainability: Grad-CAM (and the pointing game), overlays."""

from vislab.explain.gradcam import GradCAM, last_conv_name, overlay, pointing_game

__all__ = ["GradCAM", "last_conv_name", "overlay", "pointing_game"]
