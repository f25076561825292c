"""Non-finite training: a NaN loss (injected at a known step, or a real divergence at lr=1e6) or
weights that overflow while the loss is still finite stop the run with NonFiniteLossError naming
the step; no checkpoint with a non-finite tensor is ever written, and last.pt is the last good one."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch

import resnetkit
from resnetkit.checkpoint import peek
from resnetkit.training import rundir
from resnetkit.training.loop import NonFiniteLossError

from ._helpers import BASE, differing, step_losses, weights


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


@pytest.fixture()
def saves(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every checkpoint the run writes: file, step, whether all weights are finite, and a copy."""
    seen: list[dict] = []
    real = rundir.atomic_save

    def spy(payload: dict, path: Path) -> None:
        seen.append({"file": Path(path).name, "step": payload["global_step"], "finite": all_finite(payload["model"]),
                     "model": copy.deepcopy(payload["model"])})
        real(payload, path)

    monkeypatch.setattr(rundir, "atomic_save", spy)
    return seen


def test_nan_loss_at_a_known_step(reference: dict, saves: list[dict], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    real_ce = torch.nn.functional.cross_entropy
    calls = {"train": 0}

    def poisoned(logits, y, *args, **kwargs):
        loss = real_ce(logits, y, *args, **kwargs)
        if "label_smoothing" in kwargs:  # training steps (evaluation sums without smoothing)
            calls["train"] += 1
            if calls["train"] == 12:  # step 11 (0-based) = epoch 2, batch 4
                return loss * float("nan")
        return loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", poisoned)
    with pytest.raises(NonFiniteLossError) as info:
        resnetkit.train(**BASE, checkpoint_every=1, out=str(out))
    assert str(info.value) == ("the training loss became nan at step 11 (epoch 2, batch 4); stopped without saving "
                               f"these weights; {out / 'last.pt'} keeps the last good state (step 11), but a resume "
                               "keeps the same settings: start again with a lower lr and overwrite, or check the data")
    assert [s["step"] for s in saves if s["file"] == "last.pt"] == [*range(1, 9), 8, 9, 10, 11]
    assert all(s["finite"] for s in saves)  # no checkpoint ever held a NaN
    ckpt = peek(out / "last.pt")
    assert ckpt["global_step"] == 11 and all_finite(ckpt["model"])
    assert differing(ckpt["model"], saves[-1]["model"]) == []  # exactly the checkpoint before the bad step
    assert all_finite(weights(out / "best.pt"))
    losses = step_losses(out)
    assert [s for s, _ in losses] == list(range(11)) and all(v == v for _, v in losses)
    monkeypatch.undo()  # the fault was transient: resuming from last.pt finishes the run exactly
    resnetkit.resume(out)
    assert differing(weights(out / "last.pt"), weights(reference["run"] / "last.pt")) == []


def test_a_real_divergence_at_lr_1e6(saves: list[dict], tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as info:
        resnetkit.train(**{**BASE, "epochs": 1}, lr=1e6, warmup_epochs=0, checkpoint_every=1, out=str(out))
    m = re.match(r"the (training loss|weights) became \S+ (?:at|by) step (\d+)", str(info.value))
    assert m is not None, str(info.value)
    assert int(m.group(2)) < 8  # it diverged within the first epoch and stopped there
    assert "last.pt keeps the last good state" in str(info.value)
    assert all(s["finite"] for s in saves)
    if (out / "last.pt").exists():
        assert all_finite(weights(out / "last.pt"))


def test_weights_that_overflow_while_the_loss_is_finite(saves: list[dict], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    real_step = torch.optim.SGD.step
    calls = {"n": 0}

    def overflowing(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 7:  # the 7th update overflows one weight (the loss that led to it was finite)
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return result

    monkeypatch.setattr(torch.optim.SGD, "step", overflowing)
    with pytest.raises(NonFiniteLossError) as info:
        resnetkit.train(**BASE, checkpoint_every=1, out=str(out))
    assert str(info.value).startswith("the weights became non-finite by step 7 (first: bn1.weight); stopped "
                                      f"without saving them; {out / 'last.pt'} keeps the last good state (step 6)")
    assert all(s["finite"] for s in saves) and saves[-1]["step"] == 6
    assert peek(out / "last.pt")["global_step"] == 6 and all_finite(weights(out / "last.pt"))
