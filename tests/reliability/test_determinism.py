"""Determinism: the same seed gives bitwise-identical CPU runs, another seed other weights, and
``deterministic=True`` really runs under ``torch.use_deterministic_algorithms``."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

import resnetkit

from ._helpers import BASE, differing, step_losses, weights

run_mod = importlib.import_module("resnetkit.training.trainer")
ONE_EPOCH = {**BASE, "epochs": 1}


@pytest.fixture()
def flag_during_training(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """``torch.are_deterministic_algorithms_enabled()`` at the start of every training epoch."""
    seen: list[bool] = []
    real = run_mod.train_epoch

    def spy(*args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(run_mod, "train_epoch", spy)
    return seen


def test_same_seed_same_bits_other_seed_other_weights(tmp_path: Path) -> None:
    runs = {name: tmp_path / name for name in ("a", "b", "c")}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        resnetkit.train(**{**ONE_EPOCH, "seed": seed}, out=str(runs[name]))
    a, b, c = (weights(runs[n] / "last.pt") for n in "abc")
    assert differing(a, b) == [] and step_losses(runs["a"]) == step_losses(runs["b"])
    floats = [k for k, v in a.items() if v.is_floating_point()]
    assert len(set(differing(a, c)) & set(floats)) == len(floats)  # every float tensor differs
    assert [v for _, v in step_losses(runs["a"])] != [v for _, v in step_losses(runs["c"])]


def test_deterministic_true_is_on_during_the_run_and_off_again_after(
        tmp_path: Path, flag_during_training: list[bool]) -> None:
    assert not torch.are_deterministic_algorithms_enabled()
    resnetkit.train(**ONE_EPOCH, deterministic=True, out=str(tmp_path / "det"))
    assert flag_during_training == [True]
    resnetkit.train(**ONE_EPOCH, deterministic=False, out=str(tmp_path / "free"))
    assert flag_during_training == [True, False]  # a later run without it is not left in deterministic mode
    assert not torch.are_deterministic_algorithms_enabled()
    # on CPU the deterministic kernels are the same ones: the two runs agree bit for bit
    assert differing(weights(tmp_path / "det" / "last.pt"), weights(tmp_path / "free" / "last.pt")) == []
