"""A run's data path is stored absolute, so the run resumes from any directory, and moved data is named.

A run started with a relative ``--data`` from one directory used to fail to resume (and ``eval``
without ``--data`` to fail) from any other: the checkpoint held the path as typed, and giving the
absolute path was refused as a changed setting.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import resnetkit
from resnetkit.checkpoint import peek

RUN = dict(model="resnet20", epochs=2, batch_size=8, precision="fp32", device="cpu")


def _tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(n):
                Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(root / split / label / f"{i}.png")
    return root


@pytest.fixture()
def stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run on ``project/photos`` given as the relative path ``photos``, stopped after 2 of its 6 steps."""
    project = tmp_path / "project"
    _tree(project / "photos")
    monkeypatch.chdir(project)
    resnetkit.train(data="photos", stop_after_steps=2, out=str(tmp_path / "run"), progress=False, **RUN)
    monkeypatch.chdir(tmp_path)  # resume from elsewhere, as a requeued job or another shell would
    return tmp_path / "run"


def test_a_relative_data_path_is_stored_absolute_and_resumes_from_another_directory(stopped: Path) -> None:
    saved = peek(stopped / "last.pt")
    assert saved["config"]["data"] == os.path.join(stopped.parent, "project", "photos")
    assert saved["global_step"] == 2
    result = resnetkit.resume(stopped, progress=False)
    assert peek(result.out_dir / "last.pt")["global_step"] == 6
    metrics = resnetkit.evaluate(stopped / "best.pt")  # no data given: the run's own, found from here
    assert metrics["count"] == 8


def test_moved_data_is_named_and_resumes_where_it_now_is(stopped: Path) -> None:
    moved = stopped.parent / "elsewhere"
    (stopped.parent / "project" / "photos").rename(moved)
    with pytest.raises(resnetkit.UserError, match="data .*photos does not exist.*resume with data set to"):
        resnetkit.resume(stopped, progress=False)
    result = resnetkit.resume(stopped, data=str(moved), progress=False)
    final = peek(result.out_dir / "last.pt")
    assert final["global_step"] == 6 and final["config"]["data"] == str(moved)


def test_synthetic_data_stays_a_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = resnetkit.training.config.resolve_config(data="synthetic:64", **RUN)
    assert cfg.data == "synthetic:64"
