"""Killing a training process: SIGTERM saves last.pt and exits 143 with a one-line message; SIGKILL
at random points loses at most the steps since the last checkpoint. Both resume to the exact
weights and per-step losses of the run that was never interrupted.

The four training processes run side by side (one thread each) to keep the suite short; each is
stopped from its own thread at its own point.
"""

from __future__ import annotations

import random
import re
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import resnetkit
from resnetkit.checkpoint import peek

from ._helpers import TOTAL_STEPS, cli_args, differing, error_lines, spawn, step_losses, wait_for_step, weights

# name -> (signal, stop once last.pt has this step, extra seconds, --checkpoint-every)
_rng = random.Random(20240)  # seeded: the same kill points on every run
KILLS = {"term": (signal.SIGTERM, 4, 0.0, 4),
         **{f"kill{i}": (signal.SIGKILL, _rng.randint(2, 20), _rng.uniform(0.0, 0.15), 3) for i in range(3)}}


def _stop(tmp: Path, name: str) -> dict:
    sig, after, delay, every = KILLS[name]
    run = tmp / name
    proc = spawn(cli_args(run, "--checkpoint-every", str(every)), tmp)
    try:
        seen = wait_for_step(run, after, proc)
        time.sleep(delay)
        t0 = time.monotonic()
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
        took = time.monotonic() - t0
    finally:
        proc.kill()  # only if it is still there after a failure above
    return {"run": run, "seen": seen, "rc": proc.returncode, "stderr": stderr, "took": took}


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("kills")
    with ThreadPoolExecutor(len(KILLS)) as pool:
        futures = {name: pool.submit(_stop, tmp, name) for name in KILLS}
        return {name: f.result() for name, f in futures.items()}


def finish_and_compare(run: Path, reference: Path) -> None:
    resnetkit.resume(run)
    assert step_losses(run) == step_losses(reference)
    assert differing(weights(run / "last.pt"), weights(reference / "last.pt")) == []
    assert [p.name for p in run.glob(".*.tmp")] == []  # a killed writer's temp file is cleaned up


def test_sigterm_saves_last_pt_exits_143_and_resumes_exactly(stopped: dict, reference: dict) -> None:
    r = stopped["term"]
    run, stderr = r["run"], r["stderr"]
    assert r["rc"] == 143, stderr[-3000:]
    assert r["took"] < 30  # one step, one checkpoint, then out (typically well under a second)
    assert "Traceback" not in stderr
    errors = error_lines(stderr)
    assert len(errors) == 1 and errors[0] == stderr.strip().splitlines()[-1]
    m = re.fullmatch(r"resnetkit train: error: stopped by SIGTERM at epoch (\d), step (\d+); "
                     r"saved (.+)/last\.pt, continue with --resume (.+)", errors[0])
    assert m is not None, errors[0]
    assert Path(m.group(3)) == run and Path(m.group(4)) == run
    ckpt = peek(run / "last.pt")
    step = int(m.group(2))
    assert r["seen"] <= step < TOTAL_STEPS and ckpt["global_step"] == step  # saved at the step it stopped
    assert int(m.group(1)) == ckpt["epoch"] + 1
    assert [s for s, _ in step_losses(run)] == list(range(step))
    finish_and_compare(run, reference["run"])


@pytest.mark.parametrize("name", [n for n in KILLS if n.startswith("kill")])
def test_sigkill_at_a_random_point_loses_only_the_steps_since_the_checkpoint(
        stopped: dict, reference: dict, name: str) -> None:
    r = stopped[name]
    run = r["run"]
    assert r["rc"] == -signal.SIGKILL  # it really died mid-run, with no chance to save
    ckpt = peek(run / "last.pt")  # the last complete checkpoint, never a torn one
    kept = ckpt["global_step"]
    assert r["seen"] <= kept < TOTAL_STEPS
    assert kept % 3 == 0 or kept % 8 == 0  # a --checkpoint-every or end-of-epoch save
    logged = [s for s, _ in step_losses(run)]
    assert logged[:kept] == list(range(kept))  # steps.jsonl holds every step up to the checkpoint
    finish_and_compare(run, reference["run"])


def test_what_a_kill_in_the_middle_of_a_write_leaves_is_cleaned_up(reference: dict, tmp_path: Path) -> None:
    """The exact leftovers of a SIGKILL during a write (hard to hit by timing alone): a torn last
    line in steps.jsonl and a half-written temp checkpoint next to the good last.pt."""
    run = tmp_path / "run"
    shutil.copytree(reference["at10"], run)
    with open(run / "steps.jsonl", "a") as f:
        f.write('{"step": 10, "lo')  # killed inside the append
    (run / ".last.pt.k1ll3d.tmp").write_bytes((run / "last.pt").read_bytes()[:5000])
    finish_and_compare(run, reference["run"])
