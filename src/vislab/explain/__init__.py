"""Explainability: Grad-CAM (and the pointing game), overlays, deformable sampling locations."""

from vislab.explain.attention import (
    attention_maps,
    attention_overlay,
    attention_pointing_game,
    attention_rollout,
    position_embedding_similarity,
)
from vislab.explain.deform_sampling import DeformSampling, deform_sampling_locations, plot_deform_sampling
from vislab.explain.gradcam import GradCAM, last_conv_name, overlay, pointing_game

__all__ = ["attention_maps", "attention_overlay", "attention_pointing_game", "attention_rollout",
           "deform_sampling_locations", "DeformSampling", "GradCAM", "last_conv_name", "overlay",
           "plot_deform_sampling", "pointing_game", "position_embedding_similarity"]
