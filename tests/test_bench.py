"""The bench command's smoke mode: bench/gpu.sh --smoke runs every GPU step tiny on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resnetkit.benchmark import throughput
from resnetkit.data.prepare import prepare_data

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_reports_three_pipelines_in_one_run():
    data = prepare_data("synthetic:512")
    rows = throughput("resnet20", data, device="cpu", batch_size=32, steps=2, warmup=1, tutorial_batch_size=32)
    assert [r.name for r in rows] == ["resnetkit", "tutorial", "ceiling"]
    tut = rows[1]
    assert tut.precision == "fp32" and not tut.channels_last and tut.batch_size == 32
    for r in rows:
        assert r.images_per_s > 0 and abs(r.images_per_s * r.step_ms / 1e3 - r.batch_size) < 1e-6 * r.batch_size


@pytest.mark.slow  # about 75 s on 2 cores: run by CI with -m slow, not by the default run
def test_gpu_script_smoke_mode_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "out"
    names = sorted(p.name for p in out.glob("*.json"))
    assert names == ["throughput_resnet18_cifar.json", "throughput_resnet20.json", "tta_cpu_fast.json", "tta_fast.json",
                     "tta_resnet18_120s.json", "tta_resnet18_30s.json"]
    tp = json.loads((out / "throughput_resnet20.json").read_text())
    assert {r["name"] for r in tp["rows"]} == {"resnetkit", "tutorial", "ceiling"}
    assert tp["resnetkit_over_tutorial"] > 0 and tp["resnetkit_over_ceiling"] > 0
    fast = json.loads((out / "tta_fast.json").read_text())
    assert fast["model"] == "resnet9" and len(fast["runs"]) == 1 and 0 <= fast["top1_mean"] <= 1
    study = json.loads((out / "study-degradation" / "degradation.json").read_text())
    assert [n["name"] for n in study["networks"]] == ["plain-8", "ResNet-8"] and study["train_images"] == 64
    assert study["plan"]["completed_iterations"] == study["plan"]["planned_iterations"] == 64 // 8
    cpu_fast = json.loads((out / "tta_cpu_fast.json").read_text())
    assert cpu_fast["model"] == "resnet_cpu" and cpu_fast["recipe"] == "cpu-fast" and len(cpu_fast["runs"]) == 1
    table = proc.stdout.strip().splitlines()
    header = [i for i, line in enumerate(table) if line.startswith("measurement")]
    assert header and len(table) - header[-1] == 8, table[-10:]  # the header and 7 rows
    assert "throughput resnet20" in proc.stdout and "cpu-fast" in proc.stdout
    assert table[-1].startswith("study degradation (64 training images)") and "8 of 8 planned iterations" in table[-1]
