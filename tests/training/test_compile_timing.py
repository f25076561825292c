"""With --compile the warm-up compile is timed apart and not taken off the training time again."""

from __future__ import annotations

import torch

import resnetkit
from resnetkit.training import setup as setup_mod


def test_compile_seconds_are_apart_from_training_seconds(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, **_: module)  # no compiler needed for the accounting
    monkeypatch.setattr(setup_mod, "_warm_up_compiled", lambda _s: 1000.0)
    r = resnetkit.train("resnet20", dataset="synthetic", epochs=1, max_steps=3, batch_size=16, compile=True,
                        eval_every=0, out=str(tmp_path / "run"), progress=False, precision="fp32")
    epoch_seconds = sum(row["seconds"] for row in r.history)
    assert r.compile_seconds == 1000.0
    assert epoch_seconds > 0 and abs(r.train_seconds - epoch_seconds) < 1e-9
    assert r.wall_seconds < 1000.0  # the stubbed warm-up took no real time
