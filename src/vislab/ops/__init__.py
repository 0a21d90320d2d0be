"""The maths as functions (shapes in the docstrings)."""

from vislab.ops.boxes import box_iou, clip_boxes_to_image, decode_boxes, encode_boxes, remove_small_boxes
from vislab.ops.deform_conv import deform_conv2d, deform_conv2d_gather, deform_conv2d_output_size

__all__ = ["box_iou", "clip_boxes_to_image", "decode_boxes", "deform_conv2d", "deform_conv2d_gather",
           "deform_conv2d_output_size", "encode_boxes", "remove_small_boxes"]
