"""resnetkit: residual networks in PyTorch, and a fast, reliable pipeline to train and use them.

    import resnetkit
    result = resnetkit.train("resnet20", "synthetic", epochs=2, out="runs/demo")
    model = resnetkit.load_checkpoint("runs/demo/best.pt")
    metrics = resnetkit.evaluate("runs/demo/best.pt")
"""

__version__ = "0.1.0"

from .errors import UserError  # noqa: E402
from .models import create_model, list_models  # noqa: E402
from .api import evaluate, load_checkpoint, train  # noqa: E402  (shadows the resnetkit.train package name)

__all__ = ["UserError", "create_model", "list_models", "train", "evaluate", "load_checkpoint", "__version__"]
