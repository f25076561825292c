"""Batched mixup and cutmix on the device, planned for a whole epoch up front.

Each training batch is mixed with itself reversed (image ``i`` with image ``n-1-i``, timm's
"batch" mode: the batch is already a random sample, so no extra permutation is needed) with one
``lam`` per batch:

- mixup (Zhang et al. 2018): ``x = lam * x + (1 - lam) * x.flip(0)``, ``lam ~ Beta(a, a)``;
- cutmix (Yun et al. 2019): a box of area ``(1 - lam) * H * W`` (sides ``sqrt(1 - lam)`` of the
  image's, centred uniformly, clipped at the borders) is pasted from the partner; ``lam`` is
  then recomputed from the clipped box's area, as in the paper's reference code.

A batch is mixed with probability ``prob``; when both are on, cutmix is chosen with probability
``switch_prob`` (timm's ``mix_prob`` and ``switch_prob``). Every random number of epoch ``e``
(apply?, switch?, both ``lam`` draws and the box centre, for each batch) comes from a generator
seeded with a hash of ``(seed, "mix", e)`` (each ``lam`` from its own such stream) and is drawn before the epoch starts, in a fixed order
and whatever the settings, exactly as the loader draws its crops and flips: a batch's mixing
depends only on ``(seed, epoch, batch index)``, so a run resumed mid-epoch mixes the same way.
The box is stored as fractions of the image, so it fits any size under progressive resizing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from .loader import _derived_seed


@dataclass(frozen=True)
class MixConfig:
    """``mixup``/``cutmix``: Beta concentration (0 = off); ``prob``: chance a batch is mixed;
    ``switch_prob``: chance of cutmix rather than mixup when both are on."""

    mixup: float = 0.0
    cutmix: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5

    def __post_init__(self) -> None:
        if self.mixup < 0 or self.cutmix < 0:
            raise UserError(f"--mixup and --cutmix take a non-negative alpha, got {self.mixup} and {self.cutmix}.")
        if not 0.0 <= self.prob <= 1.0 or not 0.0 <= self.switch_prob <= 1.0:
            raise UserError(f"--mix-prob and --mix-switch-prob must be in [0, 1], got {self.prob} and {self.switch_prob}.")

    @property
    def enabled(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.prob > 0


@dataclass
class MixPlan:
    """One epoch's mixing, batch ``k`` at index ``k``: ``mode`` 0 none, 1 mixup, 2 cutmix."""

    mode: np.ndarray
    lam: np.ndarray  # mixup's lam, or cutmix's drawn lam (before the box is clipped)
    cy: np.ndarray  # box centre as a fraction of the height, in [0, 1)
    cx: np.ndarray


def plan_epoch(cfg: MixConfig, seed: int, epoch: int, num_batches: int) -> MixPlan:
    """Draw every random number of ``epoch``'s mixing (``num_batches`` batches) up front."""
    def stream(name: str) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(_derived_seed(seed, name, epoch)))

    rng = stream("mix")
    apply = rng.random(num_batches) < cfg.prob
    switch = rng.random(num_batches) < cfg.switch_prob
    cy, cx = rng.random(num_batches), rng.random(num_batches)
    # Beta sampling consumes a varying amount of randomness: each kind draws from its own stream,
    # so turning one on or off, or changing its alpha, leaves every other draw unchanged
    lam_mix = stream("mixup").beta(cfg.mixup, cfg.mixup, num_batches) if cfg.mixup > 0 else np.ones(num_batches)
    lam_cut = stream("cutmix").beta(cfg.cutmix, cfg.cutmix, num_batches) if cfg.cutmix > 0 else np.ones(num_batches)
    if cfg.mixup > 0 and cfg.cutmix > 0:
        use_cut = switch
    else:
        use_cut = np.full(num_batches, cfg.cutmix > 0)
    mode = np.where(apply, np.where(use_cut, 2, 1), 0).astype(np.int64)
    return MixPlan(mode, np.where(use_cut, lam_cut, lam_mix), cy, cx)


def cutmix_box(height: int, width: int, lam: float, fy: float, fx: float) -> tuple[int, int, int, int, float]:
    """``(top, bottom, left, right, lam)`` of the pasted box and the ``lam`` its area gives."""
    ratio = math.sqrt(1.0 - lam)
    ch, cw = int(height * ratio), int(width * ratio)
    cy, cx = int(fy * height), int(fx * width)
    top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, height)
    left, right = max(cx - cw // 2, 0), min(cx + cw // 2, width)
    return top, bottom, left, right, 1.0 - (bottom - top) * (right - left) / (height * width)


def mix_batch(x: torch.Tensor, plan: MixPlan, k: int) -> tuple[torch.Tensor, float]:
    """Batch ``k`` of the epoch mixed with its reverse; returns the images and the weight ``lam``
    of the batch's own labels (1.0: not mixed). The images keep dtype and memory format."""
    mode = int(plan.mode[k])
    if mode == 0 or x.shape[0] < 2:
        return x, 1.0
    if mode == 1:
        lam = float(plan.lam[k])
        return x.mul(lam).add_(x.flip(0), alpha=1.0 - lam), lam
    top, bottom, left, right, lam = cutmix_box(x.shape[-2], x.shape[-1], float(plan.lam[k]),
                                               float(plan.cy[k]), float(plan.cx[k]))
    out = x.clone(memory_format=torch.preserve_format)
    out[:, :, top:bottom, left:right] = x.flip(0)[:, :, top:bottom, left:right]
    return out, lam


class Mixer:
    """Mixes a run's training batches: ``set_epoch`` plans an epoch, ``__call__`` mixes batch ``k``."""

    def __init__(self, cfg: MixConfig, seed: int) -> None:
        self.cfg = cfg
        self.seed = int(seed)
        self._plan: MixPlan | None = None
        self._epoch: int | None = None

    def set_epoch(self, epoch: int, num_batches: int) -> None:
        if self._epoch != epoch or self._plan is None or len(self._plan.mode) != num_batches:
            self._plan = plan_epoch(self.cfg, self.seed, epoch, num_batches)
            self._epoch = epoch

    def __call__(self, x: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(images, partner labels, lam)``; the loss is ``lam * CE(y) + (1 - lam) * CE(partner)``."""
        if self._plan is None:
            raise UserError("the mixer has no epoch plan; call set_epoch first.")
        out, lam = mix_batch(x, self._plan, k)
        return out, y.flip(0), lam
