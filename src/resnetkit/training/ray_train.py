"""Run resnetkit's trainer under Ray Train: ``ray.train.torch.TorchTrainer`` on N workers.

A thin adapter, not a second loop: every Ray worker runs the same :class:`Trainer` as
``resnetkit train`` under torchrun. Ray creates the process group (gloo on CPU, NCCL on GPU),
which resnetkit adopts (:func:`~resnetkit.training.distributed.init_from_env`) and leaves to Ray
at the end. At every point where the trainer saves ``last.pt`` (each ``checkpoint_every`` steps
and each epoch end) every worker calls ``ray.train.report`` with the same metrics, and rank 0
attaches a copy of ``last.pt`` as the Ray checkpoint. After a worker failure Ray restarts the
group (``FailureConfig(max_failures=...)``) and each worker resumes from the latest reported
checkpoint, on any number of workers whose count divides the global batch. Ray registers a
reported checkpoint only once its controller has collected every worker's report (it polls them
every few seconds); a worker lost before that leaves Ray with no checkpoint, and the restarted
group then continues from the run directory's ``last.pt`` (rank 0 saves it before reporting it).

Ray is optional (``pip install "resnetkit[ray]"``); it is imported only when a run starts.
Reference: Ray Train's ``TorchTrainer``, ``ray.train.report`` and ``ray.train.get_checkpoint``
(docs.ray.io, Ray 2.9 and later).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from . import rundir
from .config import TrainConfig
from .resume import continue_in_out, resume_config
from .trainer import Trainer, train_in_group

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"
#: Settings a resumed worker group takes from the configuration rather than from the checkpoint.
RAY_OVERRIDES = ("epochs", "device", "max_steps", "log_steps", "checkpoint_every", "eval_every")


@dataclass
class RayRunResult:
    """What a finished Ray run reports: rank 0's last metrics and Ray's latest checkpoint."""

    metrics: dict
    checkpoint: Path | None  # a Ray checkpoint directory holding last.pt
    out_dir: Path


def _ray() -> Any:
    try:  # deferred: Ray is an optional dependency (resnetkit[ray]) and slow to import
        import ray.train
        import ray.train.torch  # noqa: F401  (TorchTrainer, get_device)
    except ImportError:
        raise UserError('Ray Train is not installed; install it with pip install "resnetkit[ray]"') from None
    return ray


def report_to_ray(trainer: Trainer) -> None:
    """The trainer's save hook: report metrics on every worker; rank 0 attaches ``last.pt``.

    Every worker reaches the trainer's save points at the same step (they vote on stopping and
    count steps alike), so ``ray.train.report``, a barrier across workers, is called the same
    number of times on each.
    """
    ray = _ray()
    st = trainer.state
    metrics: dict[str, Any] = {"epoch": st.epoch, "step_in_epoch": st.step_in_epoch, "global_step": st.global_step,
                               "world_size": trainer.dist.world_size, "resumed_from": trainer.resumed_from}
    if trainer.history:
        row = trainer.history[-1]
        metrics.update({k: v for k, v in row.items() if isinstance(v, (int, float)) and k not in metrics})
    if trainer.writer is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="resnetkit-ray-") as tmp:
        shutil.copy2(trainer.writer.out / CHECKPOINT_FILE, Path(tmp) / CHECKPOINT_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def start_point(cfg: TrainConfig, ray_last: Path | None) -> tuple[TrainConfig, dict | None]:
    """Where a Ray worker group starts: the configuration to train and the checkpoint to continue.

    ``ray_last`` is the ``last.pt`` of Ray's latest checkpoint (``None``: Ray has none). Without
    one, a run already in ``cfg.out`` (written by an earlier try of this Ray run, whose failure
    came before Ray registered any checkpoint) continues from its ``last.pt``, and otherwise the
    run starts there; :func:`train_on_ray` refuses an ``out`` that held another run beforehand.
    """
    if ray_last is None:
        return continue_in_out(cfg)
    resumed, ckpt = resume_config(ray_last, {k: getattr(cfg, k) for k in RAY_OVERRIDES})
    resumed.out = cfg.out  # the run directory stays the one this Ray run writes
    return resumed, ckpt


def _worker_loop(loop_config: dict) -> None:
    """What each Ray worker runs: resume from Ray's latest checkpoint if any, then train."""
    ray = _ray()
    cfg = TrainConfig.from_dict(loop_config["config"])
    device = ray.train.torch.get_device()
    cfg.device = str(device) if device.type == "cuda" else "cpu"
    saved = ray.train.get_checkpoint()
    if saved is None:
        cfg, ckpt = start_point(cfg, None)
    else:
        with saved.as_directory() as where:
            cfg, ckpt = start_point(cfg, Path(where) / CHECKPOINT_FILE)
    if ckpt is not None:
        log.info("resuming the Ray run from %s at step %d", "Ray's checkpoint" if saved else cfg.out,
                 ckpt["global_step"])
    train_in_group(cfg, ckpt, on_save=report_to_ray)


def _claim_out(cfg: TrainConfig) -> None:
    """Refuse an ``out`` that holds another run (unless ``overwrite``), before any worker starts.

    Workers continue a ``last.pt`` they find there (see :func:`start_point`), so with
    ``overwrite`` the old one goes now.
    """
    out = Path(cfg.out)
    if not any((out / f).exists() for f in rundir.RUN_FILES):
        return
    if not cfg.overwrite:
        raise UserError(f"{out} already holds a run; pass overwrite=True to replace it or choose another out")
    log.info("overwrite: removing %s", out / CHECKPOINT_FILE)
    (out / CHECKPOINT_FILE).unlink(missing_ok=True)


def train_on_ray(cfg: TrainConfig, *, num_workers: int = 2, use_gpu: bool = False, max_failures: int = 1,
                 storage_path: str | Path | None = None, name: str = "resnetkit",
                 cpus_per_worker: float = 1.0) -> RayRunResult:
    """Train ``cfg`` with ``num_workers`` Ray Train workers; returns when the run ends.

    Connects to the Ray cluster already initialised (``ray.init``), or starts a local one.
    ``cfg.batch_size`` is the global batch, split evenly over the workers. ``cfg.out`` (default:
    ``STORAGE/NAME/run``) is rank 0's run directory, on a file system every node can reach when
    the cluster has several nodes. Ray keeps its checkpoints under ``storage_path/name``
    (default ``~/ray_results``) and, after a worker failure, restarts the group up to
    ``max_failures`` times from the latest one.
    """
    ray = _ray()
    if cfg.batch_size % num_workers:
        raise UserError(f"the global batch of {cfg.batch_size} images cannot be split evenly over "
                        f"{num_workers} workers; choose a number of workers that divides it")
    storage = Path(storage_path or Path.home() / "ray_results").expanduser().resolve()
    cfg.out = str(Path(cfg.out).resolve()) if cfg.out else str(storage / name / "run")
    _claim_out(cfg)
    trainer = ray.train.torch.TorchTrainer(
        _worker_loop,
        train_loop_config={"config": cfg.to_dict()},
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        log.error("Ray Train run failed:\n%s", e)  # the workers' tracebacks, for the log
        raise UserError(f"the Ray Train run failed after {max_failures} restart(s) at most: {lines[-1]}") from None
    where = Path(result.checkpoint.path) if result.checkpoint is not None else None
    return RayRunResult(dict(result.metrics or {}), where, Path(cfg.out))
