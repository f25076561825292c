"""bench time-to-accuracy: mean +- std of accuracy and split times over seeds, and the --target check."""

import json

import pytest

from resnetkit.benchmark import _target_time, time_to_accuracy
from resnetkit.cli import main
from resnetkit.errors import UserError

TINY = dict(batch_size=32, precision="fp32", image_size=16,
            model_kwargs={"stem_width": 8, "widths": (16, 16), "residual": (True, False)})


def test_time_to_accuracy_fields_on_synthetic(tmp_path):
    res = time_to_accuracy("cpu-fast", "synthetic:256", [0, 1], str(tmp_path / "runs"), epochs=2, target=0.05,
                           check_images=32, **TINY)
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
                 "--activation", "relu", "--stem-epochs", "7", "--out", str(tmp_path / "runs"), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    cfg = json.loads((tmp_path / "runs" / "seed0" / "config.json").read_text())["config"]
    assert cfg["model_kwargs"] == {"whiten": True, "activation": "relu"}  # over the recipe's options, not instead
    assert cfg["stem_epochs"] == 7 and (res["model"], res["batch_size"]) == ("resnet_cpu", "16")
    # 112 training images (16 held out for the check) in batches of 16: 7 steps an epoch, 2 of them run
    assert res["target"] == 0.9 and res["runs"][0]["epochs"] == pytest.approx(2 / 7) and "machine" in res
    assert {"prep_seconds_mean", "train_seconds_mean", "eval_seconds_mean", "precision", "cpu"} <= set(res)
    text = capsys.readouterr().out
    assert "prep s" in text and "reached in" in text


def test_a_budget_in_seconds_trains_each_seed_for_that_long(tmp_path):
    """No calibration: each run's schedule runs on the clock, so the seconds are met on any machine."""
    res = time_to_accuracy("cpu-fast", "synthetic:96", [0, 1], str(tmp_path / "runs"), budget_seconds=1.0, **TINY)
    assert res["budget_seconds"] == 1.0
    for r in res["runs"]:
        assert 0.95 <= r["train_seconds"] <= 2.0
        assert r["epochs"] > 0 and r["epochs"] * 3 == pytest.approx(round(r["epochs"] * 3))  # steps / 3 per epoch
    # each seed trains as many epochs as its seconds allowed: the summary is their mean, not seed 0's
    epochs = [r["epochs"] for r in res["runs"]]
    assert res["epochs"] == res["epochs_mean"] == pytest.approx(sum(epochs) / 2)
    assert res["epochs_std"] == pytest.approx(abs(epochs[0] - epochs[1]) / 2 ** 0.5)
    cfg = json.loads((tmp_path / "runs" / "seed1" / "config.json").read_text())["config"]
    assert cfg["time_budget"] == 1.0 and cfg["seed"] == 1


@pytest.mark.parametrize("budget", [0.0, -5.0, float("inf")])
def test_a_budget_must_be_positive_seconds(tmp_path, budget):
    with pytest.raises(UserError, match="budget-seconds"):
        time_to_accuracy("cpu-fast", "synthetic:96", [0], str(tmp_path / "runs"), budget_seconds=budget, **TINY)
