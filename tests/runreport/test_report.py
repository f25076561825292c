"""The HTML report: self-contained, complete, and comparing runs with their differences marked."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import resnetkit
from resnetkit.cli import main

from .conftest import WIDTH


def _html(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_training_report_is_self_contained_and_complete(cifar_run: Path) -> None:
    html = _html(cifar_run / "report.html")
    srcs = re.findall(r'\b(?:src|href)="([^"]*)"', html)
    assert srcs and all(s.startswith("data:") or s.startswith("#") for s in srcs), srcs
    assert not re.search(r"https?://", html)  # nothing that could reach the network
    images = re.findall(r'<img src="data:image/png;base64,', html)
    assert len(images) == 3 + 8  # curves, confusion matrix, worst-errors gallery; 8 Grad-CAM maps (one per class)
    result = json.loads((cifar_run / "result.json").read_text())
    ev = json.loads((cifar_run / "eval" / "metrics.json").read_text())
    assert ev["top1"] == result["test"]["top1"]  # the report's evaluation of last.pt is the run's own test pass
    assert f'{result["test"]["top1"]:.2%}' in html
    assert "resnetkit train --model resnet20" in html  # the command
    expected = sum(p.numel() for p in resnetkit.create_model("resnet20", width_mult=WIDTH).parameters())
    assert ev["parameters"] == expected and f"{expected:,}" in html
    for name in ev["classes"]:
        assert f'<td class="l">{name}</td>' in html
    assert html.count("<tr>") > 10 + 9  # per-class rows and the metrics table


def test_comparison_marks_exactly_the_differing_settings(cifar_run: Path, tmp_path: Path) -> None:
    other = tmp_path / "run-b"
    shutil.copytree(cifar_run, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["config"]["lr"] = 0.05
    (other / "config.json").write_text(json.dumps(cfg))
    rows = [json.loads(line) for line in (other / "metrics.jsonl").read_text().splitlines()]
    rows[-1]["test_acc"] = 0.5
    (other / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "compare.html"
    assert main(["report", str(cifar_run), str(other), "--out", str(out)]) == 0
    html = _html(out)
    diff = re.findall(r'<tr class="diff"><td class="l">([^<]+)</td>', html)
    assert diff == ["lr"]
    assert "Comparison" in html and "Curves overlaid" in html
    assert html.count('data-metric="test.top1"') == 4  # side by side, and in each run's section


def test_report_of_a_folder_that_is_not_a_run(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no last.pt" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "typo")]) == 2
    assert f"{tmp_path / 'typo'} does not exist; give the run directory" in capsys.readouterr().err


def test_python_api_writes_next_to_the_run(cifar_run: Path) -> None:
    path = resnetkit.report([cifar_run], cifar_run / "again.html")
    assert path.stat().st_size > 50_000
