"""The degradation study's plan and its warning when the budget is too short for the paper's init.

Timing is stubbed: the study's clock is a counter that only advances when a network trains
(60 s per network and epoch), so plans are exact and the runs stay tiny.
"""

from __future__ import annotations

import json
import types

import pytest
import torch

from resnetkit.cli import main
from resnetkit.runtime.device import cpu_description, describe_cpu, resolve_device, resolve_precision
from resnetkit.study import budget, degradation
from resnetkit.study.budget import PAPER_INIT_MIN_ITERATIONS, plan_study
from resnetkit.study.figure import figure_title

# 64 synthetic 8x8 images, batch 16: 4 iterations per epoch; depths 8 and 14: 4 networks per round
TINY = ["--data", "synthetic:64", "--image-size", "8", "--batch-size", "16", "--depths", "8", "14"]
FAKE_SECONDS_PER_FIT = 60.0  # so one round (4 networks) takes 240 s and ROUND_MARGIN makes it 252 s


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fake_clock(monkeypatch, tmp_path) -> list:
    """The study's clock advances only inside fit(); returns the list of events ("fit", ("plan", warned))."""
    now = [0.0]
    events: list = []
    real_fit = degradation.fit

    def fit(*args, **kwargs):
        events.append("fit")
        now[0] += FAKE_SECONDS_PER_FIT
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(degradation, "fit", fit)
    monkeypatch.setattr(degradation, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setenv("RESNETKIT_CACHE", str(tmp_path / "cache"))
    return events


# ------------------------------------------------------------------------------ the plan, by numbers
def test_plan_warns_below_the_threshold_and_not_above() -> None:
    # the measured line: 2,500 iterations; 2,500 JPEG images at batch 64 give 39 iterations per epoch
    assert PAPER_INIT_MIN_ITERATIONS == 2500
    short = plan_study(39, cap=None, budget_s=1800, elapsed=80, first_round=75)
    assert (short.epochs, short.iterations, short.epochs_needed) == (22, 858, 65)  # 1 + (1800-80) // 78.75
    assert short.warned and short.warning.startswith("858 iterations per network are fewer than the 2,500")
    # 80 s + 64 more rounds of 1.05 x 75 s = 5,120 s = 85.3 minutes
    assert short.budget_minutes_needed == pytest.approx(5120 / 60)
    assert "--budget-minutes 86 (2,535 iterations" in short.advice and "--zero-init-residual" in short.advice
    # the advised budget does reach the line at the same rate
    advised = plan_study(39, cap=None, budget_s=86 * 60, elapsed=80, first_round=75)
    assert advised.iterations >= 2500 and not advised.warned and advised.warning is None
    fast = plan_study(39, cap=None, budget_s=1800, elapsed=80, first_round=20)
    assert (fast.epochs, fast.iterations, fast.warned) == (82, 3198, False)
    at_line = plan_study(4, cap=None, budget_s=240 + 2 * 252, elapsed=240, first_round=240, min_iterations=12)
    assert (at_line.iterations, at_line.warned) == (12, False)  # exactly at the line: no warning
    below = plan_study(4, cap=None, budget_s=240 + 2 * 252 - 1, elapsed=240, first_round=240, min_iterations=12)
    assert (below.iterations, below.warned) == (8, True)


def test_plan_without_warning_for_zero_init_or_one_depth_and_epochs_advice() -> None:
    args = dict(cap=None, budget_s=1800, elapsed=80, first_round=75)
    assert not plan_study(39, zero_init_residual=True, **args).warned
    assert not plan_study(39, n_depths=1, **args).warned
    # --epochs caps the plan below the line: raising the budget alone would not help
    capped = plan_study(39, cap=30, budget_s=6000, elapsed=80, first_round=75)
    assert capped.epochs == 30 and "--epochs 65 with --budget-minutes 86" in capped.advice
    fixed = plan_study(39, cap=10)  # no budget: known before training, no rate measured
    assert (fixed.iterations, fixed.budget_minutes_needed, fixed.first_round) == (390, None, None)
    assert fixed.warned and "--epochs 65 (the paper's experiment, longer)" in fixed.advice
    assert not plan_study(39, cap=65).warned


def test_describe_cpu_names_the_model_and_speed_flags() -> None:
    text = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n"
            "flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_vnni\n\n"
            "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    assert describe_cpu(text) == {"model": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
                                  "flags": ["avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile",
                                            "amx_bf16", "amx_int8"]}
    assert describe_cpu("model name\t: AMD EPYC\nflags\t: fpu avx2 fma\n") == {"model": "AMD EPYC", "flags": ["avx2"]}
    assert describe_cpu(None) == {"model": "unknown", "flags": []}


# ------------------------------------------------------------------------------ the study, stubbed clock
def test_warning_comes_before_training_goes_on_and_the_report_records_it(fake_clock, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(budget, "PAPER_INIT_MIN_ITERATIONS", 12)  # 3 epochs of 4 iterations
    events = fake_clock
    # 10 minutes: after the 240 s first round, 1 more round of 252 s fits -> 2 epochs = 8 iterations
    report = degradation.run_degradation([8, 14], "synthetic:64", out=tmp_path / "s", budget_minutes=10,
                                         batch_size=16, image_size=8, device="cpu",
                                         on_plan=lambda p: events.append(("plan", p.warned)))
    assert events == ["fit"] * 4 + [("plan", True)] + ["fit"] * 4
    saved = json.loads((tmp_path / "s" / "degradation.json").read_text())
    assert saved["plan"] == report["plan"]
    plan = saved["plan"]
    assert (plan["planned_iterations"], plan["completed_iterations"], plan["min_iterations"]) == (8, 8, 12)
    assert plan["warning_fired"] is True and plan["budget_minutes_needed"] == 12.4  # (240 + 2 x 252) / 60
    assert plan["warning"].startswith("8 iterations per network are fewer than the 12")
    assert "--budget-minutes 13" in plan["warning"]
    assert saved["recipe"]["iterations"] == 8 and saved["recipe"]["planned_epochs"] == 2
    assert saved["precision"] == resolve_precision("auto", resolve_device("cpu")) and saved["device"] == "cpu"
    assert saved["cpu"] == cpu_description() and isinstance(saved["cpu"]["flags"], list)
    title = figure_title(saved)
    assert f"8 of 8 planned iterations (under the 12 the paper's initialisation needs), {saved['precision']} on " \
           f"{saved['cpu']['model']}" in title


def test_cli_prints_the_warning_below_the_line_and_not_above(fake_clock, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(budget, "PAPER_INIT_MIN_ITERATIONS", 8)
    # 8 minutes: the 240 s first round leaves no room for another 252 s round -> 4 iterations
    assert main(["study", "degradation", "--budget-minutes", "8", "--out", str(tmp_path / "short"), *TINY]) == 0
    out, err = capsys.readouterr()
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warning == ["warning: 4 iterations per network are fewer than the 8 that ResNet-56 needed to catch up "
                       "with ResNet-20 on CIFAR-10 with the paper's initialisation: expect the deeper ResNet to "
                       "end above the shallower one."]
    ways = err.splitlines()[err.splitlines().index(warning[0]) + 1]
    assert ways.startswith("  Ways out: --budget-minutes 9 (8 iterations at the first round's 240 s for one epoch of "
                           "all 4 networks") and "or --zero-init-residual (" in ways
    assert "4 of 4 planned iterations per network" in out and "see the warning above" in out
    short = json.loads((tmp_path / "short" / "degradation.json").read_text())["plan"]
    assert (short["planned_iterations"], short["warning_fired"], short["budget_minutes_needed"]) == (4, True, 8.2)

    # 10 minutes: 2 epochs = 8 iterations, at the line: no warning
    assert main(["study", "degradation", "--budget-minutes", "10", "--out", str(tmp_path / "long"), *TINY]) == 0
    out, err = capsys.readouterr()
    assert "warning:" not in err and "Ways out" not in err and "see the warning above" not in out
    long = json.loads((tmp_path / "long" / "degradation.json").read_text())["plan"]
    assert (long["planned_iterations"], long["completed_iterations"], long["warning_fired"]) == (8, 8, False)
    assert long["warning"] is None and long["min_iterations"] == 8
