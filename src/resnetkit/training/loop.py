"""The inner training loop: one epoch of steps, with the non-finite checks.

Kept free of run bookkeeping (directories, checkpoints, logging): :mod:`resnetkit.training.trainer`
drives it; evaluation lives in :mod:`resnetkit.runtime.inference`. Losses and counts accumulate on the device and are read once per epoch, so the
loop does not synchronise a GPU on every step; the non-finite check is the exception, made cheap
by checking a stacked window of losses every few steps on CUDA and every step on CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..runtime.device import autocast, synchronize
from .losses import mixed_targets, soft_target_cross_entropy


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; the run stops before writing any bad checkpoint."""


@dataclass
class StepState:
    """Where training is: ``epoch`` (0-based), batch index in it, and the global step count."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


@dataclass
class EpochStats:
    loss: float
    acc: float
    images: int
    seconds: float
    step_losses: list[float] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def train_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    state: StepState,
    *,
    device: torch.device,
    precision: str,
    label_smoothing: float,
    set_lr: Callable[[int], float],
    max_steps: int | None = None,
    after_step: Callable[[StepState, _Probe], bool] | None = None,
    record_steps: bool = False,
    reduce_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    check_every: int | None = None,
    mixer: Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor, float]] | None = None,
    num_classes: int | None = None,
    after_update: Callable[[int], None] | None = None,
) -> EpochStats:
    """Train over ``loader`` from ``state.step_in_epoch``; ``after_step`` returning True stops early.

    ``after_step(state, probe)`` runs after every step; ``probe.check()`` checks the pending
    losses for non-finite values (the caller must before writing a checkpoint) and
    ``probe.running()`` gives the epoch's running loss and accuracy (both synchronise).

    ``set_lr(global_step)`` sets the learning rate before each step. ``max_steps`` caps the
    global step count (tests and smoke runs). ``reduce_loss`` turns a step's loss into the value
    that ``record_steps`` records (distributed runs: the mean over ranks).

    ``mixer(x, y, batch_index)`` (mixup/cutmix) returns mixed images, partner labels and the
    weight ``lam`` of ``y``; the loss is then the soft-target cross entropy and the accuracy is
    counted against the dominant label (``y`` when ``lam >= 0.5``, else the partner's).
    ``after_update(global_step)`` runs right after each optimizer step (the weight EMA).
    """
    model.train()
    _keep_frozen_norms_in_eval(model)
    check_every = check_every or (1 if device.type == "cpu" else 25)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    window: list[torch.Tensor] = []
    step_losses: list[float] = []
    synchronize(device)
    t0 = time.perf_counter()
    for x, y in loader:
        if max_steps is not None and state.global_step >= max_steps:
            break
        set_lr(state.global_step)
        lam, y_b = 1.0, y
        if mixer is not None:
            x, y_b, lam = mixer(x, y, state.step_in_epoch)
        with autocast(device, precision):
            logits = model(x)
            if lam == 1.0:
                loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
            else:
                assert num_classes is not None, "mixing needs num_classes"
                loss = soft_target_cross_entropy(logits, mixed_targets(y, y_b, lam, num_classes, label_smoothing))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_update is not None:
            after_update(state.global_step + 1)
        detached = loss.detach()
        window.append(detached)
        if len(window) >= check_every:
            _check_finite(window, state)
            window.clear()
        n = y.shape[0]
        loss_sum += detached.double() * n
        correct += (logits.detach().argmax(1) == (y if lam >= 0.5 else y_b)).sum()
        seen += n
        if record_steps:  # under DDP the mean over ranks: the loss on the global batch
            step_losses.append(float(reduce_loss(detached) if reduce_loss is not None else detached))
        state.step_in_epoch += 1
        state.global_step += 1
        if after_step is not None:
            probe = _Probe(window, state, loss_sum, correct, seen, step_losses)
            if after_step(state, probe):
                break
    if window:
        _check_finite(window, state)
    synchronize(device)
    seconds = time.perf_counter() - t0
    total = max(seen, 1)
    return EpochStats(float(loss_sum) / total, float(correct) / total, seen, seconds, step_losses)


#: A forward pass without gradients over a batch runs about this many times faster than a training step on it
#: (2.8x for resnet_cpu_fullres_deep at batch 256 in bf16 on an AMX Xeon): a time budget keeps
#: ``images / (RECALIBRATION_SPEEDUP * training images per second)`` for :func:`recalibrate_batchnorm`.
RECALIBRATION_SPEEDUP = 2.5


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                          device: torch.device, precision: str) -> int:
    """Set the running statistics of every BatchNorm layer that trains to their average over ``batches``.

    During training a layer's running mean and variance are an exponential average of the last few
    batches (with ``momentum`` 0.4, the last two or three), so the statistics a trained network is
    evaluated with carry the noise of a few hundred images and lag the final weights. Once the weights
    are final, one pass over a few thousand training images in train mode, each layer averaging its
    batches' statistics equally (``momentum=None``), gives estimates from all of them ("precise
    BatchNorm": Wu and Johnson 2021, "Rethinking 'Batch' in BatchNorm"). The pass runs ``model`` in the
    modes training does (:func:`train_epoch`), whatever mode it is in (an EMA copy is kept in eval mode),
    and leaves every module in the mode it found it. Layers whose parameters are all frozen
    (``--freeze-backbone``) and layers the forward pass does not run in train mode (the frozen stem
    folded into its convolution: :meth:`ResNetCPU._frozen_stem`) keep their statistics.
    Returns the number of layers recalibrated.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.train()
    _keep_frozen_norms_in_eval(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
             and m.track_running_stats and m.running_mean is not None]
    saved = [(m, m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    done = 0
    try:
        for x, _ in batches:
            with autocast(device, precision):
                model(x.to(device, non_blocking=True))
    finally:
        for m, momentum, mean, var, tracked in saved:
            m.momentum = momentum
            if int(m.num_batches_tracked) == 0:  # it saw no batch in train mode: its statistics stay
                m.running_mean.copy_(mean), m.running_var.copy_(var)
            else:
                done += 1
            m.num_batches_tracked.add_(tracked)
        for m, training in modes:
            m.training = training
    return done


def _keep_frozen_norms_in_eval(model: nn.Module) -> None:
    """BatchNorm layers whose parameters are all frozen (``--freeze-backbone``) keep their
    running statistics too: they stay in eval mode while the rest trains."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters())
            if params and not any(p.requires_grad for p in params):
                m.eval()


class _Probe:
    """A look into the running epoch for the caller of :func:`train_epoch`.

    ``step_losses`` is this epoch's per-step losses so far (with ``record_steps``), so a caller
    can write them out with a mid-epoch checkpoint.
    """

    def __init__(self, window, state, loss_sum, correct, seen, step_losses=None) -> None:
        self._window, self._state = window, state
        self._loss_sum, self._correct, self._seen = loss_sum, correct, seen
        self.step_losses: list[float] = step_losses if step_losses is not None else []

    def check(self) -> None:
        if self._window:
            _check_finite(self._window, self._state)
            self._window.clear()

    def running(self) -> tuple[float, float]:
        n = max(self._seen, 1)
        return float(self._loss_sum) / n, float(self._correct) / n


def _check_finite(window: list[torch.Tensor], state: StepState) -> None:
    """Raise naming the first step whose loss is not finite (``window`` ends at the current step)."""
    finite = torch.isfinite(torch.stack(window))
    if bool(finite.all()):
        return
    first_bad = int((~finite).nonzero()[0])
    back = len(window) - 1 - first_bad  # how many steps before the current one
    step = state.global_step - back
    in_epoch = state.step_in_epoch - back
    raise NonFiniteLossError(
        f"the training loss became {float(window[first_bad]):.0f} at step {step} (epoch "
        f"{state.epoch + 1}, batch {in_epoch + 1}); stopped without saving these weights"
    )


def check_weights_finite(model: nn.Module, state: StepState) -> None:
    """Raise before a checkpoint holds NaN/inf weights (a step can overflow them while its loss is finite)."""
    tensors = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]
    if not tensors:
        return
    finite = torch.stack([torch.isfinite(v).all() for _, v in tensors])  # one sync, not one per tensor
    if bool(finite.all()):
        return
    first = tensors[int((~finite).nonzero()[0])][0]
    raise NonFiniteLossError(
        f"the weights became non-finite by step {state.global_step} (first: {first}); "
        f"stopped without saving them"
    )
