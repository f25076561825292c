"""Shared pieces of the reliability suite: one tiny run, its CLI form, and exact comparisons.

Every test trains the same small configuration (ResNet-20 at half width with dropout, so the
torch RNG matters, on 256 synthetic 16x16 images, batch 32: 8 steps an epoch, 32 in 4 epochs),
so the uninterrupted reference run is computed once per package and compared bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from resnetkit.checkpoint import peek

BASE: dict[str, Any] = dict(
    model="resnet20", data="synthetic:256", image_size=16, batch_size=32, epochs=4, seed=3,
    model_kwargs={"drop_rate": 0.2, "width_mult": 0.5}, device="cpu", precision="fp32", log_steps=True,
)
STEPS_PER_EPOCH = 8
TOTAL_STEPS = 32


def cli_args(out: Path, *extra: str) -> list[str]:
    """``resnetkit train`` arguments equal to :data:`BASE` (the CLI builds the same config)."""
    return ["train", "--model", "resnet20", "--data", "synthetic:256", "--image-size", "16", "--batch-size", "32",
            "--epochs", "4", "--seed", "3", "--drop-rate", "0.2", "--width-mult", "0.5", "--device", "cpu",
            "--precision", "fp32", "--log-steps", "--out", str(out), *extra]


def child_env(tmp: Path) -> dict[str, str]:
    """Environment of a child process: one thread (as the in-process runs), its own cache."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
            "RESNETKIT_CACHE": str(tmp / "child-cache"), "PYTHONUNBUFFERED": "1"}


def spawn(args: list[str], tmp: Path) -> subprocess.Popen:
    """``python -m resnetkit ARGS`` in a new process, stdout/stderr captured."""
    return subprocess.Popen([sys.executable, "-m", "resnetkit", *args], env=child_env(tmp), cwd=tmp,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_cli(args: list[str], tmp: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resnetkit", *args], env=child_env(tmp), cwd=tmp,
                          capture_output=True, text=True, timeout=timeout)


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> int:
    """Poll ``last.pt`` until it holds ``global_step >= step``; returns the step seen."""
    deadline = time.monotonic() + timeout
    last = run_dir / "last.pt"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the training process ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if last.exists():
            try:
                seen = int(peek(last)["global_step"])
            except Exception:  # replaced between exists() and open(): look again
                seen = -1
            if seen >= step:
                return seen
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint at step {step} within {timeout}s")


def weights(path: Path) -> dict[str, torch.Tensor]:
    return peek(path)["model"]


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors are not bitwise equal (all names when the key sets differ)."""
    if a.keys() != b.keys():
        return sorted(set(a) ^ set(b)) or ["<key order>"]
    return [k for k in a if not torch.equal(a[k], b[k])]


def optimizer_differing(a: dict, b: dict) -> list[str]:
    """Momentum buffers (and steps) that are not bitwise equal between two optimizer states."""
    out = []
    for pid, st in a["state"].items():
        for name, v in st.items():
            w = b["state"].get(pid, {}).get(name)
            same = isinstance(w, torch.Tensor) and torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w
            if not same:
                out.append(f"{pid}.{name}")
    return out


def step_losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"]) for r in rows]


def run_files(run_dir: Path) -> list[str]:
    """Every file in a run directory (hidden ones included), sorted; [] when it does not exist."""
    return sorted(p.name for p in run_dir.iterdir()) if run_dir.exists() else []


def error_lines(stderr: str, command: str = "train") -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"resnetkit {command}: error:")]
