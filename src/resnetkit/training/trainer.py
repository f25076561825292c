"""A training run end to end: data -> model -> epochs -> run directory, held by a :class:`Trainer`.

With ``time_budget`` (``--time-budget``) the run is driven by the clock instead of the epoch
count: the learning-rate schedule follows the share of the budget spent on training steps
(evaluation and checkpoint writes do not count), and training stops at the first step that ends
past it, in any epoch, so the training time is the budget plus at most one step. Such a run is
not reproducible step for step (the clock decides the schedule); everything else about it is as
usual, and a resume continues the clock from ``last.pt``.

The run directory holds ``config.json``, ``metrics.jsonl`` (one line per epoch), ``last.pt`` and
``best.pt`` (everything exact resume needs), ``curves.png`` and, with ``log_steps``,
``steps.jsonl`` (every step's loss). Only rank 0 writes. SIGTERM/SIGINT save ``last.pt`` at the
current step and stop; resuming continues bit for bit.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import peek, unwrap
from ..data.dataset import ImageData
from ..errors import UserError
from ..models import model_info
from ..runtime.device import resolve_device, synchronize
from ..runtime.inference import evaluate
from . import rundir
from .config import TrainConfig, validate
from .distributed import DistContext, debug_dump, global_epoch_stats, init_from_env, shutdown
from .loop import (
    RECALIBRATION_SPEEDUP,
    NonFiniteLossError,
    StepState,
    check_weights_finite,
    recalibrate_batchnorm,
    train_epoch,
)
from .resume import continue_in_out, finished, restarted_by_torchrun, resume_config, spent_seconds
from .schedule import apply_lr, lr_factor
from .setup import Setup, build

log = logging.getLogger(__name__)



class TrainingInterrupted(UserError):
    """The run was stopped by a signal after saving ``last.pt``; the exit code is the shell's
    128 + signal number (130 for SIGINT / Ctrl-C, 143 for SIGTERM)."""

    exit_code = 143

    def __init__(self, message: str, signal_name: str | None = None) -> None:
        super().__init__(message)
        if signal_name in ("SIGINT", "SIGTERM"):
            self.exit_code = 128 + int(signal.Signals[signal_name])


@dataclass
class RunResult:
    """What a finished run reports (the same numbers are in the run directory)."""

    out_dir: Path | None
    history: list[dict]
    test: dict
    prep_seconds: float
    train_seconds: float
    compile_seconds: float
    wall_seconds: float
    config: dict = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    eval_seconds: float = 0.0  # the final test evaluation
    precision: str = ""  # as resolved (``auto`` made concrete)
    channels_last: bool = False
    test_ema: dict | None = None  # the EMA weights' test metrics (runs with --ema)
    # the final test pass's fp32 logits in test-split order (single-process runs; None under DDP),
    # so the run's evaluation files can be written without a second pass
    test_logits: torch.Tensor | None = field(default=None, repr=False)
    epochs_trained: float = 0.0  # optimizer steps / steps per epoch (time-budget runs end mid-epoch)
    paused_at_step: int | None = None  # set when --stop-after-steps stopped the run before its end

    @property
    def test_top1(self) -> float:
        return float(self.test.get("top1", float("nan")))


def progressive_size(sizes: list[int] | None, epoch: int, total_epochs: int) -> int | None:
    """The training image size of ``epoch`` (0-based) under progressive resizing.

    The run is cut into ``len(sizes)`` equal consecutive parts, one per size in order (fast.ai's
    DAWNBench progressive resizing, Howard 2018); ``None`` (no schedule) keeps the stored size.
    """
    if not sizes:
        return None
    part = min(len(sizes) - 1, epoch * len(sizes) // max(total_epochs, 1))
    return int(sizes[part])


def resume_position(ckpt: dict, global_batch: int) -> int:
    """The step in the epoch to resume at: the checkpoint's place in the epoch's global order.

    The loader serves step k of an epoch from positions ``[k*G, (k+1)*G)`` of the epoch's
    shuffled order for any number of processes (G the global batch), so the place is a number of
    images; checkpoints written before it was stored give ``step_in_epoch``.
    """
    images = ckpt.get("images_in_epoch")
    if images is None:
        return int(ckpt["step_in_epoch"])
    saved = int(ckpt.get("global_batch", global_batch))
    if saved != global_batch or images % global_batch:
        raise UserError(f"the checkpoint was written with a global batch of {saved} images and cannot continue "
                        f"with {global_batch}")
    return images // global_batch


UNBOUNDED = 1 << 62  # the epoch and step count of a time-budget run: its clock ends it


def fit(cfg: TrainConfig | None = None, *, resume: str | Path | None = None,
        resume_overrides: dict | None = None, progress: bool = False,
        data: ImageData | None = None, auto_resume: bool = False) -> RunResult:
    """Train ``cfg``, or continue the run in directory ``resume`` from its ``last.pt``.

    With ``auto_resume`` (and always in a worker group that torchrun restarted) a run already in
    ``cfg.out`` continues from its ``last.pt`` (:func:`continue_in_out`).
    """
    wall0 = time.perf_counter()
    ckpt = None
    if resume is not None:
        cfg, ckpt = resume_config(resume, resume_overrides)
    elif cfg is None:
        raise UserError("nothing to train: give a configuration or a run directory to resume")
    elif auto_resume or (restarted_by_torchrun() and cfg.out):
        cfg, ckpt = continue_in_out(cfg)
    elif restarted_by_torchrun():
        log.warning("torchrun restarted this run, which has no --out to continue from: it starts anew")
    return train_in_group(cfg, ckpt, progress=progress, data=data, wall0=wall0)


def train_in_group(cfg: TrainConfig, ckpt: dict | None, *, progress: bool = False, data: ImageData | None = None,
                   on_save: Callable[[Trainer], None] | None = None, wall0: float | None = None) -> RunResult:
    """Join (or adopt) the process group and run a :class:`Trainer` from ``ckpt`` (``None``: a new run).

    ``on_save(trainer)`` runs on every process after each checkpoint save (the Ray adapter
    reports there).
    """
    validate(cfg)
    model_info(cfg.model)  # an unknown model fails now, with suggestions, before any data work
    if ckpt is not None and finished(ckpt, cfg):
        raise UserError(f"the run in {cfg.out} is complete ({len(ckpt.get('history', []))} epoch(s), step "
                        f"{ckpt['global_step']}); its results are in {cfg.out}/result.json. To train longer, "
                        f"resume with a larger {'<<time_budget>>' if cfg.time_budget else '<<epochs>>'}")
    dist_ctx, device_name = init_from_env(cfg.device)
    cfg.device = device_name or cfg.device
    resolve_device(cfg.device)  # a bad device fails before the run directory exists
    out = Path(cfg.out) if cfg.out else None
    existed = out is not None and out.exists()
    try:
        trainer = Trainer(cfg, ckpt, dist_ctx, progress, data)
    except BaseException:
        shutdown(dist_ctx)
        if dist_ctx.is_main and ckpt is None and not existed:
            _remove_if_empty(Path(cfg.out) if cfg.out else None)
        raise
    try:
        trainer.on_save = on_save
        return trainer.run(wall0)
    except NonFiniteLossError as e:
        last = Path(cfg.out) / "last.pt" if cfg.out else None
        if last is not None and last.exists():
            raise NonFiniteLossError(f"{e}; {last} keeps the last good state (step {peek(last)['global_step']}), "
                                     f"but a resume keeps the same settings: start again with a lower <<lr>> and "
                                     f"<<overwrite>>, or check the data") from None
        raise NonFiniteLossError(f"{e}; no checkpoint was saved before it: start again with a lower <<lr>> "
                                 f"(and <<overwrite>> to reuse {cfg.out}), or check the data") from None
    finally:
        shutdown(dist_ctx)


def _remove_if_empty(out: Path | None) -> None:
    """Remove a run directory this command created when it failed before writing anything."""
    if out is None or not out.is_dir():
        return
    for stale in out.glob(".*"):  # the write probe of rundir.prepare
        if stale.is_file():
            stale.unlink(missing_ok=True)
    try:
        out.rmdir()
        if out.parent.name == "runs" and not any(out.parent.iterdir()):
            out.parent.rmdir()  # the default parent, when this run made it
    except OSError:
        pass  # something else is there: keep it


class Trainer:
    """One run's state, in plain attributes: the setup, where training is (``state``), the
    epoch rows (``history``), the best epoch, the run-directory writer (rank 0 only), the DDP stop
    vote and the signal that asked to stop. :meth:`save_checkpoint` is the one place that saves."""

    def __init__(self, cfg: TrainConfig, ckpt: dict | None, dist_ctx: DistContext, progress: bool,
                 data: ImageData | None) -> None:
        out = rundir.prepare(cfg, resuming=ckpt is not None) if dist_ctx.is_main else None
        cfg.out = dist_ctx.broadcast_object(cfg.out)  # rank 0 may have chosen the default directory
        s: Setup = build(cfg, ckpt, dist_ctx, data, progress)
        if ckpt is not None and list(ckpt.get("classes", s.data.classes)) != list(s.data.classes):
            raise UserError(f"cannot resume {cfg.out}: its data {cfg.data} now has classes {s.data.classes[:5]}, "
                            f"but the checkpoint was trained on {list(ckpt['classes'])[:5]}; start a new run instead")
        self.cfg, self.setup, self.dist, self.progress = cfg, s, dist_ctx, progress
        self.writer = rundir.RunWriter(out, cfg, s, ckpt) if out is not None else None
        self.state = StepState()
        self.history: list[dict] = []
        self.best: dict[str, Any] = {"metric": "val_top1" if s.val_loader is not None else "last",
                                     "value": None, "epoch": None}
        if ckpt is not None:
            self.state = StepState(ckpt["epoch"], resume_position(ckpt, cfg.batch_size), ckpt["global_step"])
            if self.state.step_in_epoch >= len(s.train_loader):  # saved right at an epoch's last step
                self.state.epoch, self.state.step_in_epoch = self.state.epoch + 1, 0
            self.history = list(ckpt.get("history", []))
            self.best = dict(ckpt.get("best", self.best))
            log.info("resuming %s at epoch %d, step %d, on %d process(es) (saved by %d)", cfg.out,
                     self.state.epoch + 1, self.state.global_step, dist_ctx.world_size, ckpt.get("world_size", 1))
        self.resumed_from = self.state.global_step  # 0 for a new run
        self.steps_per_epoch = len(s.train_loader)
        self.budget = cfg.time_budget
        # the images the BatchNorm recalibration after the last step runs on (a small training split has fewer)
        self.recalibration_images = len(s.recalibration_loader.images) if s.recalibration_loader is not None else 0
        if self.budget is None:
            self.total_epochs = int(-(-cfg.epochs // 1))
            self.total_steps = max(1, int(round(cfg.epochs * self.steps_per_epoch)))
        else:  # the clock ends the run (budget_spent), not a count
            self.total_epochs, self.total_steps = UNBOUNDED, UNBOUNDED
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.warmup_steps = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.stop_at = cfg.stop_after_steps  # like a signal at that step: the schedule stays the full run's
        self.steps_logged = 0  # this epoch's step losses already in steps.jsonl
        self.compile_seconds = 0.0
        # (global step, metrics, seconds, EMA metrics or None) of the last test pass
        self.tested: tuple[int, dict, float, dict | None] | None = None
        self.test_logits: torch.Tensor | None = None  # of the newest test pass (see evaluate)
        self.signal: str | None = None  # the name of a SIGTERM/SIGINT received
        self.vote = dist_ctx.stop_vote()  # under DDP every rank stops after the same step
        self.bar: Any = None
        # seconds spent in training steps so far (the time budget's clock; it stops between epochs)
        self.clock_base = 0.0 if ckpt is None else spent_seconds(ckpt)
        self.clock_t0: float | None = None  # perf_counter at the start of the running epoch
        self.vote.agreed = self.clock_base
        self.budget_spent = False
        self.on_save: Callable[[Trainer], None] | None = None  # called on every process after each save

    # ------------------------------------------------------------------ pieces
    def clock(self) -> float:
        """Seconds of training so far (this process's clock)."""
        return self.clock_base + (time.perf_counter() - self.clock_t0 if self.clock_t0 is not None else 0.0)

    def budget_progress(self) -> float:
        """The share of the time budget's steps spent: under DDP rank 0's clock one step ago (the same on
        every rank), else this process's clock now."""
        spent = self.vote.agreed if self.dist.enabled else self.clock()
        return spent / self.step_budget(spent) if self.budget else 0.0

    def step_budget(self, spent: float) -> float:
        """The seconds of the budget for training steps: all of it, less the time the BatchNorm
        recalibration after the last step will take at the training rate so far (``bn_recalibration``)."""
        assert self.budget is not None
        steps = self.state.global_step
        if not self.recalibration_images or steps == 0 or spent <= 0:
            return self.budget
        rate = steps * self.cfg.batch_size / spent  # training images per second, all processes
        return self.budget - min(self.recalibration_images / (RECALIBRATION_SPEEDUP * rate), 0.1 * self.budget)

    def set_lr(self, step: int) -> float:
        progress = self.budget_progress() if self.budget is not None else None
        return apply_lr(self.setup.optimizer, lr_factor(step, self.total_steps, self.warmup_steps, self.cfg.schedule,
                                                        progress=progress))

    def paused_mid_epoch(self) -> bool:
        """Stopped by ``stop_after_steps`` inside an epoch (not at the run's end)."""
        st = self.state
        return (self.stop_at is not None and self.stop_at <= st.global_step < self.total_steps
                and st.step_in_epoch < self.steps_per_epoch)

    def save_checkpoint(self, epoch_done: bool, best: bool = False) -> None:
        """Write ``last.pt`` (and ``best.pt`` with ``best``) from the current state, on rank 0.

        Every caller has checked the weights are finite on every rank (check_weights_finite).
        """
        if self.writer is not None:
            payload = self.setup.payload(self.state, self.history, self.best, epoch_done)
            payload["train_clock"] = self.clock()
            self.writer.save_last(payload)
            if best:
                self.writer.save_best(payload)
        if self.on_save is not None:
            self.on_save(self)

    def after_update(self, global_step: int) -> None:
        """Right after each optimizer step: update the weight EMA when one is due."""
        s = self.setup
        if s.ema is not None and s.ema.due(global_step):
            s.dist.sync_buffers(s.model)  # every rank averages rank 0's BatchNorm statistics
            s.ema.update(unwrap(s.model))

    def evaluate(self, loader, model=None, keep: bool = False) -> dict:
        """Metrics of the model (or ``model``, e.g. the EMA weights) on ``loader``.

        ``keep`` (the test split's passes) keeps the logits in ``self.test_logits`` on a
        single-process run, where the loader holds the whole split in order.
        """
        s = self.setup
        s.dist.sync_buffers(s.model)  # evaluate rank 0's BatchNorm statistics: the checkpoint's
        kept: list[torch.Tensor] | None = [] if keep and not s.dist.enabled else None
        m = evaluate(model if model is not None else s.model, loader, s.data.num_classes, device=s.device,
                     precision=s.precision, tta=self.cfg.tta, reduce=s.dist.all_reduce_sum if s.dist.enabled else None,
                     keep_logits=kept)
        if keep:
            self.test_logits = torch.cat(kept) if kept else None
        return m

    def after_step(self, st: StepState, probe) -> bool:
        """Called by the loop after every step; True stops the epoch."""
        cfg = self.cfg
        save = cfg.checkpoint_every and st.global_step % cfg.checkpoint_every == 0
        stopping = self.vote(self.signal is not None, self.clock() if self.budget is not None else 0.0)
        if self.budget is not None and self.vote.agreed >= self.step_budget(self.vote.agreed):
            self.budget_spent = True
        halt = stopping or self.budget_spent or st.global_step >= self.total_steps
        halt = halt or (self.stop_at is not None and st.global_step >= self.stop_at)
        if self.bar is not None and st.step_in_epoch % 10 == 0:
            self.bar.show(*probe.running())
        if save or stopping or self.paused_mid_epoch():
            # the pending losses, then the weights, on every rank (they hold the same weights),
            # so under DDP all ranks stop together and no checkpoint holds NaN or inf
            probe.check()
            check_weights_finite(unwrap(self.setup.model), st)
            if self.writer is not None:
                # the steps first: a crash between the two leaves extra rows, which resume drops
                losses = probe.step_losses
                self.writer.log_steps(losses[self.steps_logged:], st.global_step - len(losses) + self.steps_logged)
                self.steps_logged = len(losses)
            self.save_checkpoint(epoch_done=False)
        if stopping:
            raise TrainingInterrupted(
                f"stopped by {self.signal or 'a signal to another process'} at epoch {st.epoch + 1}, "
                f"step {st.global_step}; saved {cfg.out}/last.pt, continue with --resume {cfg.out}", self.signal)
        return halt

    # ------------------------------------------------------------------ the run
    def _train_one_epoch(self):
        s, cfg, state = self.setup, self.cfg, self.state
        s.train_loader.set_epoch(state.epoch)
        if cfg.stem_epochs is not None and state.epoch >= cfg.stem_epochs and unwrap(s.model).freeze_stem():
            # a function of the epoch alone, so a resumed run freezes it where the first run did
            log.info("stem frozen from epoch %d on (trained for %d epochs): the backward pass skips it", state.epoch + 1,
                     cfg.stem_epochs)
        if self.budget is None:
            size = progressive_size(cfg.progressive_sizes, state.epoch, self.total_epochs)
        else:  # the part of the budget this epoch starts in
            size = progressive_size(cfg.progressive_sizes, min(int(self.budget_progress() * 1000), 999), 1000)
        s.train_loader.set_size(size)
        s.train_loader.skip_to(state.step_in_epoch)
        self.steps_logged = 0
        if s.mixer is not None:
            s.mixer.set_epoch(state.epoch, self.steps_per_epoch)
        use_bar = self.writer is not None and self.progress
        self.bar = self.writer.progress_bar(state, self.steps_per_epoch, s.train_loader) if use_bar else None
        self.clock_t0 = time.perf_counter()
        stats = train_epoch(
            s.model, self.bar if self.bar is not None else s.train_loader, s.optimizer, state,
            device=s.device, precision=s.precision, label_smoothing=cfg.label_smoothing,
            set_lr=self.set_lr, after_step=self.after_step,
            record_steps=cfg.log_steps or bool(rundir.logger_names(cfg)),
            reduce_loss=self.dist.all_reduce_mean if self.dist.enabled else None,
            mixer=s.mixer, num_classes=s.data.num_classes, after_update=self.after_update,
        )
        if s.recalibration_loader is not None and self.signal is None and (
                self.budget_spent or state.global_step >= self.total_steps):
            self._recalibrate()  # on the clock: part of training
        self.clock_base, self.clock_t0 = self.clock_base + (time.perf_counter() - self.clock_t0), None
        # the epoch's seconds as the budget's clock counted them (its set-up included, and the part
        # before a mid-epoch resume), so the rows add up to the time the budget was spent on
        stats.seconds = self.clock_base - sum(r["seconds"] for r in self.history)
        if self.bar is not None:
            self.bar.close()
        return stats

    def _recalibrate(self) -> None:
        """The BatchNorm statistics from ``bn_recalibration`` training images (:func:`recalibrate_batchnorm`),
        on every rank, each over the same images with its own copy of the weights (no collectives)."""
        s = self.setup
        t0 = time.perf_counter()
        layers = recalibrate_batchnorm(unwrap(s.model), s.recalibration_loader, device=s.device, precision=s.precision)
        if s.ema is not None:  # the averaged weights get statistics of their own
            recalibrate_batchnorm(s.ema.module, s.recalibration_loader, device=s.device, precision=s.precision)
        synchronize(s.device)
        log.info("BatchNorm statistics of %d layers set from %d training images in %.1f s", layers,
                 len(s.recalibration_loader.images), time.perf_counter() - t0)

    def _end_epoch(self, stats) -> bool:
        """Evaluate, write the epoch's rows and checkpoints; False when training stops here."""
        s, cfg, state = self.setup, self.cfg, self.state
        stats = global_epoch_stats(self.dist, stats, s.device)
        check_weights_finite(unwrap(s.model), state)  # before this epoch's rows are written
        if cfg.compile and not self.history:
            self.compile_seconds = s.warmup_seconds
        epoch_done = (state.step_in_epoch >= self.steps_per_epoch or state.global_step >= self.total_steps
                      or self.budget_spent)
        row = {"epoch": state.epoch + 1, "step": state.global_step, "lr": s.optimizer.param_groups[0]["lr"],
               "train_loss": stats.loss, "train_acc": stats.acc, "images_per_s": stats.images_per_s,
               "seconds": stats.seconds}
        last_epoch = state.global_step >= self.total_steps or state.epoch + 1 >= self.total_epochs or self.budget_spent
        if s.val_loader is not None:
            v = self.evaluate(s.val_loader)
            row.update(val_loss=v["loss"], val_acc=v["top1"])
            top, weights = v["top1"], "raw"
            if s.ema is not None:
                ve = self.evaluate(s.val_loader, s.ema.module)
                row.update(ema_val_loss=ve["loss"], ema_val_acc=ve["top1"])
                if ve["top1"] >= top:  # the validation split picks the raw or the EMA weights
                    top, weights = ve["top1"], "ema"
            if self.best["value"] is None or top > self.best["value"]:
                self.best.update(value=top, epoch=state.epoch + 1, weights=weights)
        elif s.ema is not None:
            self.best["weights"] = "ema"  # no validation split: the average, as usual
        if last_epoch or (cfg.eval_every and (state.epoch + 1) % cfg.eval_every == 0):
            e0 = time.perf_counter()
            t = self.evaluate(s.test_loader, keep=True)
            self.tested = (state.global_step, t, time.perf_counter() - e0, None)
            row.update(test_loss=t["loss"], test_acc=t["top1"], test_top5=t["top5"])
            if s.ema is not None:
                te = self.evaluate(s.test_loader, s.ema.module)
                self.tested = (state.global_step, t, self.tested[2], te)
                row.update(ema_test_loss=te["loss"], ema_test_acc=te["top1"], ema_test_top5=te["top5"])
        self.history.append(row)
        if self.writer is not None:
            rest = stats.step_losses[self.steps_logged:]  # the ones no mid-epoch checkpoint wrote
            self.writer.log_steps(rest, state.global_step - len(rest))
            self.writer.end_epoch(row)
        if epoch_done:
            state.epoch += 1
            state.step_in_epoch = 0
        self.save_checkpoint(epoch_done=True,
                             best=self.best["metric"] == "last" or self.best["epoch"] == row["epoch"])
        return epoch_done

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signal = signal.Signals(signum).name

    @contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """Turn SIGTERM/SIGINT into :attr:`signal`, checked after every step (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def run(self, wall0: float | None = None) -> RunResult:
        """Train to the end (or the stop point) and return what the run reports."""
        wall0 = time.perf_counter() if wall0 is None else wall0
        s, state = self.setup, self.state
        with self._stop_on_signals():
            while (state.epoch < self.total_epochs and state.global_step < self.total_steps and not self.budget_spent
                   and (self.stop_at is None or state.global_step < self.stop_at)):
                stats = self._train_one_epoch()
                if self.paused_mid_epoch():
                    break  # last.pt holds this step; the epoch's row comes when a resume finishes the epoch
                if not self._end_epoch(stats):
                    break
        self.vote.close()
        # the last epoch's test pass already saw these weights unless training went on after it
        if self.tested is None or self.tested[0] != state.global_step:
            e0 = time.perf_counter()
            t = self.evaluate(s.test_loader, keep=True)
            seconds = time.perf_counter() - e0
            self.tested = (state.global_step, t, seconds,
                           self.evaluate(s.test_loader, s.ema.module) if s.ema is not None else None)
        final, eval_seconds, final_ema = self.tested[1], self.tested[2], self.tested[3]
        # the compile warm-up ran in setup, before the epoch clocks started: nothing to take off
        paused = (self.stop_at is not None and self.stop_at <= state.global_step < self.total_steps
                  and not self.budget_spent)
        # a pause mid-epoch has no row for that epoch yet: the clock holds its seconds
        train_seconds = self.clock() if paused else sum(r["seconds"] for r in self.history)
        result = RunResult(
            out_dir=Path(self.cfg.out) if self.cfg.out else None, history=self.history, test=final,
            prep_seconds=s.prep_seconds, train_seconds=train_seconds, compile_seconds=self.compile_seconds,
            wall_seconds=time.perf_counter() - wall0, config=self.cfg.to_dict(), classes=s.data.classes,
            eval_seconds=eval_seconds, precision=s.precision, channels_last=s.channels_last,
            test_ema=final_ema, test_logits=self.test_logits,
            epochs_trained=state.global_step / max(1, self.steps_per_epoch),
            paused_at_step=state.global_step if paused else None,
        )
        if self.writer is not None:
            self.writer.finish(result)
        debug_dump(self.dist, s.model, s.optimizer, None if s.ema is None else s.ema.module)
        return result
