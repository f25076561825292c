"""The run directory: refusing to clobber other runs, and writing what a run reports.

Files: ``config.json``, ``metrics.jsonl``, ``steps.jsonl`` (optional), ``last.pt``, ``best.pt``,
``curves.png``, ``result.json``; TensorBoard events under ``tb/`` when asked for and installed.
``curves.png`` is redrawn after an epoch at most every :data:`CURVES_EVERY_S` seconds (drawing
takes about half a second, which runs of many short epochs would otherwise spend mostly
plotting) and always when the run finishes.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .. import io, plots
from ..checkpoint import atomic_save, versions
from ..data.cifar import find_cifar
from ..errors import UserError
from .config import TrainConfig
from .loggers import Loggers
from .setup import Setup

log = logging.getLogger(__name__)

RUN_FILES = ("config.json", "last.pt", "metrics.jsonl")
CURVES_EVERY_S = 10.0  # the least wall time between two drawings of curves.png


def default_out(cfg: TrainConfig) -> str:
    return str(Path("runs") / f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}")


def prepare(cfg: TrainConfig, resuming: bool) -> Path:
    """Create (or check) the output directory; never overwrite another run silently."""
    if not cfg.out:
        cfg.out = default_out(cfg)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if not resuming:
        _refuse_inside_image_folder(out, cfg)
    if not resuming and out.is_dir() and any((out / f).exists() for f in RUN_FILES) and not cfg.overwrite:
        if not (out / "last.pt").exists():  # nothing to resume: say so rather than send the user to --resume
            raise UserError(f"{out} holds a run that stopped before saving any checkpoint; pass <<overwrite>> to "
                            f"start it again, or choose another <<out>>")
        raise UserError(f"{out} already holds a run; pass --resume {out} to continue it, <<overwrite>> to "
                        f"replace it, or choose another <<out>>")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as e:
        raise UserError(f"cannot write to the output directory {out}: {e.strerror or e}") from None
    if resuming or cfg.overwrite:  # temp files of a writer that was killed mid-write
        for stale in out.glob(".*.tmp"):
            log.info("removing %s, left by an interrupted write", stale)
            stale.unlink(missing_ok=True)
    return out


def _refuse_inside_image_folder(out: Path, cfg: TrainConfig) -> None:
    """A run directory inside the image folder it trains on would put its PNGs among the images."""
    data = Path(cfg.data).expanduser() if cfg.data and cfg.dataset in (None, "folder") else None
    if data is None or not data.is_dir() or find_cifar(data) is not None:
        return
    folder, target = data.resolve(), out.expanduser().resolve()
    if target == folder or folder in target.parents:
        raise UserError(f"--out {out} is inside the image folder {cfg.data} that the run trains on, where its files "
                        f"would mix with the images; choose an <<out>> outside it")


def logger_names(cfg: TrainConfig) -> list[str]:
    """The optional loggers of ``cfg`` (``--tensorboard`` is ``--log tensorboard``)."""
    return list(dict.fromkeys([*cfg.log, *(["tensorboard"] if cfg.tensorboard else [])]))


class RunWriter:
    """Writes a run's files (rank 0 only)."""

    def __init__(self, out: Path, cfg: TrainConfig, setup: Setup, ckpt: dict | None) -> None:
        self.out = out
        self.cfg = cfg
        config = {"config": cfg.to_dict(), "versions": versions(), "device": str(setup.device),
                  "precision": setup.precision, "channels_last": setup.channels_last,
                  "world_size": setup.dist.world_size, "classes": setup.data.classes,
                  "mean": list(setup.mean), "std": list(setup.std), "image_size": setup.data.image_size,
                  "data_fingerprint": setup.data.fingerprint, "prep_seconds": setup.prep_seconds,
                  "skipped_images": len(setup.data.skipped)}
        if cfg.test_split is not None:  # carved from train/: what eval needs to find the same images
            config["test_split"] = {"fraction": cfg.test_split, "seed": cfg.test_split_seed,
                                    "images": len(setup.data.test_labels)}
        io.write_json(out / "config.json", config)
        history = ckpt.get("history", []) if ckpt else []
        # metrics.jsonl restarts from the checkpoint's history: rows after it never happened
        self._rewrite_lines(out / "metrics.jsonl", history)
        if cfg.log_steps:
            steps = self._read_lines(out / "steps.jsonl") if ckpt else []
            self._rewrite_lines(out / "steps.jsonl", [r for r in steps if r["step"] < (ckpt or {}).get("global_step", 0)])
        self.history = list(history)
        self._curves_at: float | None = None  # perf_counter of the last drawing of curves.png
        self._curves_behind = False  # rows written since then
        self.loggers = Loggers(logger_names(cfg), out, cfg.to_dict(), ckpt["global_step"] if ckpt else None,
                               cfg.mlflow_uri)

    @staticmethod
    def _read_lines(path: Path) -> list[dict]:
        """The JSON rows of ``path``; a line torn by a killed process is dropped (resume rewrites it)."""
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("ignoring a torn line in %s", path)
        return rows

    @staticmethod
    def _rewrite_lines(path: Path, rows: list[dict]) -> None:
        io.write_text(path, "".join(json.dumps(io.to_json(r)) + "\n" for r in rows))

    def _append(self, name: str, rows: list[dict]) -> None:
        if rows:
            try:
                with open(self.out / name, "a") as f:
                    f.write("".join(json.dumps(io.to_json(r)) + "\n" for r in rows))
            except OSError as e:
                raise UserError(f"could not write {self.out / name}: {e.strerror or e}") from None

    def progress_bar(self, state, steps_per_epoch: int, loader):
        # a time-budget run has no epoch count to show
        return _EpochBar(state, steps_per_epoch, None if self.cfg.time_budget else self.cfg.epochs, loader)

    def log_steps(self, losses: list[float], first_step: int) -> None:
        if self.cfg.log_steps:
            self._append("steps.jsonl", [{"step": first_step + i, "loss": v} for i, v in enumerate(losses)])
        self.loggers.steps(losses, first_step)

    def end_epoch(self, row: dict) -> None:
        self._append("metrics.jsonl", [row])
        parts = [f"epoch {row['epoch']}", f"loss {row['train_loss']:.4f}", f"acc {row['train_acc']:.2%}"]
        if "val_acc" in row:
            parts.append(f"val {row['val_acc']:.2%}")
        if "test_acc" in row:
            parts.append(f"test {row['test_acc']:.2%}")
        parts += [f"lr {row['lr']:.4g}", f"{row['images_per_s']:.0f} img/s", f"{row['seconds']:.1f}s"]
        log.info(" | ".join(parts))
        self.history.append(row)
        self.loggers.epoch(row, self.history)
        self._curves_behind = True
        if self._curves_at is None or time.perf_counter() - self._curves_at >= CURVES_EVERY_S:
            self.draw_curves()

    def draw_curves(self) -> None:
        """Draw ``curves.png`` from ``metrics.jsonl`` (a failure is a warning: it never stops training)."""
        self._curves_at, self._curves_behind = time.perf_counter(), False
        try:
            plots.plot_curves(self._read_lines(self.out / "metrics.jsonl"), self.out / "curves.png")
        except Exception as e:
            log.warning("could not draw curves.png: %s", e)

    def save_last(self, payload: dict) -> None:
        atomic_save(payload, self.out / "last.pt")

    def save_best(self, payload: dict) -> None:
        atomic_save(payload, self.out / "best.pt")

    def finish(self, result: Any) -> None:
        """Write ``result.json`` from a finished run's :class:`~resnetkit.training.trainer.RunResult`."""
        summary = {"test": {k: v for k, v in result.test.items() if k != "confusion"},
                   "prep_seconds": result.prep_seconds, "train_seconds": result.train_seconds,
                   "compile_seconds": result.compile_seconds, "wall_seconds": result.wall_seconds,
                   "epochs": len(result.history), "epochs_trained": result.epochs_trained}
        io.write_json(self.out / "result.json", summary)
        if self._curves_behind:
            self.draw_curves()
        step = self.history[-1]["step"] if self.history else 0
        self.loggers.finish(result.test_ema or result.test, list(result.classes), step)


class _EpochBar:
    """A tqdm bar over one epoch's steps that shows loss, accuracy and images/s."""

    def __init__(self, state, total: int, epochs: float | None, loader) -> None:
        self.loader = loader
        desc = f"epoch {state.epoch + 1}" + (f"/{epochs:g}" if epochs else "")
        self.bar = tqdm(total=total, initial=state.step_in_epoch, desc=desc,
                        unit="step", file=sys.stderr, dynamic_ncols=True, leave=False)
        self.t0 = time.perf_counter()
        self.images = 0

    def __iter__(self):
        for x, y in self.loader:
            yield x, y
            self.images += y.shape[0]
            self.bar.update(1)

    def show(self, loss: float, acc: float) -> None:
        rate = self.images / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.1%}", img_s=f"{rate:.0f}", refresh=False)

    def close(self) -> None:
        self.bar.close()
