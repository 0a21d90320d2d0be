"""vislab: the classic deep-learning vision curriculum as a library plus one-command experiments."""

__version__ = "0.1.0"
