"""Training on small folders with defaults, and no dead ends: adaptive batch/lr (item 4), arguments
and model checked before any work with nothing left behind (items 6, 10), a non-finite loss that
says what to do (item 3), shell exit codes for signals and a complete run on --resume (item 11)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from reliability._helpers import run_cli, spawn, wait_for_step
from resnetkit.cli import main
from resnetkit.errors import UserError

from ._helpers import CLASSES5, extract_folder


def _error(capsys: pytest.CaptureFixture, command: str = "train") -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"resnetkit {command}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_sixty_images_train_with_only_epochs(tiny3: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("INFO"):
        assert main(["train", "--data", str(tiny3), "--epochs", "1"]) == 0
    adapted = [r.getMessage() for r in caplog.records if r.getMessage().startswith("batch ")]
    assert adapted == ["batch 8 and lr 0.00625 (the default recipe's 256 and 0.2 scaled to 60 training images; "
                       "a batch size given explicitly is kept)"]
    (run,) = list((tmp_path / "runs").iterdir())
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert (cfg["batch_size"], cfg["lr"], cfg["adapt_batch"]) == (8, 0.00625, False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 7 and rows[0]["train_loss"] < 5  # ceil(60 / 8) steps, no blow-up
    assert rows[0]["test_loss"] < 5  # the batch-16, lr-0.2 run ended at test loss 79,053


def test_an_explicit_batch_is_kept(tiny3: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--data", str(tiny3), "--epochs", "1", "--batch-size", "256", "--out",
                 str(tmp_path / "r")]) == 2
    assert "larger than the 60 training images" in _error(capsys)
    assert not (tmp_path / "r").exists()  # item 6: no directory left behind


@pytest.mark.parametrize("args, words", [
    (["--model", "resnet21"], "resnet21"),  # item 10: before data preparation, with the default batch
    (["--device", "cuda:7"], "cuda:7"),
    (["--device", "tpu"], "tpu"),
])
def test_bad_arguments_fail_before_data_and_leave_nothing(args: list[str], words: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    import resnetkit.data.prepare as prepare

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(prepare, "prepare_data", lambda *a, **k: pytest.fail("data prepared before the check"))
    assert main(["train", "--data", "synthetic", "--epochs", "1", *args]) == 2
    assert words in _error(capsys)
    assert list(tmp_path.iterdir()) == []  # no runs/resnet21-.../ and no runs/
    assert main(["train", "--data", "synthetic", "--epochs", "1", *args, "--out", "mine"]) == 2
    assert not (tmp_path / "mine").exists()


def test_non_finite_loss_is_not_a_dead_end(tiny3: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r"
    cmd = ["train", "--model", "resnet20", "--data", str(tiny3), "--batch-size", "16", "--epochs", "1",
           "--out", str(out)]
    assert main([*cmd, "--lr", "nan"]) == 2
    line = _error(capsys)
    assert "no checkpoint was saved" in line and "--lr" in line and "--overwrite" in line
    assert "last.pt keeps" not in line and not (out / "last.pt").exists()
    assert main([*cmd, "--lr", "nan"]) == 2  # the rerun names the way out, not --resume
    line = _error(capsys)
    assert "--overwrite" in line and "--resume" not in line


def test_sigint_exits_130_sigterm_143_and_a_finished_run_says_complete(tmp_path: Path) -> None:
    args = ["train", "--model", "resnet20", "--data", "synthetic:256", "--image-size", "16", "--batch-size", "32",
            "--epochs", "40", "--width-mult", "0.5", "--device", "cpu", "--precision", "fp32",
            "--checkpoint-every", "1"]
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        out = tmp_path / sig.name
        proc = spawn([*args, "--out", str(out)], tmp_path)
        wait_for_step(out, 2, proc)
        proc.send_signal(sig)
        proc.communicate(timeout=120)
        assert proc.returncode == code, sig.name
    done = tmp_path / "done"
    small = [a if a != "40" else "1" for a in args]
    assert run_cli([*small, "--out", str(done)], tmp_path).returncode == 0
    again = run_cli(["train", "--resume", str(done)], tmp_path)
    assert again.returncode == 2 and "is complete" in again.stderr and "--epochs" in again.stderr


def test_resume_of_a_complete_run_from_python_names_the_keyword(tmp_path: Path) -> None:
    import resnetkit

    resnetkit.train("resnet20", "synthetic:64", epochs=1, image_size=8, batch_size=16, device="cpu",
                    precision="fp32", model_kwargs={"width_mult": 0.25}, out=str(tmp_path / "r"), progress=False)
    with pytest.raises(UserError, match="is complete.*larger epochs") as e:
        resnetkit.resume(tmp_path / "r")
    assert "--epochs" not in str(e.value)


@pytest.mark.slow
def test_default_run_on_3000_images_reaches_60_percent(cifar_jpeg: Path, tmp_path: Path) -> None:
    """``resnetkit train --model resnet20 --data DIR --epochs 15``, nothing else, on 5 classes."""
    data = extract_folder(cifar_jpeg, tmp_path / "five", CLASSES5, 600, 100)
    t0 = time.perf_counter()
    result = run_cli(["train", "--model", "resnet20", "--data", str(data), "--epochs", "15", "--out",
                      str(tmp_path / "run")], tmp_path, timeout=3600)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "result.json").read_text())
    print(f"held-out top-1 {summary['test']['top1']:.2%} in {time.perf_counter() - t0:.0f}s wall")
    assert summary["test"]["top1"] >= 0.60
