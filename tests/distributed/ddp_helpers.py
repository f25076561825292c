"""Helpers for the multi-process tests: start ranks with torchrun on a free loopback port.

Kept free of pytest so that ``rank_entry.py`` (run by torchrun) can import it too.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ENTRY = HERE / "rank_entry.py"

#: A small run that every multi-process test shares: 261 training images (8 global batches of
#: 32, 5 dropped), 53 test images (odd: 27 on rank 0, 26 on rank 1), fp32 whatever the CPU.
TRAIN_ARGS = ["--model", "resnet20", "--width-mult", "0.25", "--data", "synthetic:261", "--batch-size", "32",
              "--precision", "fp32", "--log-steps"]
EPOCHS = 3
STEPS_PER_EPOCH = 8

#: A ResNet-20 (quarter width) whose normalisation has no batch statistics, so that a 2-rank
#: run and a 1-process run on the same global batch compute the same function.
GN_MODEL = "ddp_test_resnet20_gn"


def _group_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(1, channels)


def gn_model_info() -> Any:
    from resnetkit.models.registry import ModelInfo

    return ModelInfo(GN_MODEL, "test", (3, 32, 32), dict(
        block="basic", layers=(3, 3, 3), stem="cifar", widths=(16, 32, 64), width_mult=0.25, shortcut="A",
        num_classes=10, norm_layer=_group_norm))


@dataclass(frozen=True)
class Reference:
    """An uninterrupted 2-rank run of ``TRAIN_ARGS`` for ``EPOCHS`` epochs, one torchrun launcher."""

    out: Path  # its run directory
    dump: Path  # every rank's final state (RESNETKIT_DEBUG_DUMP_DIR)
    args: list[str]  # the training arguments, for runs that must reproduce it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_env(tmp: Path, dump: Path | None = None, marker: str | None = None, timeout_s: int = 600) -> dict:
    """The environment for a launcher and its ranks: one thread each, an isolated cache."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RESNETKIT_CACHE=str(tmp / "cache"), MPLBACKEND="Agg",
               RESNETKIT_DIST_TIMEOUT=str(timeout_s), PYTHONUNBUFFERED="1")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RESNETKIT_DEBUG_DUMP_DIR"):
        env.pop(key, None)
    if dump is not None:
        env["RESNETKIT_DEBUG_DUMP_DIR"] = str(dump)
    if marker is not None:
        env["RESNETKIT_TEST_MARKER"] = marker
    return env


def torchrun(args: list[str], *, nproc: int = 2, port: int | None = None, nnodes: int = 1, node_rank: int = 0,
             entry: bool = False) -> list[str]:
    """``python -m torch.distributed.run`` with a static rendezvous on 127.0.0.1."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc_per_node={nproc}",
           f"--node_rank={node_rank}", "--master_addr=127.0.0.1", f"--master_port={port or free_port()}"]
    return cmd + ([str(ENTRY)] if entry else ["-m", "resnetkit"]) + args


def run(cmd: list[str], env: dict, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def check(proc: subprocess.CompletedProcess) -> None:
    """Fail with the last lines of the output when ``proc`` did not succeed."""
    if proc.returncode != 0:
        raise AssertionError(f"exit code {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}")


def load_dumps(where: Path, world_size: int = 2) -> list[dict]:
    """The ``RESNETKIT_DEBUG_DUMP_DIR`` files of every rank, in rank order."""
    return [torch.load(where / f"rank{r}.pt", weights_only=True) for r in range(world_size)]


def assert_same_state(a: dict, b: dict) -> None:
    """Model state dicts (and optimizer momentum, when both have it) bitwise equal."""
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{k} differs"
    if "optimizer" in a and "optimizer" in b:
        sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            for k, v in sa[i].items():
                assert torch.equal(v, sb[i][k]), f"optimizer state {i}.{k} differs"


def processes_with_marker(marker: str) -> list[int]:
    """Pids of live processes whose environment carries ``RESNETKIT_TEST_MARKER=marker``."""
    needle = f"RESNETKIT_TEST_MARKER={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def rank_pid(marker: str, rank: int) -> int:
    """The pid of the worker process of ``rank`` among the processes carrying ``marker``."""
    for pid in processes_with_marker(marker):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    raise AssertionError(f"no process of rank {rank} found")


def wait_until_gone(marker: str, seconds: float) -> list[int]:
    """Wait up to ``seconds`` for the marked processes to exit; returns those still alive."""
    deadline = time.monotonic() + seconds
    alive = processes_with_marker(marker)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = processes_with_marker(marker)
    return alive
