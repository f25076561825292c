"""bench time-to-accuracy: mean +- std of accuracy and split times over seeds, and the --target check."""

import json
import time
import types

import pytest
import torch

from resnetkit import benchmark
from resnetkit.benchmark import Throughput, _target_time, _time_steps, calibration_seconds, time_to_accuracy
from resnetkit.cli import main


def test_time_to_accuracy_fields_on_synthetic(tmp_path):
    res = time_to_accuracy("cpu-fast", "synthetic:256", [0, 1], str(tmp_path / "runs"), epochs=2, target=0.05,
                           check_images=32, batch_size=32, precision="fp32", image_size=16,
                           model_kwargs={"stem_width": 8, "widths": (16, 16), "residual": (True, False)})
    assert res["model"] == "resnet_cpu" and res["seeds"] == [0, 1] and len(res["runs"]) == 2
    assert res["precision"] == "fp32" and isinstance(res["channels_last"], bool) and res["cpu"]
    for name in ("top1", "train_seconds", "prep_seconds", "eval_seconds", "wall_seconds"):
        vals = [r[name] for r in res["runs"]]
        assert abs(res[f"{name}_mean"] - sum(vals) / 2) < 1e-9 and res[f"{name}_std"] >= 0
    for r in res["runs"]:
        assert 0 <= r["top1"] <= 1 and r["epochs"] == 2 and r["train_seconds"] > 0 and r["eval_seconds"] > 0
        assert r["wall_seconds"] > r["train_seconds"] + r["eval_seconds"]
        assert len(r["check_curve"]) == 2  # one held-out check per epoch
        assert r["target_epoch"] == 1 and r["target_seconds"] <= r["train_seconds"] + 1e-6  # 5% is reached at once
    assert res["target"] == 0.05 and res["check_images"] == 32 and res["target_reached"] == 2
    # the check is held out of training: 256 - 32 images are trained on, in batches of 32
    hist = [json.loads(ln) for ln in (tmp_path / "runs" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert hist[-1]["step"] == 2 * (256 - 32) // 32


def test_target_time_is_cumulative_training_seconds():
    hist = [{"epoch": 1, "seconds": 10.0, "val_acc": 0.5}, {"epoch": 2, "seconds": 12.0, "val_acc": 0.91},
            {"epoch": 3, "seconds": 11.0, "val_acc": 0.93}]
    assert _target_time(hist, 0.9) == (22.0, 2)
    assert _target_time(hist, 0.95) == (None, None)


def test_cli_time_to_accuracy_json(tmp_path, capsys):
    out = tmp_path / "tta.json"
    assert main(["bench", "time-to-accuracy", "--recipe", "cpu-fast", "--data", "synthetic:128", "--seeds", "1",
                 "--epochs", "1", "--batch-size", "16", "--max-steps", "2", "--precision", "fp32", "--target", "0.9", "--check-images", "16",
                 "--out", str(tmp_path / "runs"), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["target"] == 0.9 and res["runs"][0]["epochs"] == 1 and "machine" in res
    assert {"prep_seconds_mean", "train_seconds_mean", "eval_seconds_mean", "precision", "cpu"} <= set(res)
    text = capsys.readouterr().out
    assert "prep s" in text and "reached in" in text


def test_calibration_times_at_least_two_percent_of_the_budget():
    assert calibration_seconds(100) == 8.0 and calibration_seconds(300) == 8.0
    assert calibration_seconds(600) == 12.0 and calibration_seconds(3600) == 20.0


def test_time_steps_runs_past_the_step_count_until_min_seconds():
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = (torch.randn(8, 4), torch.randint(0, 2, (8,)))

    def slow(x, y):  # a step of about 20 ms, so 3 steps cannot make 0.15 s
        time.sleep(0.02)
        return x, y

    batches = iter(lambda: batch, None)
    times = _time_steps(model, opt, batches, torch.device("cpu"), "fp32", 1, 3, prepare=slow, min_seconds=0.15)
    assert len(times) > 3 and sum(times) >= 0.15 and len(times) < 20
    assert len(_time_steps(model, opt, batches, torch.device("cpu"), "fp32", 1, 3, prepare=slow)) == 3


def test_budget_epochs_follow_the_calibrated_rate(monkeypatch):
    seen = {}

    def fake_throughput(*args, **kwargs):
        seen.update(kwargs)
        return [Throughput("resnetkit", 256, "fp32", False, 1250.0, 204.8, mean_images_per_s=1000.0)]

    monkeypatch.setattr(benchmark, "throughput", fake_throughput)
    data = types.SimpleNamespace(train_labels=torch.zeros(50_000), image_size=32)
    epochs = benchmark.epochs_for_budget("resnet_cpu", data, 300, 256)
    # 5.52 epochs of 50,000 at the mean rate of 1,000 img/s, not the median step's 1,250
    assert epochs == pytest.approx(0.92 * 300 * 1000 / 50_000)
    assert seen["min_seconds"] == 8.0 and seen["include_ceiling"] is False and seen["steps"] >= 24
