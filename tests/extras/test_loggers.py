"""TensorBoard, CSV and MLflow mirror metrics.jsonl, and a resumed run logs every step once."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch

import resnetkit

if not os.environ.get("CI"):  # CI installs resnetkit[test], which has both; there a missing one must fail
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")

RUN = dict(model="resnet20", data="synthetic:128", image_size=16, batch_size=32, epochs=3, seed=1, device="cpu",
           precision="fp32", model_kwargs={"width_mult": 0.25}, log=["tensorboard", "csv", "mlflow"],
           log_steps=True, ema=0.9)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("loggers") / "run"
        resnetkit.train(**RUN, out=str(out), stop_after_steps=6)  # stops mid-epoch 2 (4 steps an epoch)
        resnetkit.resume(out)
    finally:
        torch.set_num_threads(threads)
    return out


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_events_equal_metrics_jsonl_and_each_step_is_logged_once(run_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    rows = _rows(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for key in ("train_loss", "test_acc", "ema_test_acc", "lr", "images_per_s"):
        events = acc.Scalars(f"epoch/{key}")
        assert [e.step for e in events] == [r["step"] for r in rows]
        assert [e.value for e in events] == pytest.approx([r[key] for r in rows], rel=1e-6)
    steps = acc.Scalars("train/step_loss")
    assert [e.step for e in steps] == list(range(1, 13))  # every step exactly once across the resume
    logged = [json.loads(line)["loss"] for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert [e.value for e in steps] == pytest.approx(logged, rel=1e-6)
    assert acc.Tags()["images"] == ["test/confusion"]


def test_csv_rows_equal_metrics_jsonl(run_dir: Path) -> None:
    with open(run_dir / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    rows = _rows(run_dir)
    assert len(table) == len(rows) == 3
    for got, want in zip(table, rows):
        assert {k: float(got[k]) for k in want} == pytest.approx({k: float(v) for k, v in want.items()}, rel=1e-12)


def test_mlflow_run_has_the_metrics_params_and_checkpoint(run_dir: Path) -> None:
    from mlflow.tracking import MlflowClient

    state = json.loads((run_dir / "mlflow.json").read_text())
    client = MlflowClient(tracking_uri=state["tracking_uri"])
    assert state["tracking_uri"] == f"sqlite:///{run_dir.parent.resolve() / 'mlflow.db'}"
    run = client.get_run(state["run_id"])
    assert Path(run.info.artifact_uri.removeprefix("file://")).parent.parent == run_dir.parent.resolve() / "mlruns"
    assert run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.2" and run.data.params["ema"] == "0.9"
    rows = _rows(run_dir)
    for key in ("train_loss", "val_acc" if "val_acc" in rows[0] else "test_acc", "ema_test_acc"):
        history = sorted(client.get_metric_history(state["run_id"], key), key=lambda m: m.step)
        assert [m.step for m in history] == [r["step"] for r in rows]  # once each, across the resume
        assert [m.value for m in history] == pytest.approx([r[key] for r in rows], rel=1e-12)
    names = {a.path for a in client.list_artifacts(state["run_id"])}
    assert {"last.pt", "best.pt", "metrics.jsonl", "config.json"} <= names


def test_a_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from resnetkit.training import loggers

    real = importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda n, *a: None if n == "mlflow" else real(n, *a))
    with pytest.raises(resnetkit.UserError, match=r'pip install "resnetkit\[mlflow\]"'):
        resnetkit.train(**{**RUN, "log": ["csv", "mlflow"]}, out="never-made")
    assert not Path("never-made").exists()
