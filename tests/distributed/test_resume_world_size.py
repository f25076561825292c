"""Resume at another number of processes: the same global batch, data order and schedule.

The model is the GroupNorm ResNet-20 of ``ddp_helpers`` (no batch statistics), so a run on any
number of processes computes the same function of the same global batch, and only the order of
floating-point sums differs (DDP's gradient all-reduce, the loss mean over ranks). The reference
is one uninterrupted process; every resumed run's per-step losses and final weights must stay
within :data:`TOL` of it. With BatchNorm the per-process batch statistics change with the
number of processes (docs/elastic.md). The same-count resume (2 -> 2, stopped mid-run) is checked
bit for bit, which is stronger than this file's tolerance, by test_ddp_resume and
test_elastic_torchrun, so it is not launched again here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from ddp_helpers import GN_MODEL, STEPS_PER_EPOCH, TRAIN_ARGS, check, gn_model_info, rank_env, run, torchrun

import resnetkit
from resnetkit.checkpoint import peek
from resnetkit.errors import UserError
from resnetkit.models import registry
from resnetkit.training.config import resolve_config
from resnetkit.training.distributed import DistContext
from resnetkit.training.resume import resume_config
from resnetkit.training.setup import build

pytestmark = pytest.mark.slow

EPOCHS = 2
STOP = 5  # mid-way through the first epoch of 8 steps
TOL = 1e-4  # step losses and weights, absolute: fp32 sums in another order over 16 steps
GN_ARGS = ["--model", GN_MODEL, *TRAIN_ARGS[2:], "--epochs", str(EPOCHS)]
OPTIONS = dict(model_kwargs={"width_mult": 0.25}, batch_size=32, precision="fp32", log_steps=True, epochs=EPOCHS)


def _steps(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in rows] == list(range(len(rows)))
    return [r["loss"] for r in rows]


def _one_process(**kwargs) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(registry._REGISTRY, GN_MODEL, gn_model_info())
        if "resume" in kwargs:
            resnetkit.resume(kwargs.pop("resume"), **kwargs)
        else:
            resnetkit.train(GN_MODEL, "synthetic:261", **OPTIONS, **kwargs)


def _two_processes(args: list[str], tmp: Path) -> None:
    check(run(torchrun(["train", *args], entry=True), rank_env(tmp), tmp))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference, and each run stopped at :data:`STOP` and resumed on another count."""
    tmp = tmp_path_factory.mktemp("world-size")
    _one_process(out=str(tmp / "reference"))
    _two_processes([*GN_ARGS, "--stop-after-steps", str(STOP), "--out", str(tmp / "two")], tmp)
    shutil.copytree(tmp / "two", tmp / "two-to-one")
    _one_process(out=str(tmp / "one"), stop_after_steps=STOP)
    shutil.copytree(tmp / "one", tmp / "one-to-two")
    for name in ("two-to-one", "one-to-two"):
        assert peek(tmp / name / "last.pt")["global_step"] == STOP
    _one_process(resume=tmp / "two-to-one")
    _two_processes(["--resume", str(tmp / "one-to-two")], tmp)
    return tmp


@pytest.mark.parametrize("name", ["two-to-one", "one-to-two"])
def test_a_run_resumed_on_another_process_count_tracks_the_reference(runs: Path, name: str) -> None:
    ref, got = _steps(runs / "reference"), _steps(runs / name)
    assert len(got) == len(ref) == EPOCHS * STEPS_PER_EPOCH
    worst = max(abs(a - b) for a, b in zip(got, ref))
    assert worst < TOL, f"step losses differ by up to {worst:.2e}"
    assert min(abs(a - b) for a, b in zip(ref, ref[1:])) > 10 * TOL  # the losses move: agreeing means something
    want, have = peek(runs / "reference" / "last.pt"), peek(runs / name / "last.pt")
    assert have["global_step"] == want["global_step"] == EPOCHS * STEPS_PER_EPOCH
    for k, v in want["model"].items():
        assert torch.allclose(have["model"][k], v, rtol=0, atol=TOL), k
    metrics = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [8, 16]  # the resumed epoch's row counts the whole epoch


def test_the_checkpoint_records_a_global_position(runs: Path) -> None:
    stopped = peek(runs / "one" / "last.pt")
    assert stopped["world_size"] == 1
    two = peek(runs / "two-to-one" / "last.pt")
    assert two["world_size"] == 1  # written by the resumed run
    for ck in (stopped, peek(runs / "two" / "last.pt")):
        assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (0, STOP, STOP)
        assert ck["global_batch"] == 32 and ck["images_in_epoch"] == STOP * 32


def test_a_global_batch_that_the_processes_cannot_share_is_refused(runs: Path) -> None:
    cfg, ckpt = resume_config(runs / "two", None)
    with pytest.raises(UserError, match=r"global batch of 32 images cannot be split evenly over 3 processes"):
        build(cfg, ckpt, DistContext(rank=0, local_rank=0, world_size=3), None)
    assert torch.distributed.is_initialized() is False  # refused before any collective
    cfg = resolve_config(model="resnet20", data="synthetic:64", batch_size=32, device="cpu")
    with pytest.raises(UserError, match=r"cannot be split evenly over 3 processes"):
        build(cfg, None, DistContext(rank=0, local_rank=0, world_size=3), None)
