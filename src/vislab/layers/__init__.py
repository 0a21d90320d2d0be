"""nn.Modules over the ops."""

from vislab.layers.deform_conv import (
    DeformableConv2d,
    DeformConv2d,
    convert_to_deformable,
    deformable_param_groups,
)
from vislab.layers.swin import SwinBlock, WindowAttention, window_partition, window_reverse

__all__ = ["convert_to_deformable", "deformable_param_groups", "DeformableConv2d", "DeformConv2d", "SwinBlock",
           "window_partition", "window_reverse", "WindowAttention"]
