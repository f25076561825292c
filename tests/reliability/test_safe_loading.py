"""Safe loading everywhere: a checkpoint whose pickle would run code is refused at every entry
point (and the code never runs), truncated or garbage files are named in one clear error, and
the source tree has no unsafe load at all."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

import resnetkit
from resnetkit.checkpoint import FORMAT, CheckpointError, peek
from resnetkit.cli import main
from resnetkit.data.prepare import prepare_data
from resnetkit.errors import UserError

from ._helpers import BASE, error_lines

SRC = Path(resnetkit.__file__).resolve().parent


class RunsCode:
    """Unpickling this calls ``fn(arg)``, which creates the marker file."""

    def __init__(self, fn, arg) -> None:
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


def payloads(marker: Path) -> dict[str, object]:
    by_exec = RunsCode(exec, f"open({str(marker)!r}, 'w').close()")
    by_system = RunsCode(os.system, f"touch {marker}")
    return {
        "bare exec": by_exec,
        "resnetkit-shaped with os.system inside": {"format": FORMAT, "format_version": 1,
                                                   "model": {"w": torch.ones(2)}, "config": by_system},
    }


def entry_points(path: Path, run_dir: Path, tmp: Path) -> dict:
    """Every way a user hands resnetkit a checkpoint file; each must raise a UserError."""
    return {
        "peek": lambda: peek(path),
        "load_checkpoint": lambda: resnetkit.load_checkpoint(path),
        "evaluate": lambda: resnetkit.evaluate(path, "synthetic:64"),
        "resume": lambda: resnetkit.resume(run_dir),
        "pretrained": lambda: resnetkit.train(**BASE, pretrained=str(path), out=str(tmp / "ft")),
    }


@pytest.mark.parametrize("kind", ["bare exec", "resnetkit-shaped with os.system inside"])
def test_a_checkpoint_that_would_run_code_is_refused_everywhere(
        tmp_path: Path, capsys: pytest.CaptureFixture, kind: str) -> None:
    marker = tmp_path / "PWNED"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = run_dir / "last.pt"
    torch.save(payloads(marker)[kind], path)
    if kind == "bare exec":  # the payload is live: a plain unpickler does run it
        with zipfile.ZipFile(path) as zf:
            pickle.loads(zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl"))))
        assert marker.exists()
        marker.unlink()
    for name, call in entry_points(path, run_dir, tmp_path).items():
        with pytest.raises(UserError) as info:
            call()
        msg = str(info.value)
        assert msg.startswith(f"refusing to load {path}: it contains Python objects that could run code"), (name, msg)
        assert not marker.exists(), name
    for argv in (["eval", str(path)], ["train", "--resume", str(run_dir)], ["predict", str(path), str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(error_lines(err, argv[0])) == 1 and "refusing to load" in err and "Traceback" not in err
    assert not marker.exists()
    assert sorted(p.name for p in run_dir.iterdir()) == ["last.pt"]  # the refused resume wrote nothing


def test_a_poisoned_data_cache_is_never_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    cache = tmp_path / "cache"
    monkeypatch.setenv("RESNETKIT_CACHE", str(cache))
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            Image.new("RGB", (4, 4), (len(c) * 40, 9, 9)).save(tmp_path / "data" / split / c / "0.png")
    first = prepare_data(tmp_path / "data")
    (cached,) = list(cache.rglob("*.pt"))
    marker = tmp_path / "PWNED"
    torch.save(RunsCode(exec, f"open({str(marker)!r}, 'w').close()"), cached)
    again = prepare_data(tmp_path / "data")  # the bad cache is ignored and rebuilt, never run
    assert not marker.exists()
    assert torch.equal(again.train_images, first.train_images) and again.classes == ["a", "b"]


@pytest.mark.parametrize("damage", ["cut in half", "garbage", "empty", "text"])
def test_truncated_or_garbage_checkpoints_name_the_file(reference: dict, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture, damage: str) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(reference["run"], run_dir)
    path = run_dir / "last.pt"
    good = path.read_bytes()
    path.write_bytes({"cut in half": good[: len(good) // 2], "garbage": os.urandom(4096), "empty": b"",
                      "text": b"model: resnet20\nepochs: 4\n"}[damage])
    for name, call in entry_points(path, run_dir, tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            call()
        msg = str(info.value)
        assert msg.startswith(str(path)) and "truncated or not a PyTorch checkpoint" in msg, (name, msg)
    assert main(["eval", str(path)]) == 2
    err = capsys.readouterr().err
    assert error_lines(err, "eval") == [f"resnetkit eval: error: {path} is truncated or not a PyTorch checkpoint "
                                        f"({err.split('(')[-1].strip()}"]
    assert "Traceback" not in err


def test_a_plain_state_dict_is_not_taken_for_a_run(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))} is not a resnetkit checkpoint"):
        resnetkit.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        resnetkit.load_checkpoint(tmp_path / "missing.pt")


# ------------------------------------------------------------------ the source tree itself

RULES = [
    ("weights_only=False", re.compile(r"weights_only\s*=\s*False")),
    # (a comment saying weights_only=True does not count: the code before any '#' must say it)
    ("torch.load( without weights_only=True on the line", re.compile(r"torch\.load\((?![^#]*weights_only\s*=\s*True)")),
    ("pickle.load/loads", re.compile(r"\b(c?pickle|dill|joblib)\.loads?\(")),
    ("numpy allow_pickle=True", re.compile(r"allow_pickle\s*=\s*True")),
    ("an Unpickler other than cifar's RestrictedUnpickler", re.compile(r"(?<!Restricted)Unpickler\(")),
]
ALLOWED = {  # file -> rules that may match there, and why
    "data/cifar.py": {"an Unpickler other than cifar's RestrictedUnpickler"},  # class RestrictedUnpickler(pickle.Unpickler)
}


def unsafe_lines(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for no, line in enumerate(path.read_text().splitlines(), 1):
            for rule, pattern in RULES:
                if pattern.search(line) and rule not in ALLOWED.get(rel, set()):
                    found.append(f"{rel}:{no}: {rule}: {line.strip()}")
    return found


def test_the_scanner_finds_each_unsafe_load(tmp_path: Path) -> None:
    tl = "torch" + ".load("  # spelt apart so repository-wide greps do not flag this fixture
    (tmp_path / "bad.py").write_text(
        f"a = {tl}p, weights_only=False)\n"
        f"b = {tl}p)\n"
        f"c = {tl}p, map_location='cpu')  # weights_only=True below\n"
        "d = pickle.load(f)\n"
        "e = np.load(p, allow_pickle=True)\n"
        "f = pickle.Unpickler(f).load()\n"
        f"g = {tl}p, map_location='cpu', weights_only=True)\n"
    )
    assert [line.split(":")[1] for line in unsafe_lines(tmp_path)] == ["1", "1", "2", "3", "4", "5", "6"]


def test_the_source_tree_has_no_unsafe_load() -> None:
    assert unsafe_lines(SRC) == []
    loads = [p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if "torch" + ".load(" in p.read_text()]
    assert "checkpoint.py" in loads and "data/cache.py" in loads  # the scan does see the real loads
    cifar = (SRC / "data" / "cifar.py").read_text()
    assert "RestrictedUnpickler(io.BytesIO(data)" in cifar and "def find_class" in cifar
