"""Reading files from the user: images (:mod:`vislab.io.images`). NumPy and Pillow only, so that the task
commands that read an image do not pay for torch."""

from vislab.io.images import ImageReadError, check_image, image_size, open_image, open_raw, read_image, to_array

__all__ = ["ImageReadError", "check_image", "image_size", "open_image", "open_raw", "read_image", "to_array"]
