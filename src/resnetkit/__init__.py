"""resnetkit: residual networks in PyTorch, and a fast, reliable pipeline to train and use them.

    import resnetkit
    result = resnetkit.train("resnet20", "synthetic", epochs=2, out="runs/demo")
    model = resnetkit.load_checkpoint("runs/demo/best.pt")
    metrics = resnetkit.evaluate("runs/demo/best.pt")
    maps = resnetkit.explain("runs/demo/best.pt", ["cat.jpg"], out="runs/demo/cam")
    resnetkit.report(["runs/demo"])
"""

from .api import evaluate, explain, load_checkpoint, lr_find, report, resume, train, train_on_ray
from .errors import UserError
from .models import create_model, list_models
from .version import __version__

__all__ = ["UserError", "create_model", "list_models", "train", "resume", "train_on_ray", "evaluate",
           "load_checkpoint", "explain", "report", "lr_find", "__version__"]
