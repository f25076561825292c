"""Ray Train on a local two-CPU cluster: two workers train, report, lose one worker to SIGKILL,
resume from the last reported checkpoint, and end with the weights of the torchrun reference."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from ddp_helpers import EPOCHS, STEPS_PER_EPOCH, Reference, assert_same_state, rank_env

from resnetkit.checkpoint import peek
from resnetkit.training.config import resolve_config

try:
    import ray
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip('ray is not installed (pip install "resnetkit[ray]")', allow_module_level=True)

from resnetkit.training.ray_train import train_on_ray  # noqa: E402

pytestmark = pytest.mark.slow

CHECKPOINT_EVERY = 4


def _ray_workers(marker: str) -> list[int]:
    """Pids of this test's Ray Train worker processes (their title names the actor)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes()
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"RayTrainWorker" in title and f"RESNETKIT_TEST_MARKER={marker}".encode() in env:
            found.append(int(entry.name))
    return found


def _ray_checkpoint_step(experiment: Path) -> int:
    """The step of the latest checkpoint Ray registered in ``experiment`` (-1: none yet).

    Ray's controller rewrites ``checkpoint_manager_snapshot.json`` each time it registers a
    checkpoint, that is once every worker's report reached it; that snapshot, not the checkpoint
    folders on disk, is what a restart resumes from (a worker's upload can be on disk before the
    controller registers it: reading the folders made this test fail once).
    """
    try:
        snapshot = json.loads((experiment / "checkpoint_manager_snapshot.json").read_text())
        return int(snapshot["latest_checkpoint_result"]["metrics"]["global_step"])
    except (OSError, ValueError, KeyError, TypeError):  # not written yet, or being written
        return -1


def _kill_one_worker_after_ray_checkpoint(experiment: Path, last: Path, marker: str, killed: dict,
                                          seconds: float = 300) -> None:
    """SIGKILL one Ray Train worker as soon as Ray holds a checkpoint; record the steps then."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ray_step = _ray_checkpoint_step(experiment)
        workers = _ray_workers(marker)
        if ray_step >= 0 and workers:
            os.kill(max(workers), signal.SIGKILL)
            killed.update(ray_step=ray_step, step=int(peek(last)["global_step"]), pid=max(workers))
            return
        time.sleep(0.02)


def test_ray_workers_survive_a_killed_worker_and_leave_a_checkpoint_eval_loads(
        ddp_reference: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = uuid.uuid4().hex
    for k, v in rank_env(tmp_path, marker=marker).items():  # inherited by the local cluster's workers
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # Ray polls workers' reports (default 2 s)
    out = tmp_path / "run"
    cfg = resolve_config(model="resnet20", data="synthetic:261", model_kwargs={"width_mult": 0.25}, batch_size=32,
                         precision="fp32", log_steps=True, epochs=EPOCHS, checkpoint_every=CHECKPOINT_EVERY,
                         out=str(out))
    killed: dict = {}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)  # workers' logs in the test's output
    try:
        watcher = threading.Thread(target=_kill_one_worker_after_ray_checkpoint,
                                   args=(tmp_path / "ray" / "t", out / "last.pt", marker, killed), daemon=True)
        watcher.start()
        result = train_on_ray(cfg, num_workers=2, max_failures=1, storage_path=tmp_path / "ray", name="t")
        watcher.join(timeout=5)
    finally:
        ray.shutdown()
    total = EPOCHS * STEPS_PER_EPOCH
    assert killed and killed["step"] < total, "no worker was killed mid-run"
    m = result.metrics
    assert m["global_step"] == total and m["world_size"] == 2
    # resumed from Ray's latest checkpoint: the one it held at the kill, or a later one
    assert CHECKPOINT_EVERY <= killed["ray_step"] <= m["resumed_from"] <= killed["step"], killed
    ref_rows = [json.loads(line) for line in (ddp_reference.out / "metrics.jsonl").read_text().splitlines()]
    assert m["train_loss"] == ref_rows[-1]["train_loss"]  # the last epoch's row, reported with it
    # Ray's gloo group computes what torchrun's does: the reference's weights, bit for bit
    ray_last = peek(result.checkpoint / "last.pt")
    assert ray_last["global_step"] == total
    want = peek(ddp_reference.out / "last.pt")
    assert_same_state({"model": ray_last["model"]}, {"model": want["model"]})
    assert_same_state({"model": peek(out / "last.pt")["model"]}, {"model": want["model"]})
    # the checkpoint Ray kept evaluates in one process, with the CLI
    proc = subprocess.run([sys.executable, "-m", "resnetkit", "eval", str(result.checkpoint / "last.pt"),
                           "--device", "cpu"], env=rank_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    top1 = json.loads((ddp_reference.out / "result.json").read_text())["test"]["top1"]
    assert f"top-1 {top1:.2%}" in proc.stdout  # the reference's weights, so its accuracy
