"""Launch shapes: two "machines" (two torchrun launchers) on loopback, and a failing start."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from ddp_helpers import (
    TRAIN_ARGS,
    Reference,
    assert_same_state,
    free_port,
    load_dumps,
    rank_env,
    run,
    torchrun,
    wait_until_gone,
)

pytestmark = pytest.mark.slow


def test_two_launchers_as_two_machines_match_one_launcher(ddp_reference: Reference, tmp_path: Path) -> None:
    port = free_port()
    env = rank_env(tmp_path, dump=tmp_path / "dump")
    args = ["train", *ddp_reference.args, "--out", str(tmp_path / "run")]
    procs = []
    for node in (0, 1):
        log = open(tmp_path / f"node{node}.txt", "w")
        cmd = torchrun(args, nproc=1, nnodes=2, node_rank=node, port=port)
        procs.append((subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        codes = [p.wait(timeout=300) for p, _ in procs]
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
            log.close()
    assert codes == [0, 0], "\n".join((tmp_path / f"node{n}.txt").read_text()[-2000:] for n in (0, 1))
    for got, want in zip(load_dumps(tmp_path / "dump"), load_dumps(ddp_reference.dump)):
        assert_same_state(got, want)
    assert (tmp_path / "run" / "result.json").exists()


def test_a_bad_data_path_ends_every_rank_quickly(tmp_path: Path) -> None:
    """Rank 0 fails while preparing the data and rank 1 waits for it: neither may hang."""
    marker = uuid.uuid4().hex
    args = ["train", *TRAIN_ARGS, "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")]
    t0 = time.monotonic()
    proc = run(torchrun(args), rank_env(tmp_path, marker=marker, timeout_s=1800), tmp_path, timeout=180)
    took = time.monotonic() - t0
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "resnetkit train: error: Data source" in text and "does not exist" in text, text[-3000:]
    # rank 0 exits 2 (the CLI's user error) unless torchrun stops it first, once rank 1 has seen
    # the failure and exited 1: both orders happen, and neither leaves a rank running
    assert re.search(r"rank\s*: 0 \(local_rank: 0\)\s*exitcode\s*: (2|-15) ", text), text[-3000:]
    assert "[rank0]: Traceback" not in text and "[rank1]: Traceback" not in text  # one line each, no crash
    assert not wait_until_gone(marker, 10)
    assert took < 170  # far below the 1800 s collective timeout: nobody waited for it
