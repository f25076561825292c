"""--time-budget: the lr schedule runs on the clock, training stops when the budget is spent, resume goes on."""

from __future__ import annotations

import json

import pytest
import torch

from resnetkit.cli import main
from resnetkit.cli.train import _duration
from resnetkit.errors import UserError
from resnetkit.training.config import resolve_config
from resnetkit.training.schedule import lr_factor
from resnetkit.training.trainer import fit

# bn_recalibration=0: the budget's steps run to its end (the pass after them has its own tests, which keep time for it)
TINY = dict(data="synthetic:96", batch_size=32, precision="fp32", image_size=16, eval_every=0, bn_recalibration=0,
            model_kwargs={"stem_width": 8, "widths": (16, 16), "residual": (True, False)})


def test_progress_drives_the_decay_and_the_warmup_still_counts_steps():
    assert lr_factor(500, 10, 0, "linear", progress=0.25) == pytest.approx(0.75)  # the step count is ignored
    assert lr_factor(3, 10, 0, "cosine", progress=0.5) == pytest.approx(0.5)
    assert lr_factor(3, 10, 0, "cosine", progress=1.7) == pytest.approx(0.0, abs=1e-12)
    assert [lr_factor(0, 1, 0, "step", progress=p) for p in (0.49, 0.5, 0.74, 0.75)] == [1.0, 0.1, 0.1, 0.01]
    assert lr_factor(1, 1, 4, "linear", progress=0.1) == pytest.approx(0.5)  # warmup: 2 of 4 steps
    # a warmup longer than the budget still ends at zero: the lower of the ramp and the decay
    assert lr_factor(2, 1, 100, "linear", progress=0.99) == pytest.approx(0.01)
    assert lr_factor(7, 1, 0, "constant", progress=0.9) == 1.0


@pytest.mark.parametrize("text, seconds", [("300", 300.0), ("90s", 90.0), ("5m", 300.0), ("2min", 120.0),
                                           ("1.5h", 5400.0), (" 0.5 ", 0.5)])
def test_duration_units(text, seconds):
    assert _duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "-5", "5d", "m", "inf", "nan", "five"])
def test_duration_rejects(text):
    with pytest.raises(Exception, match="duration"):
        _duration(text)


def test_config_rejects_a_non_positive_budget():
    with pytest.raises(UserError, match="time_budget"):
        resolve_config("cpu-fast", time_budget=0.0, **TINY)


def test_budget_run_trains_for_the_budget_decays_to_zero_and_resumes(tmp_path):
    budget = 2.0
    out = tmp_path / "run"
    # 96 images in batches of 32: 3 steps an epoch, so the budget outlasts --epochs 1, which is no cap
    cfg = resolve_config("cpu-fast", time_budget=budget, epochs=1, out=str(out), **TINY)
    r = fit(cfg)
    # the budget, give or take a step (the margin is for a loaded machine's slow steps)
    assert budget - 0.05 <= r.train_seconds <= budget + 1.0
    assert r.epochs_trained > 1 and len(r.history) >= 2
    lrs = [row["lr"] for row in r.history]
    assert lrs[-1] < 0.1 * cfg.lr and all(a >= b for a, b in zip(lrs, lrs[1:]))  # a decay that ends near zero
    assert r.history[-1]["test_acc"] == r.test["top1"]  # the final test pass ran at the stopping step
    saved = json.loads((out / "result.json").read_text())
    assert saved["epochs_trained"] == pytest.approx(r.epochs_trained)
    assert r.epochs_trained == pytest.approx(r.history[-1]["step"] / 3)
    steps = r.history[-1]["step"]

    with pytest.raises(UserError, match="complete") as e:  # the budget is spent
        fit(resume=out)
    assert "--time-budget" in str(e.value) or "time_budget" in str(e.value)
    more = fit(resume=out, resume_overrides={"time_budget": budget + 1.0})  # a larger budget goes on
    assert more.history[-1]["step"] > steps
    assert budget + 1.0 - 0.05 <= more.train_seconds <= budget + 1.0 + 2.0


def test_a_run_paused_mid_epoch_counts_the_seconds_before_the_pause_in_that_epochs_row(tmp_path):
    out = tmp_path / "run"
    # 3 steps an epoch: paused after 2 steps of the first, in the middle of its budget
    fit(resolve_config("cpu-fast", time_budget=1.0, stop_after_steps=2, out=str(out), **TINY))
    before = torch.load(out / "last.pt", weights_only=True)["train_clock"]
    assert before > 0
    more = fit(resume=out)
    assert more.history[0]["seconds"] > before  # the first epoch's row holds the paused part too
    end = torch.load(out / "last.pt", weights_only=True)["train_clock"]
    assert more.train_seconds == pytest.approx(end, abs=1e-6) and end >= 1.0 - 0.05


def test_cli_train_time_budget(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["train", "--recipe", "cpu-fast", "--data", "synthetic:128", "--batch-size", "32", "--precision",
                 "fp32", "--time-budget", "1s", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "epochs; train" in text  # "after 3.25 epochs; train 1.0s": a fraction, not a count
    assert json.loads((out / "config.json").read_text())["config"]["time_budget"] == 1.0
    assert "epochs (a 1 s time budget)" in (out / "report.html").read_text()


def test_cli_refuses_epochs_with_a_time_budget(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", "synthetic:64", "--epochs", "3", "--time-budget", "5m"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
