"""Exact resume with a weight EMA and mixup/cutmix on, and resuming with the same command line.

A run with ``--ema 0.999 --cutmix 1.0 --mixup 0.2`` is stopped by SIGTERM and by SIGKILL in the
middle of an epoch; each continues to the weights, EMA weights and per-step losses of the run
that was never stopped. The SIGKILLed one is continued by its original command line plus
``--resume RUN_DIR``; the same line with a different ``--lr`` is refused naming both values.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

import resnetkit
from resnetkit.checkpoint import peek

from ._helpers import BASE, TOTAL_STEPS, cli_args, differing, error_lines, run_cli, spawn, step_losses, wait_for_step

EXTRA = ["--ema", "0.999", "--cutmix", "1.0", "--mixup", "0.2"]
OPTIONS = dict(ema=0.999, cutmix=1.0, mixup=0.2)


def _stop(tmp: Path, name: str, sig: signal.Signals, after: int, every: int) -> dict:
    run = tmp / name
    args = cli_args(run, "--checkpoint-every", str(every), *EXTRA)
    proc = spawn(args, tmp)
    try:
        wait_for_step(run, after, proc)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return {"run": run, "rc": proc.returncode, "stderr": stderr, "args": args}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One run at a time: the runs are tiny, and parallel ones only fight over the cores."""
    tmp = tmp_path_factory.mktemp("extras")
    resnetkit.train(**BASE, **OPTIONS, out=str(tmp / "ref"))
    term = _stop(tmp, "term", signal.SIGTERM, 5, 4)
    kill = _stop(tmp, "kill", signal.SIGKILL, 11, 3)
    return {"term": term, "kill": kill, "ref": tmp / "ref", "tmp": tmp}


def _assert_same_as_reference(run: Path, ref: Path) -> None:
    assert step_losses(run) == step_losses(ref)
    a, b = peek(run / "last.pt"), peek(ref / "last.pt")
    assert a["global_step"] == b["global_step"] == TOTAL_STEPS
    assert differing(a["model"], b["model"]) == []
    assert differing(a["ema"]["weights"], b["ema"]["weights"]) == []
    assert a["ema"]["updates"] == b["ema"]["updates"] == TOTAL_STEPS
    assert differing(a["ema"]["weights"], a["model"]) != []  # the average really differs from the weights


def test_sigterm_mid_epoch_resumes_bit_for_bit_with_ema_and_mixing(runs: dict) -> None:
    r = runs["term"]
    assert r["rc"] == 143, r["stderr"][-2000:]
    stopped = peek(r["run"] / "last.pt")
    assert 0 < stopped["step_in_epoch"] < 8 and "ema" in stopped
    resnetkit.resume(r["run"])
    _assert_same_as_reference(r["run"], runs["ref"])


def test_sigkill_then_the_same_command_line_plus_resume_continues_bit_for_bit(runs: dict) -> None:
    r = runs["kill"]
    assert r["rc"] == -signal.SIGKILL
    kept = peek(r["run"] / "last.pt")["global_step"]
    assert 0 < kept < TOTAL_STEPS
    changed = run_cli([*r["args"], "--lr", "0.05", "--resume", str(r["run"])], runs["tmp"])
    assert changed.returncode == 2
    (line,) = error_lines(changed.stderr)
    assert re.search(r"--lr is 0\.2 in the checkpoint but 0\.05 was given", line), line
    assert peek(r["run"] / "last.pt")["global_step"] == kept  # refused before touching anything
    done = run_cli([*r["args"], "--resume", str(r["run"])], runs["tmp"])
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_as_reference(r["run"], runs["ref"])
