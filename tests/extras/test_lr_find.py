"""The LR range test on ResNet-20: its suggestion trains better than 1/100 and 100x of it."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import resnetkit
from resnetkit.data.augment import AugmentConfig
from resnetkit.data.loader import DeviceLoader
from resnetkit.data.prepare import prepare_data
from resnetkit.lr_find import smooth, suggest
from resnetkit.models import create_model

DATA, SIZE, KW = "synthetic:512", 16, {"width_mult": 0.5}


def _short_run(lr: float, steps: int = 40) -> float:
    """Mean loss of the last 10 of ``steps`` SGD steps at a constant ``lr`` (inf if it diverged)."""
    ds = prepare_data(DATA, image_size=SIZE)
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, **KW)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loader = DeviceLoader(ds.train_images, ds.train_labels, batch_size=32, augment=AugmentConfig(),
                          mean=ds.mean, std=ds.std, seed=1)
    losses: list[float] = []
    while len(losses) < steps:
        loader.set_epoch(len(losses))
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()) if math.isfinite(float(loss.detach())) else math.inf)
            if len(losses) == steps:
                break
    tail = losses[-10:]
    return sum(tail) / len(tail)


def test_suggested_lr_beats_a_hundredth_and_a_hundred_times_it(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = resnetkit.lr_find("resnet20", DATA, image_size=SIZE, batch_size=32, steps=60, start=1e-4, end=10,
                              device="cpu", precision="fp32", model_kwargs=KW, out=tmp_path / "lr.png")
        assert r.rule == "lr at the minimum of the smoothed loss / 10"
        assert 1e-3 < r.suggested_lr < 1.0
        assert (tmp_path / "lr.png").stat().st_size > 10_000
        assert list(tmp_path.iterdir()) == [tmp_path / "lr.png"]  # nothing else written
        good, low, high = (_short_run(r.suggested_lr * f) for f in (1.0, 0.01, 100.0))
    finally:
        torch.set_num_threads(threads)
    assert good < low and good < high, (r.suggested_lr, good, low, high)


def test_suggest_uses_min_over_ten_and_reports_the_steepest_point() -> None:
    lrs = [10 ** (-4 + i * 0.1) for i in range(50)]
    losses = [2.0 - 1.5 / (1 + math.exp(-(i - 20) / 3)) + (0.0 if i < 40 else (i - 40) ** 2) for i in range(50)]
    sm = smooth(losses, beta=0.0)
    best, steep = suggest(lrs, sm)
    assert best == lrs[40] / 10
    assert steep == lrs[20] or steep == lrs[19]


def test_cli_prints_the_suggestion(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "resnetkit", "lr-find", "--model", "resnet20", "--data", "synthetic:128",
                          "--image-size", "16", "--batch-size", "32", "--steps", "12", "--start", "1e-3", "--end", "1",
                          "--device", "cpu", "--precision", "fp32", "--out", str(tmp_path / "p.png")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
                              "RESNETKIT_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Warning" not in out.stderr, out.stderr  # PyTorch's requires_grad-to-scalar warning leaked here once
    assert "suggested lr" in out.stdout and "(lr at the minimum of the smoothed loss / 10)" in out.stdout
    assert {p.name for p in tmp_path.iterdir()} - {"cache"} == {"p.png"}  # the plot only: no run directory
