"""Elastic torchrun: a worker killed mid-epoch, the group restarted by torchrun, the run resumed
from its run directory with no ``--resume``, and the final weights those of an uninterrupted run."""

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
    Reference,
    assert_same_state,
    free_port,
    load_dumps,
    rank_env,
    rank_pid,
    wait_until_gone,
)

from resnetkit.checkpoint import peek

pytestmark = pytest.mark.slow


def _wait_for_step(last: Path, proc: subprocess.Popen, step: int, seconds: float) -> int:
    """Wait until ``last`` holds at least ``step`` steps; returns the step it holds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit code {proc.returncode}) before step {step}")
        try:
            held = int(peek(last)["global_step"])
        except Exception:  # not written yet
            held = -1
        if held >= step:
            return held
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint of step {step} after {seconds:.0f}s")


def test_a_killed_worker_is_restarted_by_torchrun_and_the_run_ends_as_if_uninterrupted(
        ddp_reference: Reference, tmp_path: Path) -> None:
    out, marker = tmp_path / "run", uuid.uuid4().hex
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2", "--max-restarts=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--monitor-interval=0.2",
           "-m", "resnetkit", "train", *ddp_reference.args, "--checkpoint-every", "1", "--out", str(out)]
    env = rank_env(tmp_path, dump=tmp_path / "dump", marker=marker)
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            killed_after = _wait_for_step(out / "last.pt", proc, 2, seconds=240)
            os.kill(rank_pid(marker, 1), signal.SIGKILL)
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = (tmp_path / "log.txt").read_text()
    assert rc == 0, text[-4000:]
    assert not wait_until_gone(marker, 30), "workers outlived their launcher"
    total = EPOCHS * STEPS_PER_EPOCH
    assert killed_after < total, "the run finished before the kill"
    resumed = [int(s) for s in re.findall(r"resuming \S+ at epoch \d+, step (\d+)", text)]
    assert len(resumed) == 1 and killed_after <= resumed[0] < total, text[-4000:]  # restarted once, from last.pt
    assert peek(out / "last.pt")["global_step"] == total
    for got, want in zip(load_dumps(tmp_path / "dump"), load_dumps(ddp_reference.dump)):
        assert_same_state(got, want)  # bit for bit, on both ranks
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (ddp_reference.out / "steps.jsonl").read_text().splitlines()]
    assert steps == ref  # every step's loss once, equal to the uninterrupted run's
