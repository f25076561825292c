"""Starting from pretrained weights: torchvision weight names (online) or local files (offline).

The classifier is replaced for the new class count; everything else must fit exactly. Models
pretrained on ImageNet are normalised with ImageNet's statistics (torchvision's transforms for
these weights), not the new data's.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from ..checkpoint import load_model_weights, load_state_dict_file
from ..data.dataset import ImageData
from ..errors import UserError

log = logging.getLogger(__name__)

# torchvision's ImageNet normalisation (the transforms bundled with its weights)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _torchvision_state(model_name: str, weights_name: str) -> dict:
    import torchvision  # deferred: importing torchvision costs seconds, and only this path needs it

    try:
        enum = torchvision.models.get_model_weights(model_name)
    except (ValueError, KeyError):
        raise UserError(f"--pretrained {weights_name!r}: torchvision has no weights for {model_name!r}; "
                        f"give a local .pth or .safetensors file instead") from None
    key = weights_name.split(".")[-1]
    if key == "DEFAULT":
        weights = enum.DEFAULT
    elif key in enum.__members__:
        weights = enum[key]
    else:
        raise UserError(f"--pretrained {weights_name!r}: unknown weights for {model_name}; "
                        f"choose one of {', '.join(enum.__members__)} or a local file")
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except OSError as e:  # URLError is an OSError
        raise UserError(f"could not download {weights.url} ({e}); download it elsewhere and pass the "
                        f"file with --pretrained PATH") from None


def freeze_backbone(model: nn.Module) -> None:
    """Train only the classifier ``fc``: every other parameter stops taking gradients.

    Called on a fresh run and on every resume, so the optimizer is built over the same parameters.
    """
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("fc.")


def apply_pretrained(model: nn.Module, source: str, model_name: str, data: ImageData,
                     freeze: bool = False) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Load ``source`` into ``model`` (new head), optionally freeze the rest; returns mean/std."""
    path = Path(source)
    if path.exists():
        state = load_state_dict_file(path)
        origin = str(path)
    elif any(source.endswith(s) for s in (".pt", ".pth", ".safetensors", ".bin")):
        raise UserError(f"--pretrained file {source} does not exist")
    else:
        state = _torchvision_state(model_name, source)
        origin = f"torchvision {model_name} {source}"
    fresh = load_model_weights(model, state, origin, allow_head_mismatch=True)
    if fresh:
        log.info("loaded %s; new classifier for %d classes (%s)", origin, data.num_classes, ", ".join(fresh))
    else:
        log.info("loaded %s", origin)
    if freeze:
        freeze_backbone(model)
    stem_is_imagenet = getattr(model, "maxpool", None) is not None and isinstance(model.maxpool, nn.MaxPool2d)
    if stem_is_imagenet and ("fc.weight" in state and state["fc.weight"].shape[0] == 1000):
        return IMAGENET_MEAN, IMAGENET_STD
    return data.mean, data.std
