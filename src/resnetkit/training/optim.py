"""Optimizer construction: SGD with parameter groups, or Muon on the filters and SGD on the rest.

Weight decay is not applied to parameters with fewer than 2 dimensions (BatchNorm scales and
shifts, biases): decaying them only shrinks BN's scale and hurts (Goyal et al. 2017; the nanoGPT
and timm convention). The backbone may get a smaller learning rate than the head (fine-tuning).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

from .muon import MuonSGD, muon_filters

if TYPE_CHECKING:
    from .config import TrainConfig


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


def build_optimizer(model: nn.Module, cfg: TrainConfig, precision: str = "fp32") -> torch.optim.Optimizer:
    """The run's optimizer: :func:`build_sgd`, or with ``cfg.optimizer == "muon"`` a :class:`MuonSGD`.

    Under Muon the filters of :func:`muon_filters` leave their groups for Muon groups (lr
    ``muon_lr * lr_mult``, momentum ``muon_momentum``, ``muon_ns_steps`` Newton-Schulz iterations, no weight decay: the filters are rescaled each
    step instead); the rest keep SGD's groups. The Newton-Schulz iteration runs in bf16 when the run
    does (``precision``), else in fp32 (bf16 matrix products are slow on CPUs without bf16 units).
    """
    if cfg.optimizer != "muon":
        return build_sgd(model, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov, cfg.no_decay_1d,
                         cfg.backbone_lr_mult)
    filters = muon_filters(model)
    groups = []
    for g in param_groups(model, cfg.weight_decay, cfg.no_decay_1d, backbone_lr_mult=cfg.backbone_lr_mult):
        mult = g.pop("lr_mult")
        rest = [p for p in g["params"] if id(p) not in filters]
        ortho = [p for p in g["params"] if id(p) in filters]
        if ortho:
            groups.append({"params": ortho, "muon": True, "lr": cfg.muon_lr * mult, "initial_lr": cfg.muon_lr * mult,
                           "momentum": cfg.muon_momentum, "weight_decay": 0.0, "ns_steps": cfg.muon_ns_steps})
        if rest:
            groups.append({**g, "params": rest, "lr": cfg.lr * mult, "initial_lr": cfg.lr * mult})
    ns_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return MuonSGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                   ns_dtype=ns_dtype)
