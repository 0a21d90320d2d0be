"""The maths as functions (shapes in the docstrings)."""

from vislab.ops.deform_conv import deform_conv2d, deform_conv2d_gather, deform_conv2d_output_size

__all__ = ["deform_conv2d", "deform_conv2d_gather", "deform_conv2d_output_size"]
