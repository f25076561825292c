"""What a checkpoint holds: model, optimizer, position, every global RNG state, best metric, config
and class names, all loadable with ``weights_only=True``; the loader needs no state of its own."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

import resnetkit
from resnetkit.checkpoint import FORMAT, atomic_save, safe_load
from resnetkit.data import loader as loader_mod
from resnetkit.data.loader import DeviceLoader
from resnetkit.data.synthetic import CLASSES
from resnetkit.runtime.device import rng_state, set_rng_state

from ._helpers import BASE, differing


def test_a_checkpoint_holds_everything_exact_resume_needs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = resnetkit.train(**{**BASE, "epochs": 2}, val_split=32, out=str(out))
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)  # plain, safe load
    assert (ckpt["format"], ckpt["format_version"]) == (FORMAT, 1)
    # position: 224 training images / 32 = 7 steps an epoch, 2 epochs done
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"], ckpt["epoch_done"]) == (2, 0, 14, True)
    # the model rebuilds from the checkpoint alone and holds exactly these weights
    model = resnetkit.load_checkpoint(out / "last.pt")
    assert differing(model.state_dict(), ckpt["model"]) == []
    assert ckpt["model_name"] == "resnet20" and ckpt["model_kwargs"] == {"drop_rate": 0.2, "width_mult": 0.5,
                                                                          "num_classes": 10, "in_channels": 3}
    # optimizer: a momentum buffer for every parameter, and the lr of the last step
    n_params = len(list(model.parameters()))
    state = ckpt["optimizer"]["state"]
    assert len(state) == n_params and all(s["momentum_buffer"].isfinite().all() for s in state.values())
    assert sum(len(g["params"]) for g in ckpt["optimizer"]["param_groups"]) == n_params
    assert ckpt["optimizer"]["param_groups"][-1]["lr"] == result.history[-1]["lr"]
    # every global RNG: torch (CPU generator), numpy (MT19937) and python's random
    rng = ckpt["rng"]
    assert rng["torch"].dtype == torch.uint8 and rng["torch"].numel() == torch.get_rng_state().numel()
    assert rng["numpy"][0] == "MT19937" and rng["numpy"][1].shape == (624,)
    assert rng["python"][0] == 3 and len(rng["python"][1]) == 625
    assert not any(k in ckpt for k in ("loader", "sampler"))  # epoch-seeded: (epoch, step) is all it needs
    # best metric, from the validation split, and best.pt is that epoch's checkpoint
    vals = [r["val_acc"] for r in result.history]
    assert ckpt["best"] == {"metric": "val_top1", "value": max(vals), "epoch": vals.index(max(vals)) + 1,
                            "weights": "raw"}  # no --ema: the raw weights won
    assert 0.0 <= max(vals) <= 1.0
    assert safe_load(out / "best.pt")["epoch"] == ckpt["best"]["epoch"]
    # configuration, classes, normalisation, image size
    assert ckpt["config"] == result.config and ckpt["config"]["seed"] == 3 and ckpt["config"]["val_split"] == 32
    assert ckpt["classes"] == CLASSES
    assert len(ckpt["mean"]) == len(ckpt["std"]) == 3 and ckpt["image_size"] == 16
    assert [r["epoch"] for r in ckpt["history"]] == [1, 2]


def _draws() -> tuple[torch.Tensor, np.ndarray, float, float]:
    return torch.rand(5), np.random.rand(5), random.random(), random.gauss(0, 1)


def test_rng_states_round_trip_through_a_saved_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(11), np.random.seed(12), random.seed(13)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    atomic_save({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = _draws()
    torch.manual_seed(0), np.random.seed(0), random.seed(0)  # anything else in between
    set_rng_state(safe_load(tmp_path / "rng.pt")["rng"])
    got = _draws()
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]


def test_the_loader_is_epoch_seeded_and_needs_no_rng_state() -> None:
    doc = " ".join((loader_mod.__doc__ or "").split())
    assert "independent of the device and of global RNG state" in doc and "skip_to" in doc
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (100,), generator=g)

    def epoch(seed: int, skip: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)  # global RNGs differ each time
        dl = DeviceLoader(images, labels, batch_size=16, seed=5)
        dl.set_epoch(3)
        dl.skip_to(skip)
        return list(dl)

    full = epoch(1)
    assert len(full) == 6
    again = epoch(2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full, again))
    tail = epoch(3, skip=4)  # a resume in the middle of epoch 3 serves exactly its last batches
    assert len(tail) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(full[4:], tail))
    other = DeviceLoader(images, labels, batch_size=16, seed=5)
    other.set_epoch(4)
    assert not torch.equal(next(iter(other))[1], full[0][1])  # a different epoch is a different order


def test_a_resume_keeps_the_precision_and_layout_auto_resolved_to(tmp_path: Path, monkeypatch) -> None:
    """``auto`` is resolved once, when the run starts: a resume must not ask the probe again, whose
    answer may differ after a cleared cache or on a near tie, and would change the kernels."""
    from resnetkit.training import setup as setup_mod

    out = tmp_path / "run"
    monkeypatch.setattr(setup_mod, "resolve_precision_layout", lambda *a, **k: ("fp32", False))
    resnetkit.train(**{**BASE, "epochs": 2, "precision": "auto", "stop_after_steps": 5}, out=str(out))
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["resolved_precision"] == {"precision": "fp32", "channels_last": False, "device_type": "cpu"}
    assert ckpt["config"]["precision"] == "auto"  # the settings keep what was asked

    def probe_again(*a, **k):
        raise AssertionError("a resume ran the precision probe again")

    monkeypatch.setattr(setup_mod, "resolve_precision_layout", probe_again)
    result = resnetkit.resume(str(out))
    assert (result.precision, result.channels_last) == ("fp32", False) and result.history[-1]["step"] == 16
    # a new run asks the probe
    monkeypatch.setattr(setup_mod, "resolve_precision_layout", lambda *a, **k: ("fp32", True))
    fresh = resnetkit.train(**{**BASE, "epochs": 1, "precision": "auto"}, out=str(tmp_path / "new"))
    assert fresh.channels_last is True
