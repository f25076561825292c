"""A folder with only train/ (item 9): ``--test-split FRACTION`` carves a seeded, stratified test
split, records it in the run directory, and ``eval`` of the run uses the same held-out images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import resnetkit
from resnetkit.cli import main
from resnetkit.data.holdout import carve_test_split
from resnetkit.data.prepare import prepare_data
from resnetkit.errors import UserError

from ._helpers import CLASSES3, extract_folder


@pytest.fixture(scope="module")
def train_only(cifar_jpeg: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train/<class>/`` only: 20 airplanes, 7 cats, 1 ship (uneven, to test the per-class rule)."""
    root = extract_folder(cifar_jpeg, tmp_path_factory.mktemp("trainonly"), CLASSES3, 20, None)
    for cls, keep in (("cat", 7), ("ship", 1)):
        for extra in sorted((root / "train" / cls).iterdir())[keep:]:
            extra.unlink()
    assert not (root / "test").exists()
    return root


def _entries(counts: list[int]) -> list[tuple[str, int]]:
    return [(f"train/c{label}/{i:04d}.jpg", label) for label, n in enumerate(counts) for i in range(n)]


def test_carve_is_stratified_and_keeps_a_training_image_per_class() -> None:
    train, test = carve_test_split(_entries([20, 7, 1, 3, 2]), 0.25, seed=0)
    per_class = [sum(1 for _, label in test if label == k) for k in range(5)]
    # round(0.25 n), at least 1 when n >= 2, never a class's last image
    assert per_class == [5, 2, 0, 1, 1]
    assert len(train) + len(test) == 33 and not set(train) & set(test)
    assert all(any(label == k for _, label in train) for k in range(5))


def test_carve_is_fixed_by_its_seed() -> None:
    entries = _entries([50, 50])
    first = carve_test_split(entries, 0.2, seed=3)
    assert carve_test_split(list(reversed(entries)), 0.2, seed=3) == first  # input order does not matter
    other = carve_test_split(entries, 0.2, seed=4)
    assert other[1] != first[1] and len(other[1]) == len(first[1]) == 20


def test_folder_split_counts_disjoint_and_cached_identically(train_only: Path, tmp_path: Path) -> None:
    a = prepare_data(train_only, test_split=0.2, cache_dir=tmp_path / "c1")
    b = prepare_data(train_only, test_split=0.2, cache_dir=tmp_path / "c2")  # decoded again, not from a's cache
    c = prepare_data(train_only, test_split=0.2, cache_dir=tmp_path / "c1")  # from the cache
    assert a.test_labels.bincount(minlength=3).tolist() == [4, 1, 0]  # 20, 7, 1 images -> 4, 1, 0
    assert a.train_labels.bincount(minlength=3).tolist() == [16, 6, 1]
    for other in (b, c):
        assert torch.equal(a.test_images, other.test_images) and torch.equal(a.train_images, other.train_images)
    flat_train = a.train_images.flatten(1)
    for img in a.test_images.flatten(1):  # no held-out image is also a training image
        assert not (flat_train == img).all(1).any()
    d = prepare_data(train_only, test_split=0.2, test_split_seed=1, cache_dir=tmp_path / "c1")
    assert not torch.equal(a.test_images, d.test_images)  # the seed is part of the cache key


def test_train_only_folder_without_the_option_suggests_it(train_only: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--data", str(train_only), "--epochs", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--test-split 0.1" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(UserError, match=r"test_split=0.1"):  # the Python spelling from the API
        prepare_data(train_only, cache_dir=tmp_path / "c")


def test_option_refused_where_it_has_no_meaning(tiny3: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(UserError, match="already has a test/ split"):
        prepare_data(tiny3, test_split=0.1, cache_dir=tmp_path / "c")
    with pytest.raises(UserError, match="for image folders"):
        prepare_data("synthetic:64", test_split=0.1)
    assert main(["train", "--data", str(tiny3), "--epochs", "1", "--test-split", "1.5", "--out",
                 str(tmp_path / "r")]) == 2
    assert "between 0 and 1" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_run_records_the_split_and_eval_uses_it(train_only: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    shutil.copytree(train_only, data)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--epochs", "1", "--test-split", "0.2", "--test-split-seed", "5",
                 "--width-mult", "0.25", "--precision", "fp32", "--out", str(run)]) == 0
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["test_split"] == {"fraction": 0.2, "seed": 5, "images": 5}
    assert (recorded["config"]["test_split"], recorded["config"]["test_split_seed"]) == (0.2, 5)
    trained = json.loads((run / "result.json").read_text())["test"]
    # the report's evaluation and Grad-CAM maps use the held-out split too (there is no test/ folder)
    assert (run / "report.html").is_file()
    assert json.loads((run / "eval" / "metrics.json").read_text())["count"] == 5
    assert len(list((run / "explain").glob("*.png"))) == 2  # one per class held out (the lone ship stays in train)
    monkeypatch.setenv("RESNETKIT_CACHE", str(tmp_path / "fresh"))  # eval carves again, not from train's cache
    metrics = resnetkit.evaluate(run / "best.pt", device="cpu", precision="fp32")
    assert sum(map(sum, metrics["confusion"])) == 5  # the 4 + 1 held-out images, not the 28 of train/
    assert metrics["top1"] == pytest.approx(trained["top1"])
    assert metrics["loss"] == pytest.approx(trained["loss"], rel=1e-4)
