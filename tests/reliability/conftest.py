"""Fixtures of the reliability suite: one-thread runs, no curve drawing, and the reference run."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import resnetkit
import resnetkit.plots
from resnetkit.training import rundir

from ._helpers import BASE


@pytest.fixture(scope="package", autouse=True)
def _quick_and_exact() -> Iterator[None]:
    """One intra-op thread (as the child processes get), and no curves.png.

    Bitwise comparisons need the same thread count in every process; on a loaded 2-core machine
    one thread is also ~30x faster than two spinning OpenMP threads. Drawing curves has nothing
    to do with reliability and costs seconds per epoch here.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(resnetkit.plots, "plot_curves", lambda *a, **k: None)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _restore_determinism() -> Iterator[None]:
    """A test that turns on deterministic algorithms must not leave them on for the next."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    if torch.are_deterministic_algorithms_enabled() != before:
        torch.use_deterministic_algorithms(before)


@pytest.fixture(scope="package")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The uninterrupted 4-epoch run, plus copies of its directory right after the mid-epoch
    checkpoints at steps 10 and 25 (what a crash just after those writes leaves behind)."""
    root = tmp_path_factory.mktemp("reference")
    out = root / "run"
    snaps = {10: root / "at10", 25: root / "at25"}
    real = rundir.atomic_save

    def save_and_snapshot(payload: dict, path: Path) -> None:
        real(payload, path)
        snap = snaps.get(payload["global_step"])
        if Path(path).name == "last.pt" and snap is not None and not snap.exists():
            shutil.copytree(out, snap)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rundir, "atomic_save", save_and_snapshot)
        resnetkit.train(**BASE, checkpoint_every=5, out=str(out))
    return {"run": out, **{f"at{k}": v for k, v in snaps.items()}}
