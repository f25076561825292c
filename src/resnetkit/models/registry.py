"""Model registry: every named variant is a few lines over the one ``ResNet`` builder.

``create_model(name, num_classes=10, **overrides)`` drops ``None`` overrides, so command-line
defaults never override a model's own defaults (the timm convention). The model remembers how it
was made (``model.spec``), which is what checkpoints store to rebuild it.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import UserError
from .resnet import ResNet
from .resnet9 import ResNet9
from .resnet_cpu import ResNetCPU


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a named model."""

    name: str
    family: str
    input_size: tuple[int, int, int]
    defaults: dict[str, Any] = field(default_factory=dict)
    doc: str = ""
    builder: Callable[..., nn.Module] = ResNet


_REGISTRY: dict[str, ModelInfo] = {}


class UnknownModelError(UserError, KeyError):
    """A model name that is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def register(name: str, family: str, input_size: tuple[int, int, int], doc: str = "",
             builder: Callable[..., nn.Module] = ResNet, **defaults: Any) -> None:
    """Register ``name`` as ``builder(**defaults)`` (the ResNet builder unless another is given)."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = ModelInfo(name, family, input_size, defaults, doc, builder)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names, sorted, optionally filtered by a shell-style pattern (``"resnet*"``)."""
    names = sorted(_REGISTRY)
    if pattern:
        pat = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
        names = [n for n in names if fnmatch.fnmatch(n, pat)]
    return names


def model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; an unknown name suggests the closest registered ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; run 'resnetkit models' to list them"
        raise UnknownModelError(f"unknown model {name!r}{hint}") from None


def check_model_options(name: str, options: dict[str, Any]) -> None:
    """Refuse a model option that ``name`` does not take, naming the ones it does (before any data is read).

    An unknown model name passes: it is reported where the model is built.
    """
    try:
        info = model_info(name)
    except UnknownModelError:
        return
    params = inspect.signature(info.builder).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in options if k not in params]
    if unknown:
        takes = [k for k in params if k not in ("num_classes", "block", "layers")]
        raise UserError(f"model {name!r} does not take {', '.join(f'<<{k}>>' for k in unknown)}; its model options "
                        f"are {', '.join(takes)}")


def create_model(name: str, num_classes: int | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model. ``None``-valued overrides are ignored.

    Example: ``create_model("resnet20", num_classes=100, shortcut="B")``.
    """
    info = model_info(name)
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    args = {**info.defaults, **kwargs}
    try:
        model = info.builder(**args)
    except (TypeError, ValueError) as e:
        raise UserError(f"bad option for model {name!r}: {e}") from None
    model.spec = {"name": name, "kwargs": kwargs}
    model.default_input_size = info.input_size
    return model


# ---------------------------------------------------------------------------------------------
# The family. Parameter counts are asserted in tests/models/test_param_counts.py.
_IMAGENET = (3, 224, 224)
_CIFAR = (3, 32, 32)
_STAGES = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
           101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}

# He et al. 2015, Table 1 (torchvision-compatible: stride on the bottleneck's 3x3 conv).
for _d, (_b, _l) in _STAGES.items():
    register(f"resnet{_d}", "resnet", _IMAGENET, block=_b, layers=_l, num_classes=1000)
    register(f"resnet{_d}_cifar", "resnet-cifar", _CIFAR, block=_b, layers=_l, num_classes=10, stem="cifar")
    if _d <= 34:  # the paper's plain-18/34 (Figure 4), and their CIFAR-stem twins
        register(f"plain{_d}", "plain", _IMAGENET, block=_b, layers=_l, num_classes=1000, plain=True)
        register(f"plain{_d}_cifar", "plain-cifar", _CIFAR, block=_b, layers=_l, num_classes=10,
                 stem="cifar", plain=True)

# ResNeXt (Xie et al. 2017) and Wide ResNet-50/101 (Zagoruyko and Komodakis 2016), as torchvision.
register("resnext50_32x4d", "resnext", _IMAGENET, block="bottleneck", layers=(3, 4, 6, 3), groups=32, width_per_group=4)
register("resnext101_32x8d", "resnext", _IMAGENET, block="bottleneck", layers=(3, 4, 23, 3), groups=32, width_per_group=8)
register("resnext101_64x4d", "resnext", _IMAGENET, block="bottleneck", layers=(3, 4, 23, 3), groups=64, width_per_group=4)
register("wide_resnet50_2", "wide-resnet", _IMAGENET, block="bottleneck", layers=(3, 4, 6, 3), width_per_group=128)
register("wide_resnet101_2", "wide-resnet", _IMAGENET, block="bottleneck", layers=(3, 4, 23, 3), width_per_group=128)

# He et al. 2015 section 4.2: 6n+2 layers, 16/32/64 channels, option-A shortcuts.
_PAPER = dict(block="basic", stem="cifar", widths=(16, 32, 64), num_classes=10)
for _depth in (20, 32, 44, 56, 110, 1202):
    _n = (_depth - 2) // 6
    register(f"resnet{_depth}", "resnet-paper", _CIFAR, layers=(_n,) * 3, shortcut="A", **_PAPER)
    if _depth <= 110:
        register(f"plain{_depth}", "plain-paper", _CIFAR, layers=(_n,) * 3, plain=True, **_PAPER)

# Pre-activation ResNets (He et al. 2016): CIFAR form of ResNet-18, and the paper's 110 and 164.
register("preact_resnet18", "preact-resnet", _CIFAR, block="preact_basic", layers=(2, 2, 2, 2), stem="cifar", num_classes=10)
register("preact_resnet34", "preact-resnet", _CIFAR, block="preact_basic", layers=(3, 4, 6, 3), stem="cifar", num_classes=10)
register("preact_resnet110", "preact-resnet", _CIFAR, block="preact_basic", layers=(18, 18, 18), stem="cifar",
         widths=(16, 32, 64), num_classes=10)
register("preact_resnet164", "preact-resnet", _CIFAR, block="preact_bottleneck", layers=(18, 18, 18), stem="cifar",
         widths=(16, 32, 64), num_classes=10)

# Wide ResNets for CIFAR (Zagoruyko and Komodakis 2016): WRN-d-k, (d-4)/6 pre-activation blocks
# per stage, widths 16k/32k/64k, a 16-channel stem.
for _d, _k in ((16, 4), (16, 8), (28, 10), (40, 4)):
    register(f"wrn{_d}_{_k}", "wide-resnet-cifar", _CIFAR, block="preact_basic", layers=((_d - 4) // 6,) * 3,
             stem="cifar", widths=(16 * _k, 32 * _k, 64 * _k), stem_width=16, num_classes=10)


# ResNet-9 (Page 2018), the speed-record net, and a half-width version for CPUs.
register("resnet9", "resnet9", _CIFAR, builder=ResNet9, num_classes=10)
register("resnet9_half", "resnet9", _CIFAR, builder=ResNet9, num_classes=10, width_mult=0.5)

# A CPU-first residual net (patchify stem, ResNet-9 stages); sized by measured cost per image.
register("resnet_cpu", "resnet-cpu", _CIFAR, builder=ResNetCPU, num_classes=10)
# The same with its first stage at full resolution (stem stride 1, as airbench): ~3x the cost per image,
# more accuracy per epoch (docs/speed-cpu.md).
register("resnet_cpu_fullres", "resnet-cpu", _CIFAR, builder=ResNetCPU, num_classes=10, stem_stride=1)
# ... with a first stage half as wide (32 channels at 31x31): ~1.25x the images per second of resnet_cpu_fullres,
# which at a time budget of a few epochs is worth more than the width (docs/speed-cpu.md).
register("resnet_cpu_fullres_narrow", "resnet-cpu", _CIFAR, builder=ResNetCPU, num_classes=10, stem_stride=1,
         widths=(32, 128, 256))
# ... with a residual pair after every stage (86M multiply-adds per image against 59M, about half the images per
# second of the narrow one): the better network where a time budget buys 4.5 or more epochs of it (docs/speed-cpu.md).
register("resnet_cpu_fullres_deep", "resnet-cpu", _CIFAR, builder=ResNetCPU, num_classes=10, stem_stride=1,
         residual=(True, True, True))
