"""2-rank DDP training on CPU (gloo): ranks agree, results equal a single process where they must."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ddp_helpers import (
    EPOCHS,
    GN_MODEL,
    STEPS_PER_EPOCH,
    TRAIN_ARGS,
    Reference,
    assert_same_state,
    check,
    gn_model_info,
    load_dumps,
    rank_env,
    run,
    torchrun,
)

import resnetkit
from resnetkit.checkpoint import peek
from resnetkit.errors import UserError
from resnetkit.models import registry
from resnetkit.training.config import resolve_config
from resnetkit.training.distributed import DistContext
from resnetkit.training.setup import build

pytestmark = pytest.mark.slow


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_ranks_end_with_bitwise_identical_weights(ddp_reference: Reference) -> None:
    rank0, rank1 = load_dumps(ddp_reference.dump)
    assert_same_state(rank0, rank1)  # parameters, BatchNorm buffers and momentum
    assert rank0["optimizer"]["state"]  # momentum exists, so the comparison above compared it
    last = peek(ddp_reference.out / "last.pt")
    assert last["world_size"] == 2 and last["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert_same_state({"model": last["model"]}, rank0)


def test_time_budget_ranks_agree_on_the_schedule_and_the_last_step(tmp_path: Path) -> None:
    """The ranks follow rank 0's clock (one step old), so their learning rates and their last step are
    the same and their weights stay bitwise equal; the training time reported is the budget (rank 1's
    own clock would also count its wait while rank 0 writes each epoch's files)."""
    args = [*TRAIN_ARGS, "--time-budget", "3", "--no-report"]
    check(run(torchrun(["train", *args, "--out", str(tmp_path / "run")]), rank_env(tmp_path, dump=tmp_path / "dump"),
              tmp_path))
    rank0, rank1 = load_dumps(tmp_path / "dump")
    assert_same_state(rank0, rank1)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert 3.0 - 0.05 <= result["train_seconds"] <= 3.0 + 2.0 and result["epochs_trained"] > 1
    last = peek(tmp_path / "run" / "last.pt")
    assert last["train_clock"] >= 3.0 and last["epoch_done"]
    rows = _lines(tmp_path / "run" / "metrics.jsonl")
    assert rows[-1]["lr"] < 0.2 * rows[0]["lr"]


def test_muon_ranks_end_with_bitwise_identical_weights(tmp_path: Path) -> None:
    """Every rank orthogonalises the same all-reduced gradients, so Muon keeps the ranks equal too."""
    args = [*TRAIN_ARGS, "--epochs", "1", "--optimizer", "muon", "--no-report"]
    check(run(torchrun(["train", *args, "--out", str(tmp_path / "run")]), rank_env(tmp_path, dump=tmp_path / "dump"),
              tmp_path))
    rank0, rank1 = load_dumps(tmp_path / "dump")
    assert_same_state(rank0, rank1)
    groups = rank0["optimizer"]["param_groups"]
    assert any(g["muon"] for g in groups) and any(not g["muon"] for g in groups)


def test_ddp_checkpoint_loads_in_a_single_process(ddp_reference: Reference) -> None:
    raw = peek(ddp_reference.out / "best.pt")["model"]
    assert not [k for k in raw if k.startswith(("module.", "_orig_mod."))]
    model = resnetkit.load_checkpoint(ddp_reference.out / "best.pt")
    rank0 = load_dumps(ddp_reference.dump)[0]
    assert_same_state({"model": model.state_dict()}, rank0)
    assert model.classes[:2] == ["disk", "square"] and model.image_size == 32


def test_metrics_count_every_rank(ddp_reference: Reference) -> None:
    """metrics.jsonl reports the whole global batch: 8 steps x 32 images per epoch, not rank 0's 128."""
    rows = _lines(ddp_reference.out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [8, 16, 24]
    for r in rows:
        assert r["images_per_s"] * r["seconds"] == pytest.approx(STEPS_PER_EPOCH * 32, rel=1e-6)
    steps = _lines(ddp_reference.out / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(EPOCHS * STEPS_PER_EPOCH))
    epoch1 = sum(s["loss"] for s in steps[:STEPS_PER_EPOCH]) / STEPS_PER_EPOCH
    assert rows[0]["train_loss"] == pytest.approx(epoch1, abs=1e-6)  # global epoch mean = mean of global steps


def test_distributed_eval_of_an_odd_test_split_equals_a_single_process(ddp_reference: Reference) -> None:
    """53 test images: 27 on rank 0, 26 on rank 1, each counted once, with rank 0's BN statistics."""
    ddp = json.loads((ddp_reference.out / "result.json").read_text())["test"]
    one = resnetkit.evaluate(ddp_reference.out / "last.pt", device="cpu")
    assert ddp["count"] == one["count"] == 53
    assert ddp["top1"] == one["top1"]
    assert ddp["top5"] == one["top5"]
    assert ddp["per_class"] == one["per_class"]
    assert ddp["loss"] == pytest.approx(one["loss"], abs=1e-5)


def test_two_ranks_log_the_losses_of_one_process_on_the_same_global_batch(tmp_path: Path) -> None:
    """GroupNorm model (no batch statistics): DDP's mean of 2 x 16-image gradients is the 32-image one."""
    args = ["--model", GN_MODEL, *TRAIN_ARGS[2:], "--epochs", "1"]
    check(run(torchrun(["train", *args, "--out", str(tmp_path / "ddp")], entry=True), rank_env(tmp_path), tmp_path))
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(registry._REGISTRY, GN_MODEL, gn_model_info())
        resnetkit.train(GN_MODEL, "synthetic:261", model_kwargs={"width_mult": 0.25}, batch_size=32,
                        precision="fp32", log_steps=True, epochs=1, out=str(tmp_path / "one"))
    ddp, one = _lines(tmp_path / "ddp" / "steps.jsonl"), _lines(tmp_path / "one" / "steps.jsonl")
    assert [s["step"] for s in ddp] == [s["step"] for s in one] == list(range(STEPS_PER_EPOCH))
    for a, b in zip(ddp, one):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5), a["step"]
    assert len({round(s["loss"], 4) for s in one}) > 1  # the losses move, so agreeing means something
    m_ddp, m_one = _lines(tmp_path / "ddp" / "metrics.jsonl")[0], _lines(tmp_path / "one" / "metrics.jsonl")[0]
    assert m_ddp["train_loss"] == pytest.approx(m_one["train_loss"], abs=1e-5)
    assert m_ddp["train_acc"] == m_one["train_acc"]


def test_sync_bn_without_cuda_is_a_user_error() -> None:
    cfg = resolve_config(model="resnet20", data="synthetic:64", batch_size=32, sync_bn=True, device="cpu")
    with pytest.raises(UserError, match="--sync-bn needs CUDA"):
        build(cfg, None, DistContext(rank=0, local_rank=0, world_size=2), None)
    assert torch.distributed.is_initialized() is False  # refused before any collective


def test_a_stem_frozen_mid_run_keeps_the_ranks_equal(tmp_path: Path) -> None:
    """cpu-fast freezes resnet_cpu's stem after --stem-epochs: DDP is told that parameters stop getting gradients."""
    args = ["--recipe", "cpu-fast", "--data", "synthetic:261", "--batch-size", "32", "--precision", "fp32",
            "--epochs", "2", "--stem-epochs", "1", "--no-report"]
    check(run(torchrun(["train", *args, "--out", str(tmp_path / "run")]), rank_env(tmp_path, dump=tmp_path / "dump"),
              tmp_path))
    rank0, rank1 = load_dumps(tmp_path / "dump")
    assert_same_state(rank0, rank1)
    assert peek(tmp_path / "run" / "last.pt")["global_step"] == 2 * STEPS_PER_EPOCH
