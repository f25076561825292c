"""Learning-rate schedules as a pure function of the global step (so resume is exact), or of the
share of a time budget spent (``progress``, runs with ``--time-budget``; not reproducible step for step).

- ``constant``: the tutorial's fixed learning rate.
- ``cosine``: linear warmup, then half-cosine decay to zero (Loshchilov and Hutter 2017).
- ``linear``: linear warmup, then linear decay to zero: the one-cycle shape used by the fast
  CIFAR-10 trainers (Smith 2018; Page 2018; Jordan 2024).
- ``step``: the ResNet paper's CIFAR schedule (He et al. 2015, sec. 4.2): the learning rate is
  divided by 10 at 50% and again at 75% of the run (32k and 48k of 64k iterations).
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("constant", "cosine", "linear", "step")


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, kind: str = "cosine",
              final: float = 0.0, progress: float | None = None) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total_steps``.

    With ``progress`` (the fraction of a time budget spent, 0 to 1) the decay and the step
    schedule's milestones follow it instead of the step count; the warmup still counts steps.
    Budgeted training in this shape (a schedule that reaches zero when the budget ends) is
    Li, Yumer and Ramanan 2020.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    warm = (step + 1) / warmup_steps if warmup_steps > 0 and step < warmup_steps else None
    if progress is not None:  # a warmup longer than the budget still ends at zero: the lower of the two
        decay = _decay(kind, min(1.0, max(0.0, progress)), final)
        return decay if warm is None else min(warm, decay)
    if warm is not None:
        return warm
    if kind == "step":  # the paper's milestones count the whole run, warmup included
        return _decay(kind, step / max(1, total_steps), final)
    return _decay(kind, min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)), final)


def _decay(kind: str, t: float, final: float) -> float:
    """The schedule's factor after ``t`` (0 to 1) of its decay."""
    if kind == "constant":
        return 1.0
    if kind == "step":
        return 1.0 if t < 0.5 else 0.1 if t < 0.75 else 0.01
    if kind == "cosine":
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))
    return final + (1.0 - final) * (1.0 - t)


def apply_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Set every param group's lr to ``initial_lr * factor``; returns the first group's lr."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"]
