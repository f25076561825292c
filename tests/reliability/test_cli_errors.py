"""Bad arguments through the real command line: one clear line on stderr, exit code 2, no
traceback, nothing written, and another run's directory left exactly as it was."""

from __future__ import annotations

import errno
import shutil
import tempfile
from pathlib import Path

import pytest

from resnetkit.cli import main
from resnetkit.models import list_models
from resnetkit.training.config import RECIPES

from ._helpers import error_lines, run_cli, run_files

GOOD = ["train", "--data", "synthetic:256", "--image-size", "8", "--width-mult", "0.5", "--device", "cpu",
        "--epochs", "1"]

CASES = {  # name -> (arguments added to GOOD, the error after "resnetkit train: error: ")
    "unknown model": (["--model", "resnet21"], "unknown model 'resnet21'; did you mean {close}?"),
    "unknown recipe": (["--recipe", "fastest"], "unknown recipe 'fastest'; choose one of: {recipes}"),
    "zero lr": (["--lr", "0"], "--lr must be positive, got 0.0"),
    "negative lr": (["--lr", "-0.1"], "--lr must be positive, got -0.1"),
    # zero and negative --epochs: argparse refuses them (tests/first_hour/test_cli_surface.py)
    "zero batch size": (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    "negative batch size": (["--batch-size", "-4"], "--batch-size must be a positive integer, got -4"),
    "batch larger than the data": (["--batch-size", "512"], "--batch-size 512 is larger than the 256 training images"),
    "no processes": (["--nproc", "0"], "--nproc takes a number of processes of at least 1, got 0"),
    "negative checkpoint interval": (["--checkpoint-every", "-1"], "--checkpoint-every must be >= 0, got -1"),
    "zero stop point": (["--stop-after-steps", "0"], "--stop-after-steps must be positive, got 0"),
}


def one_error(capsys: pytest.CaptureFixture, argv: list[str], command: str = "train") -> str:
    code = main(argv)
    cap = capsys.readouterr()
    assert code == 2 and cap.out == "" and "Traceback" not in cap.err
    lines = error_lines(cap.err, command)
    assert len(lines) == 1, cap.err
    return lines[0].split(": error: ", 1)[1]


@pytest.mark.parametrize("case", CASES)
def test_a_bad_argument_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, case: str) -> None:
    extra, message = CASES[case]
    out = tmp_path / "run"
    got = one_error(capsys, [*GOOD, *extra, "--out", str(out)])
    if "{close}" in message:  # the closest registered names, whichever they are today
        close = got.split("did you mean ")[1].rstrip("?").split(", ")
        assert "resnet20" in close and set(close) <= set(list_models())
        message = message.format(close=", ".join(close))
    assert got == message.format(recipes=", ".join(sorted(RECIPES)))
    assert run_files(out) == []


def test_missing_data_and_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "no-such-data"
    msg = one_error(capsys, [*GOOD, "--data", str(missing), "--out", str(tmp_path / "a")])
    assert msg.startswith(f"Data source {missing} does not exist")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    # a real unwritable path (a file where a folder must go): chmod would not stop root
    assert one_error(capsys, [*GOOD, "--out", str(blocker / "run")]) == (
        f"cannot write to the output directory {blocker / 'run'}: Not a directory")
    assert one_error(capsys, [*GOOD, "--out", str(blocker)]) == f"--out {blocker} exists and is not a directory"
    # a read-only file system, simulated where the run probes its directory
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", lambda *a, **k: (_ for _ in ()).throw(
        OSError(errno.EROFS, "Read-only file system")))
    ro = tmp_path / "ro"
    assert one_error(capsys, [*GOOD, "--out", str(ro)]) == (
        f"cannot write to the output directory {ro}: Read-only file system")
    assert run_files(ro) == [] and blocker.read_text() == "x"


def snapshot(run: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run.iterdir())}


def test_another_runs_directory_is_left_untouched(reference: dict, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    shutil.copytree(reference["run"], run)
    before = snapshot(run)
    assert len(before) >= 6
    assert one_error(capsys, [*GOOD, "--out", str(run)]) == (
        f"{run} already holds a run; pass --resume {run} to continue it, --overwrite to replace it, or choose "
        f"another --out")
    assert one_error(capsys, ["train", "--resume", str(run), "--lr", "0.5"]) == (
        "cannot resume with settings that differ from the checkpoint's (--lr is 0.2 in the checkpoint but 0.5 was "
        "given); drop those flags or start a new run")
    assert one_error(capsys, ["train", "--resume", str(run), "--model", "resnet56", "--data", "synthetic"]) == (
        "cannot resume with settings that differ from the checkpoint's (--model is 'resnet20' in the checkpoint but "
        "'resnet56' was given; --data is 'synthetic:256' in the checkpoint but 'synthetic' was given); drop those "
        "flags or start a new run")
    assert snapshot(run) == before  # every byte and every timestamp
    gone = tmp_path / "gone"
    assert one_error(capsys, ["train", "--resume", str(gone)]) == f"checkpoint {gone} does not exist"


def test_argparse_errors_exit_2_without_a_traceback(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "many"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "resnetkit train: error: argument --epochs: takes a whole number of epochs, got 'many'"


def test_in_a_real_process_stderr_is_exactly_one_line(tmp_path: Path) -> None:
    done = run_cli([*GOOD, "--model", "resnet21", "--out", str(tmp_path / "run")], tmp_path, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("resnetkit train: error: unknown model 'resnet21'; did you mean ")
