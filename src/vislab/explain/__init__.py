"""Explainability: Grad-CAM (and the pointing game), overlays, deformable sampling locations."""

from vislab.explain.deform_sampling import DeformSampling, deform_sampling_locations, plot_deform_sampling
from vislab.explain.gradcam import GradCAM, last_conv_name, overlay, pointing_game

__all__ = ["DeformSampling", "GradCAM", "deform_sampling_locations", "last_conv_name", "overlay",
           "plot_deform_sampling", "pointing_game"]
