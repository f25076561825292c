"""Which options a resumed run may take: changeable ones, and ones that must equal the checkpoint's.

A resume takes its configuration from the checkpoint. The options in :data:`RESUME_OVERRIDABLE`
may change; any other option given must equal the saved value, so re-running the original
command line with ``--resume RUN_DIR`` appended works (as with timm's and torchvision's training
scripts), while a changed value is refused in one sentence naming each flag, the saved value and
the given one.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

RESUME_OVERRIDABLE = ("epochs", "device", "max_steps", "stop_after_steps", "log_steps", "checkpoint_every",
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
    differing = []
    for key, value in given.items():
        if value is None or key in RESUME_OVERRIDABLE or key in IGNORED:
            continue
        old = saved.get(key)
        if not _same(key, old, value, run_dir):
            differing.append(f"--{key.replace('_', '-')} is {old!r} in the checkpoint but {value!r} was given")
    if differing:
        raise UserError("cannot resume with settings that differ from the checkpoint's (" + "; ".join(differing)
                        + "); drop those flags or start a new run")
    return {k: v for k, v in given.items() if v is not None and k in RESUME_OVERRIDABLE}
