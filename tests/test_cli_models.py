"""``resnetkit models`` and ``resnetkit summary``: printed content, exit codes, help."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from resnetkit.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def row(out: str, first: str) -> str:
    """The one line of ``out`` that starts with the words ``first``."""
    (line,) = [ln for ln in out.splitlines() if ln == first or ln.startswith(first + " ")]
    return line


def test_summary_resnet18_cifar(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "summary", "resnet18_cifar")
    assert code == 0
    assert out.startswith("resnet18_cifar: resnet-cifar, input 3x32x32, 10 classes")
    stages = [ln.split()[0] for ln in out.splitlines() if ln.startswith("layer")]
    assert stages == ["layer1", "layer2", "layer3", "layer4"]
    assert "(512, 4, 4)" in row(out, "layer4") and "8,393,728" in row(out, "layer4")
    assert "3,538,944" in row(out, "stem")  # 2 * 3 * 64 * 9 * 32 * 32
    assert "(10,)" in row(out, "head") and "10,240" in row(out, "head")
    assert "11,173,962" in row(out, "total params") and "(11.17M)" in out
    assert "1,110,845,440" in out and "1.111 GFLOPs" in out and "0.555 GMACs" in out
    # columns line up: every stage row ends its FLOPs column where the header's "FLOPs" ends
    header = row(out, "stage")
    end = header.index("FLOPs") + len("FLOPs")
    for name in ("stem", "layer1", "layer4", "head"):
        line = row(out, name)
        assert line[:end].rstrip() == line[:end] and line[end] == " "


def test_summary_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "summary", "resnet20", "--input-size", "64", "48",
                       "--num-classes", "100", "--in-channels", "1")
    assert code == 0
    assert "input 1x64x48, 100 classes" in out
    assert "(64, 16, 12)" in row(out, "layer3") and "(100,)" in row(out, "head")
    # 269,722 - 288 (one input channel) + 5,850 (100-way classifier)
    assert "275,284" in row(out, "total params")


def test_models_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "resnet18*")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["name", "family", "params", "GFLOPs", "input"]
    assert row(out, "resnet18").split() == ["resnet18", "resnet", "11.69M", "3.628", "3x224x224"]
    assert row(out, "resnet18_cifar").split() == ["resnet18_cifar", "resnet-cifar", "11.17M", "1.111", "3x32x32"]
    # right-aligned numbers: params and GFLOPs columns end at the same place in every row
    assert len({ln.index("M") for ln in lines[1:3]}) == 1
    assert "2 models" in out


def test_models_no_match_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "models", "vgg*")
    assert code == 2 and out == ""
    assert err.strip() == ("resnetkit models: error: no registered model matches 'vgg*'; "
                           "run 'resnetkit models' to list them all")


def test_unknown_model_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "summary", "resnet5")
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert "unknown model 'resnet5'; did you mean" in err and "resnet50" in err and "resnet56" in err


@pytest.mark.parametrize("argv", [["summary", "resnet20", "--input-size", "0", "32"],
                                  ["summary", "resnet20", "--num-classes", "-1"],
                                  ["summary", "resnet20", "--input-size", "32"]])
def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("command,text", [("models", "shell pattern"), ("summary", "--input-size H W")])
def test_help(capsys: pytest.CaptureFixture[str], command: str, text: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert text in out and "multiply-add counts as 2 FLOPs" in " ".join(out.split())


def test_console_entry_point_exit_codes(tmp_path) -> None:
    env = {**os.environ, "RESNETKIT_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    ok = subprocess.run([sys.executable, "-m", "resnetkit", "summary", "resnet20"],
                        capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "269,722" in ok.stdout and "(64, 8, 8)" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "resnetkit", "summary", "resnet5"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        "resnetkit summary: error: unknown model 'resnet5'; did you mean resnet56, resnet50, resnet152?"
    ]
