"""nn.Modules over the ops."""

from vislab.layers.deform_conv import (
    DeformableConv2d,
    DeformConv2d,
    convert_to_deformable,
    deformable_param_groups,
)

__all__ = ["DeformConv2d", "DeformableConv2d", "convert_to_deformable", "deformable_param_groups"]
