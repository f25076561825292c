"""Inputs a run cannot use are refused in one sentence before any slow work (the precision probe).

Images smaller than a network's pooling layers take used to end in a PyTorch traceback from inside
the model; a batch larger than the data was refused only after the probe had timed every precision.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

import resnetkit
from resnetkit.checkpoint import peek
from resnetkit.models import create_model

setup_mod = importlib.import_module("resnetkit.training.setup")


@pytest.mark.parametrize("name, smallest", [("resnet_cpu", 16), ("resnet_cpu_fullres", 9), ("resnet9", 8),
                                            ("resnet20", 1)])
def test_each_network_states_the_smallest_images_it_takes(name: str, smallest: int) -> None:
    model = create_model(name).eval()
    assert model.min_input_size == smallest
    with torch.no_grad():
        assert model(torch.zeros(1, 3, smallest, smallest)).shape == (1, 10)
        if smallest > 1:
            with pytest.raises(ValueError, match=f"at least {smallest}x{smallest} pixels, got {smallest - 1}x"):
                model(torch.zeros(1, 3, smallest - 1, smallest - 1))


@pytest.fixture()
def probe_calls(monkeypatch: pytest.MonkeyPatch) -> list:
    calls: list = []
    monkeypatch.setattr(setup_mod, "resolve_precision_layout", lambda *a, **k: calls.append(a) or ("fp32", False))
    return calls


def test_images_too_small_for_the_network_are_refused_before_the_probe(tmp_path: Path, probe_calls: list) -> None:
    with pytest.raises(resnetkit.UserError, match="resnet_cpu takes images of at least 16x16 pixels, but this run "
                                                  "would train at 12x12; use image_size=16 or more"):
        resnetkit.train("resnet_cpu", "synthetic:64", image_size=12, epochs=1, out=str(tmp_path / "run"))
    with pytest.raises(resnetkit.UserError, match="would train at 8x8"):  # a progressive size counts too
        resnetkit.train("resnet_cpu", "synthetic:64", progressive_sizes=[8, 32], epochs=1, out=str(tmp_path / "r2"))
    assert probe_calls == [] and not (tmp_path / "run").exists()


def test_a_batch_larger_than_the_data_is_refused_before_the_probe(tmp_path: Path, probe_calls: list) -> None:
    with pytest.raises(resnetkit.UserError, match="--batch-size 100 is larger than the 64 training images"):
        resnetkit.train("resnet20", "synthetic:64", batch_size=100, epochs=1, out=str(tmp_path / "run"))
    assert probe_calls == []


def test_small_images_a_network_takes_still_train(tmp_path: Path) -> None:
    r = resnetkit.train("resnet_cpu", "synthetic:64", image_size=16, epochs=1, batch_size=32, precision="fp32",
                        out=str(tmp_path / "run"), progress=False)
    ckpt = peek(r.out_dir / "last.pt")
    assert ckpt["image_size"] == 16 and ckpt["global_step"] == 2  # 64 images in batches of 32


def test_a_run_paused_by_stop_after_steps_says_so_and_counts_its_seconds(tmp_path: Path, capsys) -> None:
    from resnetkit.cli import main

    out = tmp_path / "run"
    # 64 images in batches of 16: 4 steps an epoch; stop 2 steps into the second of 3 epochs
    assert main(["train", "--model", "resnet20", "--data", "synthetic:64", "--image-size", "8", "--batch-size", "16",
                 "--precision", "fp32", "--epochs", "3", "--stop-after-steps", "6", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "after 1.50 epochs; train " in lines[-2]  # was "after 1 epoch(s)"
    assert lines[-1] == (f"resnetkit train: stopped at step 6 as --stop-after-steps asked; {out}/last.pt holds it, "
                         f"continue with --resume {out}")
    saved = json.loads((out / "result.json").read_text())
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and saved["train_seconds"] > rows[0]["seconds"]  # the half epoch's seconds count too


def test_data_of_one_class_trains_with_a_warning(tmp_path: Path, caplog) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 2)):
        (tmp_path / "d" / split / "cat").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "d" / split / "cat" / f"{i}.png")
    with caplog.at_level("WARNING", logger="resnetkit"):
        r = resnetkit.train("resnet20", str(tmp_path / "d"), epochs=1, precision="fp32", out=str(tmp_path / "run"),
                            progress=False)
    assert r.test["top1"] == 1.0  # trivially: the only class
    assert any("the data has one class (cat)" in m for m in caplog.messages)


def test_top5_is_left_out_of_the_summary_lines_for_five_classes_or_fewer(tmp_path: Path, capsys) -> None:
    import numpy as np
    from PIL import Image

    from resnetkit.cli import main

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 2)):
        for c in ("cat", "dog", "owl"):
            (tmp_path / "d" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(
                    tmp_path / "d" / split / c / f"{i}.png")
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet20", "--data", str(tmp_path / "d"), "--epochs", "1", "--precision", "fp32",
                 "--out", str(run), "--no-report"]) == 0
    line = capsys.readouterr().out
    assert "test top-1 " in line and "top-5" not in line  # top-5 of 3 classes is always 100%
    assert main(["eval", str(run / "last.pt"), "--out", str(tmp_path / "ev")]) == 0
    line = capsys.readouterr().out
    assert "top-1 " in line and "top-5" not in line
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["top5"] == 1.0  # still in the files


def test_a_run_directory_inside_the_image_folder_is_refused(tmp_path: Path, probe_calls: list) -> None:
    import numpy as np
    from PIL import Image

    from resnetkit.errors import UserError

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp_path / "d" / split / c).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "d" / split / c / "0.png")
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "d").rglob("*"))
    for out in (tmp_path / "d", tmp_path / "d" / "runs" / "a", tmp_path / "d" / "train"):
        with pytest.raises(UserError, match="is inside the image folder"):
            resnetkit.train("resnet20", str(tmp_path / "d"), epochs=1, out=str(out), progress=False)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "d").rglob("*")) == before and probe_calls == []


def test_progressive_sizes_above_the_images_own_train_with_a_warning(tmp_path: Path, caplog) -> None:
    with caplog.at_level("WARNING", logger="resnetkit"):
        r = resnetkit.train("resnet20", "synthetic:64", image_size=16, progressive_sizes=[16, 24], epochs=2,
                            batch_size=32, precision="fp32", out=str(tmp_path / "run"), progress=False)
    assert len(r.history) == 2
    assert any("progressive sizes 24 exceed the images' 16 px" in m for m in caplog.messages), caplog.messages
