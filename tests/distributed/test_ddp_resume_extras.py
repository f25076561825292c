"""A 2-rank gloo run with a weight EMA and mixup/cutmix, SIGKILLed mid-epoch and resumed, ends
bit for bit where the run that was never stopped ends: weights, optimizer, EMA weights (equal on
both ranks) and every step's loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import torch
from ddp_helpers import (
    STEPS_PER_EPOCH,
    TRAIN_ARGS,
    assert_same_state,
    check,
    load_dumps,
    processes_with_marker,
    rank_env,
    run,
    torchrun,
    wait_until_gone,
)

from resnetkit.checkpoint import peek

pytestmark = pytest.mark.slow

EPOCHS = 2  # 16 steps: enough for a mid-epoch kill in epoch 2, short on a shared CPU
ARGS = [*TRAIN_ARGS, "--epochs", str(EPOCHS), "--ema", "0.999", "--cutmix", "1.0", "--mixup", "0.2"]
TOTAL = EPOCHS * STEPS_PER_EPOCH


def _steps(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"]) for r in rows]


def _kill_after(out: Path, step: int, tmp: Path) -> int:
    """Start the run; SIGKILL the launcher and every rank at once when last.pt holds ``step``."""
    marker = uuid.uuid4().hex
    cmd = torchrun(["train", *ARGS, "--checkpoint-every", "3", "--out", str(out)])
    with open(tmp / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, env=rank_env(tmp, marker=marker), cwd=tmp, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            seen = -1
            while seen < step:
                assert proc.poll() is None, f"the run ended ({proc.returncode}) before step {step}"
                assert time.monotonic() < deadline, f"no checkpoint at step {step} within 300s"
                if (out / "last.pt").exists():
                    try:
                        seen = int(peek(out / "last.pt")["global_step"])
                    except Exception:  # replaced while being read: look again
                        pass
                time.sleep(0.01)
            for pid in processes_with_marker(marker):  # torchrun starts each rank in its own session
                os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert not wait_until_gone(marker, 30), "ranks outlived the kill"
    return seen


def test_sigkilled_two_rank_run_with_ema_and_mixing_resumes_bit_for_bit(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    check(run(torchrun(["train", *ARGS, "--out", str(ref)]), rank_env(tmp_path, dump=tmp_path / "ref-dump"),
              tmp_path))

    out = tmp_path / "run"
    seen = _kill_after(out, STEPS_PER_EPOCH + 1, tmp_path)  # the next checkpoint is mid-epoch 2
    kept = peek(out / "last.pt")
    assert 0 < kept["global_step"] < TOTAL and "ema" in kept, seen
    resumed = run(torchrun(["train", *ARGS, "--resume", str(out)]), rank_env(tmp_path, dump=tmp_path / "dump"),
                  tmp_path)
    check(resumed)

    assert _steps(out) == _steps(ref) and [s for s, _ in _steps(ref)] == list(range(TOTAL))
    ours, theirs = load_dumps(tmp_path / "dump"), load_dumps(tmp_path / "ref-dump")
    for got, want in zip(ours, theirs):
        assert_same_state(got, want)
        assert all(torch.equal(got["ema"][k], want["ema"][k]) for k in want["ema"])
    assert all(torch.equal(ours[0]["ema"][k], ours[1]["ema"][k]) for k in ours[0]["ema"])  # same on every rank
    assert any(not torch.equal(ours[0]["ema"][k], ours[0]["model"][k]) for k in ours[0]["model"])
    a, b = peek(out / "last.pt"), peek(ref / "last.pt")
    assert a["ema"]["updates"] == b["ema"]["updates"] == TOTAL
    assert all(torch.equal(a["ema"]["weights"][k], b["ema"]["weights"][k]) for k in b["ema"]["weights"])
