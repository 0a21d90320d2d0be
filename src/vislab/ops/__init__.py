"""The maths as functions (shapes in the docstrings)."""

from vislab.ops.boxes import box_iou, clip_boxes_to_image, decode_boxes, encode_boxes, remove_small_boxes
from vislab.ops.deform_conv import DeformConvValueError, deform_conv2d, deform_conv2d_gather, deform_conv2d_output_size
from vislab.ops.registration import (
    Registration,
    fourier_mellin,
    hybrid,
    phase_correlation,
    refine_direct,
    refine_scale,
    warp_back,
)

__all__ = ["DeformConvValueError", "Registration", "box_iou", "clip_boxes_to_image", "decode_boxes", "deform_conv2d",
           "deform_conv2d_gather", "deform_conv2d_output_size", "encode_boxes", "fourier_mellin", "hybrid",
           "phase_correlation", "refine_direct", "refine_scale", "remove_small_boxes", "warp_back"]
