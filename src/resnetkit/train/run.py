"""A training run end to end: data -> model -> epochs -> run directory.

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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ..data.dataset import ImageData
from ..errors import UserError
from . import rundir
from .checkpoint import atomic_save, peek, unwrap
from .config import TrainConfig, validate
from .distributed import DistContext, debug_dump, global_epoch_stats, init_from_env, shutdown
from .engine import StepState, check_weights_finite, evaluate, train_epoch
from .schedule import apply_lr, lr_factor
from .setup import Setup, build

log = logging.getLogger(__name__)


class TrainingInterrupted(UserError):
    """The run was stopped by a signal after saving ``last.pt``."""

    exit_code = 143


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

    @property
    def test_top1(self) -> float:
        return float(self.test.get("top1", float("nan")))


@contextmanager
def _stop_on_signals() -> Iterator[dict]:
    """Turn SIGTERM/SIGINT into a flag checked after every step (main thread only)."""
    flag: dict[str, Any] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, _frame: Any) -> None:
        flag["signal"] = signal.Signals(signum).name

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


RESUME_OVERRIDABLE = ("epochs", "device", "max_steps", "stop_after_steps", "log_steps", "checkpoint_every",
                      "eval_every")


def fit(cfg: TrainConfig | None = None, *, resume: str | Path | None = None,
        resume_overrides: dict | None = None, progress: bool = False,
        data: ImageData | None = None) -> RunResult:
    """Train ``cfg``, or continue the run in directory ``resume`` from its ``last.pt``.

    A resumed run takes its whole configuration from the checkpoint; ``resume_overrides`` may
    change only the keys in :data:`RESUME_OVERRIDABLE` (``None`` values are ignored).
    """
    wall0 = time.perf_counter()
    ckpt = None
    if resume is not None:
        last = Path(resume) / "last.pt" if Path(resume).is_dir() else Path(resume)
        ckpt = peek(last)
        extra = {k: v for k, v in (resume_overrides or {}).items() if v is not None}
        bad = sorted(set(extra) - set(RESUME_OVERRIDABLE))
        if bad:
            raise UserError(f"--resume takes its settings from the checkpoint; cannot change {', '.join(bad)}")
        # a stop point is where the earlier part ended, never inherited by the continuation
        cfg = TrainConfig.from_dict({**ckpt["config"], "stop_after_steps": None, **extra})
        cfg.out = str(last.parent)
    elif cfg is None:
        raise UserError("nothing to train: give a configuration or a run directory to resume")
    validate(cfg)
    dist_ctx, device_name = init_from_env(cfg.device)
    cfg.device = device_name or cfg.device
    try:
        return _fit(cfg, ckpt, dist_ctx, progress, data, wall0)
    finally:
        shutdown()


def _fit(cfg: TrainConfig, ckpt: dict | None, dist_ctx: DistContext, progress: bool,
         data: ImageData | None, wall0: float) -> RunResult:
    out = rundir.prepare(cfg, resuming=ckpt is not None) if dist_ctx.is_main else None
    cfg.out = dist_ctx.broadcast_object(cfg.out)  # rank 0 may have chosen the default directory
    s: Setup = build(cfg, ckpt, dist_ctx, data, progress)
    if ckpt is not None and list(ckpt.get("classes", s.data.classes)) != list(s.data.classes):
        raise UserError(f"cannot resume {cfg.out}: its data {cfg.data} now has classes {s.data.classes[:5]}, but the "
                        f"checkpoint was trained on {list(ckpt['classes'])[:5]}; start a new run instead")
    writer = rundir.RunWriter(out, cfg, s, ckpt) if out is not None else None
    state = StepState()
    history: list[dict] = []
    best = {"metric": "val_top1" if s.val_loader is not None else "last", "value": None, "epoch": None}
    if ckpt is not None:
        state = StepState(ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"])
        if state.step_in_epoch >= len(s.train_loader):  # saved right at an epoch's last step
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
        history = list(ckpt.get("history", []))
        best = dict(ckpt.get("best", best))
        log.info("resuming %s at epoch %d, step %d", cfg.out, state.epoch + 1, state.global_step)

    total_epochs = int(-(-cfg.epochs // 1))
    steps_per_epoch = len(s.train_loader)
    total_steps = max(1, int(round(cfg.epochs * steps_per_epoch)))
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))

    def set_lr(step: int) -> float:
        return apply_lr(s.optimizer, lr_factor(step, total_steps, warmup, cfg.schedule))

    def checkpoint_payload(epoch_done: bool) -> dict:
        # every caller has checked the weights are finite (check_weights_finite) on every rank
        return s.payload(state, history, best, epoch_done)

    stop_at = cfg.stop_after_steps  # like a signal at that step: the schedule stays the full run's
    logged = {"steps": 0}  # this epoch's step losses already in steps.jsonl

    compile_seconds = 0.0
    tested: tuple[int, dict] | None = None
    vote = dist_ctx.stop_vote()  # under DDP every rank stops after the same step
    with _stop_on_signals() as stop:

        bar = None

        def paused_mid_epoch(st: StepState) -> bool:
            """Stopped by ``stop_after_steps`` inside an epoch (not at the run's end)."""
            return (stop_at is not None and stop_at <= st.global_step < total_steps
                    and st.step_in_epoch < steps_per_epoch)

        def after_step(st: StepState, probe) -> bool:
            save = cfg.checkpoint_every and st.global_step % cfg.checkpoint_every == 0
            stopping = vote(stop["signal"] is not None)
            halt = stopping or st.global_step >= total_steps
            halt = halt or (stop_at is not None and st.global_step >= stop_at)
            if bar is not None and st.step_in_epoch % 10 == 0:
                bar.show(*probe.running())
            if save or stopping or paused_mid_epoch(st):
                # the pending losses, then the weights, on every rank (they hold the same weights),
                # so under DDP all ranks stop together and no checkpoint holds NaN or inf
                probe.check()
                check_weights_finite(unwrap(s.model), st)
            if (save or stopping or paused_mid_epoch(st)) and writer is not None:
                # the steps first: a crash between the two leaves extra rows, which resume drops
                losses = probe.step_losses
                writer.log_steps(losses[logged["steps"]:], st.global_step - len(losses) + logged["steps"])
                logged["steps"] = len(losses)
                writer.save_last(checkpoint_payload(epoch_done=False))
            if stopping:
                raise TrainingInterrupted(
                    f"stopped by {stop['signal'] or 'a signal to another process'} at epoch {st.epoch + 1}, "
                    f"step {st.global_step}; "
                    f"saved {cfg.out}/last.pt, continue with --resume {cfg.out}")
            return halt

        while (state.epoch < total_epochs and state.global_step < total_steps
               and (stop_at is None or state.global_step < stop_at)):
            s.train_loader.set_epoch(state.epoch)
            s.train_loader.set_size(progressive_size(cfg.progressive_sizes, state.epoch, total_epochs))
            s.train_loader.skip_to(state.step_in_epoch)
            logged["steps"] = 0
            bar = writer.progress_bar(state, steps_per_epoch, s.train_loader) if (writer and progress) else None
            stats = train_epoch(
                s.model, bar if bar is not None else s.train_loader, s.optimizer, state,
                device=s.device, precision=s.precision, label_smoothing=cfg.label_smoothing,
                set_lr=set_lr, after_step=after_step, record_steps=cfg.log_steps,
                reduce_loss=dist_ctx.all_reduce_mean if dist_ctx.enabled else None,
            )
            if bar is not None:
                bar.close()
            if paused_mid_epoch(state):
                break  # last.pt holds this step; the epoch's row comes when a resume finishes the epoch
            stats = global_epoch_stats(dist_ctx, stats, s.device)
            check_weights_finite(unwrap(s.model), state)  # before this epoch's rows are written
            if cfg.compile and not history:
                compile_seconds = s.warmup_seconds
            epoch_done = state.step_in_epoch >= steps_per_epoch or state.global_step >= total_steps
            row = {"epoch": state.epoch + 1, "step": state.global_step, "lr": s.optimizer.param_groups[0]["lr"],
                   "train_loss": stats.loss, "train_acc": stats.acc, "images_per_s": stats.images_per_s,
                   "seconds": stats.seconds}
            last_epoch = state.global_step >= total_steps or state.epoch + 1 >= total_epochs
            if s.val_loader is not None:
                v = _eval(s, s.val_loader, cfg.tta)
                row.update(val_loss=v["loss"], val_acc=v["top1"])
                if best["value"] is None or v["top1"] > best["value"]:
                    best.update(value=v["top1"], epoch=state.epoch + 1)
            if last_epoch or (cfg.eval_every and (state.epoch + 1) % cfg.eval_every == 0):
                t = _eval(s, s.test_loader, cfg.tta)
                tested = (state.global_step, t)
                row.update(test_loss=t["loss"], test_acc=t["top1"], test_top5=t["top5"])
            history.append(row)
            if writer is not None:
                rest = stats.step_losses[logged["steps"]:]  # the ones no mid-epoch checkpoint wrote
                writer.log_steps(rest, state.global_step - len(rest))
                writer.end_epoch(row)
            if epoch_done:
                state.epoch += 1
                state.step_in_epoch = 0
            if writer is not None:
                payload = checkpoint_payload(epoch_done=True)
                writer.save_last(payload)
                if best["metric"] == "last" or best["epoch"] == row["epoch"]:
                    writer.save_best(payload)
            if not epoch_done:
                break

    vote.close()
    # the last epoch's test pass already saw these weights unless training went on after it
    final = tested[1] if tested is not None and tested[0] == state.global_step else _eval(s, s.test_loader, cfg.tta)
    train_seconds = sum(r["seconds"] for r in history) - compile_seconds
    result = RunResult(
        out_dir=Path(cfg.out) if cfg.out else None, history=history, test=final,
        prep_seconds=s.prep_seconds, train_seconds=train_seconds, compile_seconds=compile_seconds,
        wall_seconds=time.perf_counter() - wall0, config=cfg.to_dict(), classes=s.data.classes,
    )
    if writer is not None:
        writer.finish(result, unwrap(s.model))
    debug_dump(dist_ctx, s.model, s.optimizer)
    return result


def progressive_size(sizes: list[int] | None, epoch: int, total_epochs: int) -> int | None:
    """The training image size of ``epoch`` (0-based) under progressive resizing.

    The run is cut into ``len(sizes)`` equal consecutive parts, one per size in order (fast.ai's
    DAWNBench progressive resizing, Howard 2018); ``None`` (no schedule) keeps the stored size.
    """
    if not sizes:
        return None
    part = min(len(sizes) - 1, epoch * len(sizes) // max(total_epochs, 1))
    return int(sizes[part])


def _eval(s: Setup, loader, tta: bool) -> dict:
    s.dist.sync_buffers(s.model)  # evaluate rank 0's BatchNorm statistics: the checkpoint's
    return evaluate(s.model, loader, s.data.num_classes, device=s.device, precision=s.precision,
                    tta=tta, reduce=s.dist.all_reduce_sum if s.dist.enabled else None)


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Public alias of the atomic writer used for run checkpoints."""
    atomic_save(payload, path)
