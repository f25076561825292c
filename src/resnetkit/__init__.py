"""resnetkit: residual networks in PyTorch, and a fast, reliable pipeline to train and use them."""

from .errors import UserError
from .models import create_model, list_models

__version__ = "0.1.0"

__all__ = ["UserError", "create_model", "list_models", "__version__"]
