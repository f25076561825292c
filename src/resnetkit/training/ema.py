"""An exponential moving average (EMA) of a model's weights, with a warm-up of the decay.

After every ``every``-th optimizer step the average moves towards the current weights::

    decay_t = min(decay, (1 + t) / (10 + t))        t = number of updates made so far
    ema     = decay_t * ema + (1 - decay_t) * weights

The warm-up is the ``num_updates`` rule of TensorFlow's ``tf.train.ExponentialMovingAverage``
(also used by the EfficientNet and timm ``ModelEmaV2`` recipes): early on the average forgets
its random start quickly, so short runs benefit too; after about ``10 / (1 - decay)`` updates the
decay is the one asked for. ``decay`` is per update, so with ``every = N`` the average spans
about ``N / (1 - decay)`` steps.

BatchNorm running statistics are **averaged** like the weights (``num_batches_tracked`` is
copied): the averaged weights produce activations whose statistics lag the raw model's by the
same horizon, and averaging the statistics with the same decay keeps them matched. This is what
torchvision's classification reference (``ExponentialMovingAverage`` with ``use_buffers=True``)
and timm's ``ModelEmaV2/V3`` do.

Determinism: the update is an element-wise ``lerp_`` in float32, so it is bitwise reproducible;
under DDP every rank holds the same weights after the optimizer step and, once the trainer has
broadcast rank 0's BatchNorm buffers (as DDP itself does before each forward), the same
buffers, so every rank's average is the same.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..errors import UserError


class ModelEma:
    """The EMA copy of ``model`` (its unwrapped module), kept on the same device, in eval mode."""

    def __init__(self, model: nn.Module, decay: float, every: int = 1) -> None:
        if not 0.0 < decay < 1.0:
            raise UserError(f"--ema takes a decay between 0 and 1 (e.g. 0.999), got {decay}.")
        if not isinstance(every, int) or every < 1:
            raise UserError(f"--ema-every takes a positive number of steps, got {every}.")
        self.decay = float(decay)
        self.every = int(every)
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def decay_at(self, t: int) -> float:
        """The decay used by update number ``t`` (0-based): the warm-up rule above."""
        return min(self.decay, (1.0 + t) / (10.0 + t))

    def due(self, global_step: int) -> bool:
        """Whether the step that just made ``global_step`` steps in all updates the average."""
        return global_step % self.every == 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights and buffers (one update)."""
        d = self.decay_at(self.updates)
        ema_state = self.module.state_dict()
        for name, src in model.state_dict().items():
            dst = ema_state[name]
            if dst.is_floating_point():
                dst.lerp_(src.to(dst.dtype), 1.0 - d)
            else:  # num_batches_tracked and other integer buffers: the current value
                dst.copy_(src)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints (plain tensors and numbers: loadable with ``weights_only=True``)."""
        return {"decay": self.decay, "every": self.every, "updates": self.updates,
                "weights": {k: v.detach().clone() for k, v in self.module.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore exactly what :meth:`state_dict` saved (resume)."""
        try:
            self.module.load_state_dict(state["weights"], strict=True)
            self.updates = int(state["updates"])
        except (KeyError, RuntimeError) as e:
            raise UserError(f"the checkpoint's EMA weights do not fit this model ({str(e).splitlines()[0]}).") from None
