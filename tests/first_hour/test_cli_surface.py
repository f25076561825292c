"""What a newcomer meets at the command line: help with real defaults, a recipes table, integer
epochs, --data required, eval/export outputs never silently replaced, one spelling per audience,
umask-following cache files, empty class folders (items 2, 5, 8 and most of 11)."""

from __future__ import annotations

import argparse
import os
import shutil
import stat
from pathlib import Path

import pytest

import resnetkit
from resnetkit.cli import build_parser, main
from resnetkit.errors import UserError

from ._helpers import save_checkpoint


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _error(capsys: pytest.CaptureFixture, command: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"resnetkit {command}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------ item 2 and 11: eval --out
@pytest.fixture
def ckpt3(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "run" / "best.pt")


def test_eval_out_that_is_a_file_is_one_sentence(ckpt3: Path, tmp_path: Path, tiny3: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    existing = tmp_path / "existing_file"
    existing.write_text("keep me")
    assert main(["eval", str(ckpt3), "--out", str(existing)]) == 2  # the command
    assert "exists and is not a folder" in _error(capsys, "eval")
    assert existing.read_text() == "keep me"
    assert main(["eval", str(ckpt3), "--data", str(tiny3), "--out", str(existing / "sub")]) == 2  # cannot be made
    assert "cannot write" in _error(capsys, "eval")


def test_eval_refuses_to_replace_an_earlier_evaluation(ckpt3: Path, tmp_path: Path, tiny3: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ev"
    args = ["eval", str(ckpt3), "--data", str(tiny3), "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    first = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    line = _error(capsys, "eval")
    assert "already holds an evaluation" in line and "--overwrite" in line and "overwrite=True" not in line
    assert (out / "metrics.json").read_bytes() == first
    assert main([*args, "--overwrite"]) == 0
    with pytest.raises(UserError, match=r"overwrite=True") as e:  # the Python spelling for the API
        resnetkit.evaluate(ckpt3, str(tiny3), device="cpu", out=out)
    assert "--overwrite" not in str(e.value)


# ------------------------------------------------------------------------------ item 5: integer epochs
@pytest.mark.parametrize("value", ["1e9", "2.5", "0", "1000000"])
def test_epochs_must_be_a_sane_whole_number(value: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "resnet20", "--data", "synthetic", "--epochs", value, "--batch-size", "16"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--epochs" in err and "whole number" in err
    assert list(tmp_path.iterdir()) == []  # nothing created


# ------------------------------------------------------------------------------ item 8: --data required
def test_no_data_is_an_error_listing_the_choices(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", "resnet20", "--epochs", "1"]) == 2
    line = _error(capsys, "train")
    for choice in ("--data", "folder", "archive", "'cifar10'", "'synthetic'", "--download"):
        assert choice in line
    assert list(tmp_path.iterdir()) == []  # no runs/ folder
    with pytest.raises(UserError) as e:
        resnetkit.train("resnet20", epochs=1)
    assert "data" in str(e.value) and "--data" not in str(e.value)


def _tiny_train(tmp_path: Path, name: str, **kw) -> None:
    resnetkit.train("resnet20", "synthetic:32", epochs=1, image_size=8, batch_size=16, device="cpu",
                    precision="fp32", model_kwargs={"width_mult": 0.25}, out=str(tmp_path / name), **kw)


def test_api_progress_bar_when_interactive_and_silenced(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resnetkit.api, "interactive", lambda: True)
    _tiny_train(tmp_path, "a")
    shown = capsys.readouterr().err
    assert "epoch 1/1" in shown and "step" in shown  # tqdm inside the epoch
    _tiny_train(tmp_path, "b", progress=False)
    assert "epoch 1/1" not in capsys.readouterr().err


# ------------------------------------------------------------------------------ item 11: help and recipes
def test_every_train_option_has_help_with_the_recipe_default(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "None" not in text
    flat = " ".join(text.split())
    assert "peak learning rate (default: 0.2, from recipe 'default')" in flat
    assert "(default: 30, from recipe 'default')" in flat and "(default: 256, at most 1/16" in flat
    for name in ("tutorial", "default", "fast"):
        assert any(line.startswith(name + " ") for line in text.splitlines())  # the recipes table
    parser = _subparser(build_parser(), "train")
    missing = [a.option_strings for a in parser._actions if not a.help]
    assert missing == []
    with pytest.raises(SystemExit):
        main(["train", "--recipe", "fast", "--help"])
    flat = " ".join(capsys.readouterr().out.split())
    assert "peak learning rate (default: 0.4, from recipe 'fast')" in flat
    assert "(default: resnet9, from recipe 'fast')" in flat


def test_recipes_command_and_bench_help(capsys: pytest.CaptureFixture) -> None:
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[:5]}
    assert rows["fast"][1:6] == ["resnet9", "10", "512", "sgd", "0.4"]
    assert rows["default"][1:6] == ["resnet20", "30", "256", "sgd", "0.2"]
    assert rows["cpu-fast"][1:8] == ["resnet_cpu", "10", "512", "muon", "0.2", "/", "0.8"]  # Muon's lr / SGD's
    parser = build_parser()
    for path in (("bench", "throughput"), ("bench", "time-to-accuracy"), ("eval",), ("export",), ("predict",)):
        sub = _subparser(parser, *path)
        assert [a.option_strings for a in sub._actions if not a.help] == [], path


# ------------------------------------------------------------------------------ item 11: files and folders
def test_cache_files_follow_the_umask(tiny3: Path, tmp_path: Path) -> None:
    from resnetkit.data.prepare import prepare_data

    old = os.umask(0o022)
    try:
        prepare_data(tiny3, cache_dir=tmp_path / "cache")
    finally:
        os.umask(old)
    files = list((tmp_path / "cache").rglob("*.pt"))
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o644 for f in files)


def test_empty_class_folder_is_skipped_on_request_and_named_otherwise(
        tiny3: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from resnetkit.data.prepare import prepare_data

    root = tmp_path / "data"
    shutil.copytree(tiny3, root)
    (root / "train" / "zebra").mkdir()
    (root / "test" / "zebra").mkdir()
    with pytest.raises(UserError) as e:
        prepare_data(root, cache_dir=tmp_path / "c1")
    assert "skip_bad_images=True" in str(e.value) and "--skip" not in str(e.value)
    data = prepare_data(root, cache_dir=tmp_path / "c2", skip_bad_images=True)
    assert data.classes == ["airplane", "cat", "ship"] and len(data.train_labels) == 60
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", str(root), "--epochs", "1", "--out", str(tmp_path / "r")]) == 2
    line = _error(capsys, "train")
    assert "--skip-bad-images" in line and "skip_bad_images" not in line
