"""How a run continues: from ``--resume``, after an elastic restart, or with ``--auto-resume``.

Which options a resumed run may take: changeable ones, and ones that must equal the checkpoint's.

A resume takes its configuration from the checkpoint. The options in :data:`RESUME_OVERRIDABLE`
may change; any other option given must equal the saved value, so re-running the original
command line with ``--resume RUN_DIR`` appended works (as with timm's and torchvision's training
scripts), while a changed value is refused in one sentence naming each flag, the saved value and
the given one.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..checkpoint import peek
from ..data.synthetic import parse_synthetic
from ..errors import UserError
from .config import TrainConfig, validate

RESUME_OVERRIDABLE = ("epochs", "time_budget", "device", "max_steps", "stop_after_steps", "log_steps", "checkpoint_every",
                      "eval_every", "log", "tensorboard", "mlflow_uri")
IGNORED = ("overwrite",)  # part of the original command line; meaningless when continuing


def _same(key: str, saved: object, given: object, run_dir: Path) -> bool:
    if key == "out":
        return Path(str(given)).resolve() == run_dir.resolve()
    if key == "data" and saved is not None and Path(str(given)).exists() and Path(str(saved)).exists():
        return Path(str(given)).resolve() == Path(str(saved)).resolve()
    if isinstance(saved, (int, float)) and isinstance(given, (int, float)) and not isinstance(given, bool):
        return float(saved) == float(given)
    if key == "model_kwargs" and isinstance(saved, dict) and isinstance(given, dict):
        return all(k in saved and saved[k] == v for k, v in given.items())
    return saved == given


def resume_changes(saved: dict, given: dict, run_dir: Path) -> dict:
    """The options of ``given`` (``None`` values dropped) that the resume applies.

    ``saved`` is the checkpoint's configuration; ``--out`` must name the run being resumed.
    """
    differing, moved = [], {}
    defaults = TrainConfig().to_dict()  # what a checkpoint written before an option existed ran with
    for key, value in given.items():
        if value is None or key in RESUME_OVERRIDABLE or key in IGNORED:
            continue
        old = saved.get(key, defaults.get(key))
        if key == "data" and _moved(old, value):
            moved["data"] = os.path.abspath(os.path.expanduser(str(value)))
            continue
        if not _same(key, old, value, run_dir):
            differing.append(f"--{key.replace('_', '-')} is {old!r} in the checkpoint but {value!r} was given")
    if differing:
        raise UserError("cannot resume with settings that differ from the checkpoint's (" + "; ".join(differing)
                        + "); drop those flags or start a new run")
    return {**{k: v for k, v in given.items() if v is not None and k in RESUME_OVERRIDABLE}, **moved}


def _moved(saved: object, given: object) -> bool:
    """Whether the run's data path is gone and ``given`` names data that exists: the data was moved."""
    if saved is None or parse_synthetic(str(saved)) is not None:
        return False
    return not Path(str(saved)).expanduser().exists() and Path(str(given)).expanduser().exists()


def resume_config(run: str | Path, overrides: dict | None) -> tuple[TrainConfig, dict]:
    """The configuration and checkpoint to continue ``run`` (a run directory or its ``last.pt``).

    The configuration comes from the checkpoint; ``overrides`` may change the keys in
    :data:`RESUME_OVERRIDABLE`, others must equal the saved values (``None`` values are ignored).
    """
    last = Path(run) / "last.pt" if Path(run).is_dir() else Path(run)
    ckpt = peek(last)
    extra = resume_changes(ckpt["config"], dict(overrides or {}), last.parent)
    # a stop point is where the earlier part ended, never inherited by the continuation
    cfg = TrainConfig.from_dict({**ckpt["config"], "stop_after_steps": None, **extra})
    cfg.out = str(last.parent)
    if not cfg.download and parse_synthetic(cfg.data) is None and not Path(cfg.data).expanduser().exists():
        raise UserError(f"this run's data {cfg.data} does not exist (moved, or a relative path from another "
                        f"directory); resume with <<data>> set to where it is now")
    return cfg, ckpt



RESTART_ENV = "TORCHELASTIC_RESTART_COUNT"


def restarted_by_torchrun() -> bool:
    """Whether torchrun restarted this worker group after a failure (elastic ``--max-restarts``)."""
    raw = os.environ.get(RESTART_ENV, "")
    return raw.isdigit() and int(raw) > 0


def continue_in_out(cfg: TrainConfig) -> tuple[TrainConfig, dict | None]:
    """Continue the run in ``cfg.out`` from its ``last.pt`` if it has one, else start it there.

    Used after an elastic restart and with ``--auto-resume`` (a requeued job): the run directory
    says where the run stands. A ``last.pt`` written with other settings is refused; settings a
    resume may change (:data:`RESUME_OVERRIDABLE`) come from ``cfg``. With no ``last.pt`` there
    is nothing to keep (it is saved before any other run file that a finished epoch writes), so
    the run starts anew over what an earlier try left.
    """
    if not cfg.out:
        raise UserError("--auto-resume needs --out: the run directory to continue or start")
    last = Path(cfg.out) / "last.pt"
    if not last.is_file():
        cfg.overwrite = True
        return cfg, None
    validate(cfg)
    resumed, ckpt = resume_config(last, {k: getattr(cfg, k) for k in RESUME_OVERRIDABLE})
    mine, saved = cfg.to_dict(), TrainConfig.from_dict(ckpt["config"]).to_dict()
    free = (*RESUME_OVERRIDABLE, "out", "overwrite", "adapt_batch")
    if mine.get("adapt_batch"):  # the saved batch and lr are the recipe's, adapted once to the data's size
        free = (*free, "batch_size", "lr")
    differ = [k for k in mine if k not in free and mine[k] != saved.get(k)]
    if differ:
        raise UserError(f"{cfg.out} holds a run with other settings ({', '.join(differ[:3])}); continue it with "
                        f"--resume {cfg.out} or choose another --out")
    return resumed, ckpt


def spent_seconds(ckpt: dict) -> float:
    """Seconds of training steps up to ``ckpt`` (the time budget's clock); older checkpoints: the epochs' sum."""
    return float(ckpt.get("train_clock", sum(float(r.get("seconds", 0.0)) for r in ckpt.get("history", []))))


def finished(ckpt: dict, cfg: TrainConfig) -> bool:
    """Whether the checkpoint is the end of its run (every epoch done, no stop point pending)."""
    history = ckpt.get("history", [])
    if cfg.time_budget is not None:  # a clock-driven run ends when its budget is spent, at any epoch
        return bool(ckpt.get("epoch_done")) and spent_seconds(ckpt) >= cfg.time_budget and cfg.max_steps is None
    whole = int(-(-cfg.epochs // 1))
    return bool(ckpt.get("epoch_done")) and int(ckpt.get("epoch", 0)) >= whole and len(history) >= whole \
        and cfg.max_steps is None
