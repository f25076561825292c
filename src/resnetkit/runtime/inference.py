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

TTA_MODES = ("none", "flip", "flip-shift")


def tta_mode(tta: bool | str | None) -> str:
    """``False``/``None`` -> "none", ``True`` -> "flip"; a mode name is checked and returned."""
    if tta is None or tta is False:
        return "none"
    if tta is True:
        return "flip"
    if tta not in TTA_MODES:
        raise UserError(f"<<tta>> is one of {', '.join(TTA_MODES)}, got {tta!r}")
    return tta


def _shift(x: torch.Tensor, d: int) -> torch.Tensor:
    """``x`` moved ``d`` pixels down and right (up and left for ``d < 0``), edges reflected."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    return padded[..., 1 - d:1 - d + h, 1 - d:1 - d + w]


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, device: torch.device, precision: str,
                   tta: bool | str = False) -> torch.Tensor:
    """Logits (fp32) of a batch, with test-time augmentation ``tta`` (see :func:`tta_mode`).

    "flip" (or ``True``) averages the image and its mirror; "flip-shift" weights that pair 1/2
    and the pairs of the image moved one pixel down-right and up-left 1/4 each (six passes; the
    flip-and-translate TTA of Jordan 2024).
    """
    mode = tta_mode(tta)

    def flip_mean(z: torch.Tensor) -> torch.Tensor:
        out = model(z).float()
        return out if mode == "none" else 0.5 * (out + model(torch.flip(z, dims=[3])).float())

    with autocast(device, precision):
        logits = flip_mean(x)
        if mode == "flip-shift" and min(x.shape[-2:]) > 1:
            logits = 0.5 * logits + 0.25 * (flip_mean(_shift(x, 1)) + flip_mean(_shift(x, -1)))
    return logits


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    *,
    device: torch.device,
    precision: str,
    tta: bool | str = False,
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
