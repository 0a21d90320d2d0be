"""Imports every model family so their ``@register_model`` builders are registered."""

from vislab.models import small_cnn  # noqa: F401
from vislab.models import encoder_cnn  # noqa: F401
from vislab.models import densenet, unet  # noqa: F401
