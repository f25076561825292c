"""Optional experiment loggers beside ``metrics.jsonl``: TensorBoard, CSV and MLflow.

``metrics.jsonl`` stays the record; these mirror it. Every logger uses the global step count as
its x axis (a step's loss at ``step + 1``, the number of steps done; an epoch's row at its
``step``), so a resumed run continues the same curves without repeating a step:

- TensorBoard (``torch.utils.tensorboard``): a resumed run opens the same ``tb/`` directory with
  ``purge_step = checkpoint step + 1``, which tells TensorBoard's reader to drop whatever the
  killed process logged after the checkpoint. Scalars per step (``train/step_loss``) and per epoch
  (``epoch/*``, which include the learning rate and images/s), the test confusion matrix as an
  image and the hyper-parameters at the end.
- CSV: ``metrics.csv``, one row per epoch, rewritten from the history at each epoch (so a resumed
  run holds exactly the checkpoint's rows plus the new ones).
- MLflow: unless a tracking URI is given, a local store in the directory holding the run
  directory: ``mlflow.db`` (SQLite) for runs and metrics and ``mlruns/`` for artifacts. (MLflow 3
  put the plain ``./mlruns`` file store into maintenance mode and refuses it unless an environment
  variable opts back in; SQLite is the local store it recommends and MLflow 2.x reads too.) The
  run id and the last step logged are kept in ``RUN_DIR/mlflow.json``, so a resume logs into the
  same run and skips rows already there. Params, epoch metrics, and at the end the run directory's
  files (checkpoints included) as artifacts.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import write_text

log = logging.getLogger(__name__)

EXTRAS = {"tensorboard": ("tensorboard", "TensorBoard"), "mlflow": ("mlflow", "MLflow")}


def check_installed(names: list[str]) -> None:
    """Raise one sentence naming the extra to install when an asked-for logger's package is missing."""
    for name in names:
        if name in EXTRAS and importlib.util.find_spec(EXTRAS[name][0]) is None:
            raise UserError(f"--log {name} needs the {EXTRAS[name][1]} package: pip install \"resnetkit[{name}]\"")


def _scalars(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if k not in ("epoch", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _flat_params(config: dict) -> dict[str, Any]:
    """Config values as TensorBoard/MLflow accept them (numbers, strings, bools)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        out[k] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
    return out


class TensorBoardLogger:
    def __init__(self, out: Path, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tb"), purge_step=None if resume_step is None else resume_step + 1)

    def steps(self, losses: list[float], first_step: int) -> None:
        for i, v in enumerate(losses):
            self.writer.add_scalar("train/step_loss", v, first_step + i + 1)

    def epoch(self, row: dict, history: list[dict]) -> None:
        for k, v in _scalars(row).items():
            self.writer.add_scalar(f"epoch/{k}", v, row["step"])
        self.writer.flush()

    def finish(self, config: dict, test: dict, classes: list[str], out: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        from ..plots import plot_confusion

        if "confusion" in test:
            with tempfile.TemporaryDirectory() as tmp:
                png = plot_confusion(test["confusion"], classes, Path(tmp) / "confusion.png")
                image = np.asarray(Image.open(png).convert("RGB"))
            self.writer.add_image("test/confusion", image, step, dataformats="HWC")
        metrics = {f"hparam/test_{k}": float(test[k]) for k in ("top1", "top5", "loss") if k in test}
        self.writer.add_hparams(_flat_params(config), metrics, run_name="hparams", global_step=step)
        self.writer.close()


class CsvLogger:
    def __init__(self, out: Path) -> None:
        self.path = out / "metrics.csv"

    def steps(self, losses: list[float], first_step: int) -> None:
        pass

    def epoch(self, row: dict, history: list[dict]) -> None:
        fields: list[str] = []
        for r in history:
            fields += [k for k in r if k not in fields]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(history)
        write_text(self.path, buf.getvalue())

    def finish(self, config: dict, test: dict, classes: list[str], out: Path, step: int) -> None:
        pass


class MlflowLogger:
    def __init__(self, out: Path, config: dict, uri: str | None, resuming: bool) -> None:
        from mlflow.tracking import MlflowClient

        self.state_path = out / "mlflow.json"
        saved = json.loads(self.state_path.read_text()) if resuming and self.state_path.exists() else None
        root = out.resolve().parent
        self.uri = uri or (saved or {}).get("tracking_uri") or f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        if saved is not None:
            self.run_id, self.logged = saved["run_id"], int(saved["logged_step"])
        else:
            exp = self.client.get_experiment_by_name("resnetkit")
            artifacts = None if uri else (root / "mlruns").as_uri()
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
                "resnetkit", artifact_location=artifacts)
            self.run_id = self.client.create_run(exp_id, run_name=out.name).info.run_id
            self.logged = 0
            for k, v in _flat_params(config).items():
                self.client.log_param(self.run_id, k, str(v)[:500])
            self._save_state()

    def _save_state(self) -> None:
        write_text(self.state_path, json.dumps({"tracking_uri": self.uri, "run_id": self.run_id,
                                                       "logged_step": self.logged}) + "\n")

    def steps(self, losses: list[float], first_step: int) -> None:
        pass

    def epoch(self, row: dict, history: list[dict]) -> None:
        if row["step"] <= self.logged:  # logged before a kill that came before the checkpoint
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, row["step"]) for k, v in _scalars(row).items()])
        self.logged = int(row["step"])
        self._save_state()

    def finish(self, config: dict, test: dict, classes: list[str], out: Path, step: int) -> None:
        for k in ("top1", "top5", "loss"):
            if k in test:
                self.client.log_metric(self.run_id, f"final_test_{k}", float(test[k]), step=step)
        for f in sorted(out.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                self.client.log_artifact(self.run_id, str(f))
        self.client.set_terminated(self.run_id, "FINISHED")


class Loggers:
    """The loggers a run asked for, fed by the run writer on rank 0."""

    def __init__(self, names: list[str], out: Path, config: dict, resume_step: int | None,
                 mlflow_uri: str | None = None) -> None:
        check_installed(names)
        self.out = out
        self.sinks: list[Any] = []
        if "tensorboard" in names:
            self.sinks.append(TensorBoardLogger(out, resume_step))
        if "csv" in names:
            self.sinks.append(CsvLogger(out))
        if "mlflow" in names:
            self.sinks.append(MlflowLogger(out, config, mlflow_uri, resume_step is not None))
        self.config = config

    def steps(self, losses: list[float], first_step: int) -> None:
        for s in self.sinks:
            s.steps(losses, first_step)

    def epoch(self, row: dict, history: list[dict]) -> None:
        for s in self.sinks:
            s.epoch(row, history)

    def finish(self, test: dict, classes: list[str], step: int) -> None:
        for s in self.sinks:
            s.finish(self.config, test, classes, self.out, step)
