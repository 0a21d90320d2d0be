"""Imports every model family so their ``@register_model`` builders are registered."""

from vislab.models import densenet, encoder_cnn, small_cnn, unet  # noqa: F401
