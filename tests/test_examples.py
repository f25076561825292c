"""examples/tutorial.py runs end to end with the tutorial recipe (steps capped)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tutorial_example_runs_the_tutorial_recipe(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "tutorial.py"), "--data", "synthetic:256",
                           "--max-steps", "2", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resnet18_cifar: 11,173,962 parameters" in proc.stdout
    assert "with a projection shortcut: (2, 128, 16, 16)" in proc.stdout
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["recipe"] == "tutorial" and cfg["lr"] == 0.1 and cfg["schedule"] == "constant"
    assert cfg["weight_decay"] == 5e-4 and cfg["batch_size"] == 128 and cfg["precision"] == "fp32"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and rows[-1]["lr"] == 0.1  # constant lr, capped at 2 steps
    assert "test top-1" in proc.stdout
