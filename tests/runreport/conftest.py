"""A real short run shared by the report tests: ResNet-20 on the JPEG CIFAR-10 archive, 30 steps,
with its report (evaluation, worst errors, Grad-CAM, HTML) written at the end as the CLI does."""

from __future__ import annotations

from pathlib import Path

import pytest

import resnetkit

STEPS = 30


@pytest.fixture(scope="session")
def cifar_run(cifar_jpeg: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cifar-run") / "run"
    resnetkit.train("resnet20", str(cifar_jpeg), epochs=1, max_steps=STEPS, batch_size=128, eval_every=0,
                    device="cpu", precision="fp32", out=str(out), report=True,
                    command=f"resnetkit train --model resnet20 --data {cifar_jpeg} --max-steps {STEPS}")
    assert (out / "report.html").is_file(), "training did not write its report"
    return out
