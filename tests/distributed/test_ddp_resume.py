"""Signals during a 2-rank run: every rank stops after the same step, saves, and resumes exactly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from ddp_helpers import (
    EPOCHS,
    STEPS_PER_EPOCH,
    TRAIN_ARGS,
    Reference,
    assert_same_state,
    check,
    load_dumps,
    rank_env,
    rank_pid,
    run,
    torchrun,
    wait_until_gone,
)

from resnetkit.checkpoint import peek

pytestmark = pytest.mark.slow


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit code {proc.returncode}) before writing {path.name}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {path.name} after {seconds:.0f}s")
        time.sleep(0.02)


def test_nproc_run_stopped_by_sigterm_resumes_to_the_uninterrupted_weights(ddp_reference: Reference,
                                                                          tmp_path: Path) -> None:
    out, marker = tmp_path / "run", uuid.uuid4().hex
    cmd = [sys.executable, "-m", "resnetkit", "train", "--nproc", "2", *ddp_reference.args, "--checkpoint-every", "1",
           "--out", str(out)]
    with open(tmp_path / "log.txt", "w") as log:
        # its own session, like a job step: the signal goes to the launcher alone, which forwards it
        proc = subprocess.Popen(cmd, env=rank_env(tmp_path, marker=marker), cwd=tmp_path, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for(out / "last.pt", proc, seconds=240)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = (tmp_path / "log.txt").read_text()
    assert rc != 0, text[-3000:]
    assert not wait_until_gone(marker, 30), "ranks outlived their launcher"
    assert "stopped by SIGTERM" in text, text[-3000:]
    stopped = peek(out / "last.pt")
    total = EPOCHS * STEPS_PER_EPOCH
    assert 1 <= stopped["global_step"] < total, "the run finished before the signal; nothing was resumed"
    assert not (out / "result.json").exists()

    resumed = run([sys.executable, "-m", "resnetkit", "train", "--nproc", "2", "--resume", str(out)],
                  rank_env(tmp_path, dump=tmp_path / "dump"), tmp_path)
    check(resumed)
    assert peek(out / "last.pt")["global_step"] == total
    for got, want in zip(load_dumps(tmp_path / "dump"), load_dumps(ddp_reference.dump)):
        assert_same_state(got, want)  # bit for bit, on both ranks
    ours = json.loads((out / "result.json").read_text())["test"]
    theirs = json.loads((ddp_reference.out / "result.json").read_text())["test"]
    assert ours["top1"] == theirs["top1"] and ours["loss"] == theirs["loss"]


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path: Path) -> None:
    """Only rank 1 is signalled: rank 0 must still stop with it, after the same step, and save."""
    out, marker = tmp_path / "run", uuid.uuid4().hex
    cmd = torchrun(["train", *TRAIN_ARGS, "--epochs", str(EPOCHS), "--checkpoint-every", "1", "--out", str(out)])
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, env=rank_env(tmp_path, marker=marker), cwd=tmp_path, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            _wait_for(out / "last.pt", proc, seconds=240)
            os.kill(rank_pid(marker, 1), signal.SIGTERM)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = (tmp_path / "log.txt").read_text()
    assert rc != 0
    assert not wait_until_gone(marker, 30)
    steps = {who: int(step) for who, step in re.findall(r"stopped by (SIGTERM|a signal to another process) "
                                                        r"at epoch \d+, step (\d+)", text)}
    assert set(steps) == {"SIGTERM", "a signal to another process"}, text[-3000:]  # rank 1, then rank 0
    assert steps["SIGTERM"] == steps["a signal to another process"] == peek(out / "last.pt")["global_step"]
    assert steps["SIGTERM"] < EPOCHS * STEPS_PER_EPOCH
