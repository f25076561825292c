"""A real short run shared by the report tests: ResNet-20 (half width) on the JPEG CIFAR-10 archive,
30 steps, with its report (evaluation, worst errors, Grad-CAM, HTML) written at the end as the CLI does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import resnetkit

STEPS = 30
WIDTH = 0.5  # a quarter of the compute of the full ResNet-20: three 10,000-image test passes stay cheap


@pytest.fixture(scope="session")
def cifar_run(cifar_jpeg: Path, session_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cifar-run") / "run"
    old = os.environ.get("RESNETKIT_CACHE")
    os.environ["RESNETKIT_CACHE"] = str(session_cache)  # the archive is decoded once per session
    try:
        resnetkit.train("resnet20", str(cifar_jpeg), epochs=1, max_steps=STEPS, batch_size=128, eval_every=0,
                        model_kwargs={"width_mult": WIDTH}, device="cpu", precision="fp32", out=str(out),
                        report=True, command=f"resnetkit train --model resnet20 --data {cifar_jpeg} "
                                             f"--max-steps {STEPS} --width-mult {WIDTH}")
    finally:
        if old is None:
            os.environ.pop("RESNETKIT_CACHE", None)
        else:
            os.environ["RESNETKIT_CACHE"] = old
    assert (out / "report.html").is_file(), "training did not write its report"
    return out
