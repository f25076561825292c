"""A checkpoint that does not fit (another architecture, another class count or class names):
resume and load fail with an error naming the mismatch and write nothing; explicit fine-tuning
with ``pretrained=`` re-initialises the classifier and nothing else."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnetkit
from resnetkit.checkpoint import CheckpointError, peek
from resnetkit.errors import UserError
from resnetkit.models import create_model

from ._helpers import BASE, differing, weights

setup_mod = importlib.import_module("resnetkit.training.setup")


def image_folder(root: Path, classes: tuple[str, ...], per_class: int = 12) -> Path:
    rng = np.random.default_rng(len(classes))
    for split, n in (("train", per_class), ("test", 3)):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def snapshot(run: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run.iterdir())}


def edited_copy(src: Path, dst: Path, **config) -> Path:
    """A run directory whose checkpoint claims other settings (as if it came from another run)."""
    shutil.copytree(src, dst)
    ckpt = peek(dst / "last.pt")
    ckpt["config"].update(config)
    torch.save(ckpt, dst / "last.pt")
    return dst


@pytest.mark.parametrize("change, words", [
    ({"model_kwargs": {"drop_rate": 0.2, "width_mult": 1.0}},
     "shape differs at conv1.weight: checkpoint (8, 3, 3, 3) vs model (16, 3, 3, 3)"),
    ({"model": "resnet32"}, "72 model tensor(s) missing from it (first: layer1.3.conv1.weight)"),
], ids=["wider", "deeper"])
def test_resuming_into_another_architecture_names_the_mismatch(reference: dict, tmp_path: Path,
                                                              change: dict, words: str) -> None:
    run = edited_copy(reference["at25"], tmp_path / "run", **change)
    before = snapshot(run)
    with pytest.raises(CheckpointError) as info:
        resnetkit.resume(run)
    assert str(info.value).startswith("the checkpoint does not fit this model: ") and words in str(info.value)
    assert snapshot(run) == before  # not a byte or a timestamp changed


def test_resuming_after_the_data_changed_names_the_classes(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "data", ("cat", "dog", "fox"))
    run = tmp_path / "run"
    resnetkit.train(**{**BASE, "data": str(data)}, stop_after_steps=1, out=str(run))
    assert peek(run / "last.pt")["classes"] == ["cat", "dog", "fox"]
    before = snapshot(run)

    image_folder(data, ("gnu",))  # a class was added
    with pytest.raises(CheckpointError) as info:
        resnetkit.resume(run)
    assert "class count differs at fc.weight: checkpoint (3, 32) vs model (4, 32)" in str(info.value)
    assert snapshot(run) == before

    shutil.rmtree(data / "train" / "gnu"), shutil.rmtree(data / "test" / "gnu")
    for split in ("train", "test"):  # same count, other names: the labels would silently mean other things
        (data / split / "fox").rename(data / split / "owl")
    with pytest.raises(UserError) as info:
        resnetkit.resume(run)
    assert str(info.value) == (f"cannot resume {run}: its data {data} now has classes ['cat', 'dog', 'owl'], but "
                               f"the checkpoint was trained on ['cat', 'dog', 'fox']; start a new run instead")
    assert snapshot(run) == before


def test_loading_or_evaluating_a_mismatched_checkpoint_names_it(reference: dict, tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    ckpt = peek(reference["run"] / "last.pt")
    ckpt["model_kwargs"]["num_classes"] = 5
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as info:
        resnetkit.load_checkpoint(path)
    assert str(info.value).startswith(f"{path} does not fit this model: class count differs at fc.weight: "
                                      f"checkpoint (10, 32) vs model (5, 32)")
    data = image_folder(tmp_path / "data", ("cat", "dog", "fox"))
    with pytest.raises(UserError, match=r"the classes of .*data differ from the checkpoint's \(only the data has "
                                        r"cat, dog, fox; only the checkpoint has disk, square, ring, cross, "
                                        r"triangle and 5 more\)$"):
        resnetkit.evaluate(reference["run"] / "last.pt", str(data))


@pytest.fixture()
def start(monkeypatch: pytest.MonkeyPatch) -> dict:
    """The model's state right after ``pretrained=`` weights are applied (before step 1)."""
    seen: dict = {}
    real = setup_mod.apply_pretrained

    def spy(model, *args, **kwargs):
        out = real(model, *args, **kwargs)
        seen["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return out

    monkeypatch.setattr(setup_mod, "apply_pretrained", spy)
    return seen


def test_pretrained_reinitialises_only_the_classifier(reference: dict, start: dict, tmp_path: Path) -> None:
    source = weights(reference["run"] / "last.pt")  # 10 classes
    data = image_folder(tmp_path / "data", ("cat", "dog", "fox"))
    result = resnetkit.train(**{**BASE, "data": str(data)}, pretrained=str(reference["run"] / "last.pt"),
                             max_steps=1, out=str(tmp_path / "ft"))
    first = start["state"]
    backbone = [k for k in source if not k.startswith("fc.")]
    assert len(backbone) > 50 and [k for k in backbone if not torch.equal(first[k], source[k])] == []
    torch.manual_seed(BASE["seed"])  # what the run draws for a fresh 3-class model
    fresh = create_model("resnet20", num_classes=3, **BASE["model_kwargs"]).state_dict()
    assert tuple(first["fc.weight"].shape) == (3, 32)
    assert torch.equal(first["fc.weight"], fresh["fc.weight"]) and torch.equal(first["fc.bias"], fresh["fc.bias"])
    assert result.classes == ["cat", "dog", "fox"]


def test_pretrained_with_the_same_classes_keeps_the_classifier(reference: dict, start: dict,
                                                               tmp_path: Path) -> None:
    source = weights(reference["run"] / "last.pt")
    resnetkit.train(**BASE, pretrained=str(reference["run"] / "last.pt"), max_steps=1, out=str(tmp_path / "ft"))
    assert differing(start["state"], source) == []  # every tensor, the classifier included
