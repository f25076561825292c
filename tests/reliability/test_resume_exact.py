"""Exact resume: a run continued from a checkpoint, in a new process or from mid-epoch, is bit for
bit the run that never stopped (per-step losses, weights and optimizer state)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import resnetkit
from resnetkit.checkpoint import peek
from resnetkit.errors import UserError

from ._helpers import BASE, STEPS_PER_EPOCH, TOTAL_STEPS, differing, optimizer_differing, run_cli, step_losses


def assert_same_as_reference(run: Path, reference: Path) -> None:
    ref_losses = step_losses(reference)
    assert [s for s, _ in ref_losses] == list(range(TOTAL_STEPS))
    assert step_losses(run) == ref_losses  # every step's loss, exactly (JSON floats round-trip)
    got, ref = peek(run / "last.pt"), peek(reference / "last.pt")
    assert got["global_step"] == ref["global_step"] == TOTAL_STEPS
    assert differing(got["model"], ref["model"]) == []
    assert optimizer_differing(got["optimizer"], ref["optimizer"]) == []
    assert len(got["optimizer"]["state"]) == len(ref["optimizer"]["state"]) > 0


def test_stop_after_two_epochs_then_resume_in_a_new_process(reference: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = resnetkit.train(**BASE, stop_after_steps=2 * STEPS_PER_EPOCH, out=str(out))
    assert [r["epoch"] for r in first.history] == [1, 2]
    ckpt = peek(out / "last.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]) == (2, 0, 16)
    assert ckpt["config"]["epochs"] == 4  # the schedule is the 4-epoch run's ...
    lr_ref = [json.loads(x)["lr"] for x in (reference["run"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in first.history] == lr_ref[:2]  # ... so the lr after epoch 2 is the same

    done = run_cli(["train", "--resume", str(out), "--epochs", "4"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert_same_as_reference(out, reference["run"])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert [r["lr"] for r in rows] == lr_ref


@pytest.mark.parametrize("at", [10, 25])
def test_resume_from_a_mid_epoch_checkpoint(reference: dict, tmp_path: Path, at: int) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference[f"at{at}"], run)  # the directory as a crash right after step `at` leaves it
    ckpt = peek(run / "last.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == divmod(at, STEPS_PER_EPOCH) and not ckpt["epoch_done"]
    assert [s for s, _ in step_losses(run)] == list(range(at))  # steps are written with each checkpoint
    resnetkit.resume(run)
    assert_same_as_reference(run, reference["run"])


def test_stop_point_is_not_inherited_and_settings_cannot_change(reference: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference["at25"], run)
    with pytest.raises(UserError, match="--lr is 0.2 in the checkpoint but 0.5 was given; --batch-size is 32 in the "
                                        "checkpoint but 64 was given"):
        resnetkit.resume(run, lr=0.5, batch_size=64)
    assert peek(run / "last.pt")["global_step"] == 25  # nothing was written by the refused call
    paused = resnetkit.resume(run, stop_after_steps=29)  # mid-epoch 4: no half-epoch row
    ckpt = peek(run / "last.pt")
    assert (ckpt["global_step"], ckpt["epoch"], ckpt["step_in_epoch"], ckpt["epoch_done"]) == (29, 3, 5, False)
    assert ckpt["config"]["stop_after_steps"] == 29 and [r["epoch"] for r in paused.history] == [1, 2, 3]
    resnetkit.resume(run)  # the stop at 29 is not inherited: it runs to the end
    assert_same_as_reference(run, reference["run"])
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
