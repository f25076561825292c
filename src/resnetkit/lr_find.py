"""Learning-rate range test: train briefly while the lr grows exponentially, watch the loss.

The test of Smith 2017 (Cyclical Learning Rates, sec. 3.3), in the form of fastai's
``lr_find``: ``steps`` SGD steps on a *copy* of the model, the lr going from ``start`` to ``end``
geometrically; the loss is smoothed with a bias-corrected exponential average (``beta = 0.98``,
as fastai), and the sweep stops early once the smoothed loss exceeds 4x its minimum (diverged).

Suggested lr: **the lr at the minimum of the smoothed loss, divided by 10** (fastai's original
``lr_min / 10`` rule): the minimum sits just before divergence, a tenth of it is still in the
fast-descent region. The steepest-descent point (most negative slope of the smoothed loss
against log lr) is reported beside it. Nothing is written except the optional plot; no run
directory is created or touched.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data.augment import AugmentConfig
from .data.loader import DeviceLoader
from .data.prepare import prepare_data
from .errors import UserError
from .models import create_model
from .runtime.device import autocast, resolve_device, resolve_precision
from .training.optim import build_sgd

SMOOTH_BETA = 0.98  # fastai's smoothing of the recorded loss
DIVERGE_FACTOR = 4.0  # stop once the smoothed loss is 4x its minimum (fastai's stop_div)


@dataclass
class LrFindResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggested_lr: float
    steepest_lr: float
    rule: str = "lr at the minimum of the smoothed loss / 10"
    plot: Path | None = None
    extra: dict = field(default_factory=dict)


def smooth(losses: list[float], beta: float = SMOOTH_BETA) -> list[float]:
    """Bias-corrected exponential moving average (Kingma & Ba 2015's correction)."""
    out, avg = [], 0.0
    for i, v in enumerate(losses):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, float]:
    """``(min/10, steepest)`` suggestions from a sweep (the first few points are skipped as noise)."""
    if len(lrs) < 5:
        raise UserError(f"the lr sweep stopped after {len(lrs)} steps, too few to suggest an lr; lower --start")
    skip = min(max(len(lrs) // 10, 1), len(lrs) - 3)
    lo = min(range(skip, len(lrs)), key=lambda i: smoothed[i])
    slopes = [(smoothed[i + 1] - smoothed[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i]))
              for i in range(skip, len(lrs) - 1)]
    steep = skip + min(range(len(slopes)), key=lambda i: slopes[i])
    return lrs[lo] / 10.0, lrs[steep]


def sweep(model: nn.Module, loader: DeviceLoader, *, start: float, end: float, steps: int,
          device: torch.device, precision: str = "fp32", momentum: float = 0.9, weight_decay: float = 5e-4,
          label_smoothing: float = 0.0) -> tuple[list[float], list[float]]:
    """The range test on ``model`` itself (callers pass a copy); returns the lrs and raw losses."""
    if not 0 < start < end:
        raise UserError(f"--start must be positive and below --end, got {start} and {end}")
    if steps < 5:
        raise UserError(f"--steps must be at least 5, got {steps}")
    opt = build_sgd(model, start, momentum, weight_decay, True)
    model.train()
    lrs: list[float] = []
    losses: list[float] = []
    best = math.inf
    epoch = 0
    while len(lrs) < steps:
        loader.set_epoch(epoch)
        for x, y in loader:
            i = len(lrs)
            lr = start * (end / start) ** (i / (steps - 1))
            for g in opt.param_groups:
                g["lr"] = lr
            with autocast(device, precision):
                loss = F.cross_entropy(model(x).float(), y, label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())
            lrs.append(lr)
            losses.append(value)
            sm = smooth(losses)[-1]
            if not math.isfinite(value) or sm > DIVERGE_FACTOR * best:
                return lrs, losses
            best = min(best, sm)
            if len(lrs) >= steps:
                break
        epoch += 1
    return lrs, losses


def plot_lr_find(result: LrFindResult, path: str | Path) -> Path:
    """Smoothed loss against lr (log axis) with the suggestion marked."""
    import matplotlib  # deferred: plotting is optional and slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.losses, alpha=0.3, label="loss")
    ax.plot(result.lrs, result.smoothed, label="smoothed loss")
    ax.axvline(result.suggested_lr, color="C3", ls="--", label=f"suggested {result.suggested_lr:.2g} (min/10)")
    ax.axvline(result.steepest_lr, color="C2", ls=":", label=f"steepest {result.steepest_lr:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    top = min(max(result.smoothed), 2 * result.smoothed[0])
    ax.set_ylim(min(result.smoothed) * 0.9, top * 1.05)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def lr_find(model: str | nn.Module = "resnet20", data: str = "synthetic", *, start: float = 1e-5,
            end: float = 10.0, steps: int = 100, batch_size: int = 128, image_size: int | None = None,
            seed: int = 0, device: str = "auto", precision: str = "auto", out: str | Path | None = None,
            model_kwargs: dict | None = None) -> LrFindResult:
    """Run the range test of ``model`` (a registry name, or a module that is copied) on ``data``.

    Example: ``resnetkit.lr_find("resnet20", "synthetic", steps=60).suggested_lr``.
    """
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    ds = prepare_data(data, image_size=image_size)
    torch.manual_seed(seed)
    if isinstance(model, nn.Module):
        net = copy.deepcopy(model)
    else:
        net = create_model(model, num_classes=ds.num_classes, in_channels=int(ds.train_images.shape[1]),
                           **(model_kwargs or {}))
    net.to(dev)
    loader = DeviceLoader(ds.train_images, ds.train_labels, batch_size=min(batch_size, len(ds.train_labels)),
                          device=dev, augment=AugmentConfig(), mean=ds.mean, std=ds.std, seed=seed,
                          dtype=torch.bfloat16 if prec == "bf16" else torch.float32)
    lrs, losses = sweep(net, loader, start=start, end=end, steps=steps, device=dev, precision=prec)
    smoothed = smooth(losses)
    suggested, steepest = suggest(lrs, smoothed)
    result = LrFindResult(lrs, losses, smoothed, suggested, steepest)
    if out is not None:
        result.plot = plot_lr_find(result, out)
    return result
