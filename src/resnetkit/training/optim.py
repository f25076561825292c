"""Optimizer construction: SGD with parameter groups.

Weight decay is not applied to parameters with fewer than 2 dimensions (BatchNorm scales and
shifts, biases): decaying them only shrinks BN's scale and hurts (Goyal et al. 2017; the nanoGPT
and timm convention). The backbone may get a smaller learning rate than the head (fine-tuning).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, no_decay_1d: bool = True,
                 head_names: Iterable[str] = ("fc.",), backbone_lr_mult: float = 1.0) -> list[dict]:
    """Split trainable parameters into (backbone|head) x (decay|no-decay) groups."""
    heads = tuple(head_names)
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (no_decay_1d and p.ndim < 2)
        is_head = name.startswith(heads)
        groups.setdefault((is_head, decay), []).append(p)
    out = []
    for (is_head, decay), params in sorted(groups.items()):
        out.append({
            "params": params,
            "weight_decay": weight_decay if decay else 0.0,
            "lr_mult": 1.0 if is_head else backbone_lr_mult,
        })
    return out


def build_sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float, nesterov: bool,
              no_decay_1d: bool = True, backbone_lr_mult: float = 1.0) -> torch.optim.SGD:
    """SGD over :func:`param_groups`; each group's ``initial_lr`` is ``lr * lr_mult``."""
    groups = param_groups(model, weight_decay, no_decay_1d, backbone_lr_mult=backbone_lr_mult)
    for g in groups:
        g["lr"] = g["initial_lr"] = lr * g.pop("lr_mult")
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
