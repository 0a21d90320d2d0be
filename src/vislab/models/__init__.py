"""Model families and one registry (``create_model``, ``list_models``)."""

from vislab.models._registry import create_model, is_vislab_model, list_models, register_model

__all__ = ["create_model", "is_vislab_model", "list_models", "register_model"]
