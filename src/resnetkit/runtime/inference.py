"""Inference and evaluation loops: logits of a batch, and metrics over a whole loader.

Evaluation counts through :class:`resnetkit.metrics.MetricAccumulator`, the one metrics path of
the package, so a class with no images has an undefined (NaN) accuracy wherever it is reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..metrics import MetricAccumulator
from .device import autocast


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, device: torch.device, precision: str,
                   tta: bool = False) -> torch.Tensor:
    """Logits (fp32); with ``tta`` the mean of the image and its horizontal mirror."""
    with autocast(device, precision):
        logits = model(x).float()
        if tta:
            logits = 0.5 * (logits + model(torch.flip(x, dims=[3])).float())
    return logits


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    *,
    device: torch.device,
    precision: str,
    tta: bool = False,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    keep_logits: list[torch.Tensor] | None = None,
) -> dict:
    """Loss, top-1, top-5, per-class accuracy (NaN for a class with no images) and the confusion matrix.

    ``reduce`` sums a flat tensor across processes (distributed evaluation); every image is
    counted exactly once because the eval loader shards without padding. ``keep_logits``, when
    given, receives each batch's fp32 logits on the CPU, in loader order (``eval``'s worst errors).
    """
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(num_classes)
    for x, y in loader:
        logits = predict_logits(model, x, device, precision, tta)
        if keep_logits is not None:
            keep_logits.append(logits.cpu())
        acc.update(logits, y, F.cross_entropy(logits, y, reduction="sum"))
    if reduce is not None:
        acc.all_reduce(reduce, device)
    model.train(was_training)
    m = acc.compute()
    if m["count"] == 0:
        raise UserError("the evaluation set is empty")
    return {
        "loss": m["loss"] if math.isfinite(m["loss"]) else float("nan"),
        "top1": m["top1"],
        "top5": m["top5"],
        "count": m["count"],
        "per_class": m["per_class"].tolist(),
        "confusion": m["confusion"].tolist(),
    }
