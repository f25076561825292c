"""Where a Ray Train worker group starts (no Ray needed): Ray's checkpoint first, else the run
directory's ``last.pt`` (a failure before Ray registered any checkpoint), else a new run; and the
driver refuses an ``out`` that holds another run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import resnetkit
import resnetkit.plots
from resnetkit.errors import UserError
from resnetkit.training.config import resolve_config
from resnetkit.training.ray_train import _claim_out, start_point

#: 64 synthetic 16x16 images, batch 16: 4 steps an epoch; the first part stops after step 3.
TINY = dict(model="resnet20", data="synthetic:64", image_size=16, batch_size=16, epochs=2, seed=1,
            model_kwargs={"width_mult": 0.25}, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run in its directory, stopped after step 3 of 8 (as a killed Ray worker group leaves it)."""
    out = tmp_path_factory.mktemp("ray-start") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(resnetkit.plots, "plot_curves", lambda *a, **k: None)
        resnetkit.train(**TINY, stop_after_steps=3, out=str(out))
    torch.set_num_threads(threads)
    return out


def test_without_a_ray_checkpoint_the_run_directory_continues(stopped_run: Path) -> None:
    cfg, ckpt = start_point(resolve_config(**TINY, out=str(stopped_run)), None)
    assert ckpt is not None and ckpt["global_step"] == 3
    assert cfg.out == str(stopped_run) and cfg.stop_after_steps is None and cfg.epochs == 2


def test_ray_checkpoint_wins_over_the_run_directory(stopped_run: Path, tmp_path: Path) -> None:
    ray_dir = tmp_path / "checkpoint_000"
    ray_dir.mkdir()
    shutil.copy2(stopped_run / "last.pt", ray_dir / "last.pt")
    ckpt_ray = torch.load(ray_dir / "last.pt", weights_only=True)
    ckpt_ray["global_step"] = 2  # an older checkpoint than the run directory's (3)
    torch.save(ckpt_ray, ray_dir / "last.pt")
    cfg, ckpt = start_point(resolve_config(**TINY, out=str(stopped_run)), ray_dir / "last.pt")
    assert ckpt is not None and ckpt["global_step"] == 2
    assert cfg.out == str(stopped_run)  # the run directory stays this run's, not Ray's checkpoint folder


def test_a_new_run_starts_in_an_empty_directory(tmp_path: Path) -> None:
    cfg, ckpt = start_point(resolve_config(**TINY, out=str(tmp_path / "new")), None)
    assert ckpt is None and cfg.overwrite


def test_the_driver_refuses_another_run_unless_overwrite(stopped_run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(stopped_run, other)
    with pytest.raises(UserError, match="already holds a run"):
        _claim_out(resolve_config(**TINY, out=str(other)))
    assert (other / "last.pt").is_file()
    _claim_out(resolve_config(**TINY, out=str(other), overwrite=True))
    assert not (other / "last.pt").exists()  # so no worker continues the replaced run
    _claim_out(resolve_config(**TINY, out=str(tmp_path / "fresh")))  # nothing there: fine
