"""Shared fixtures: the real JPEG CIFAR-10 archive from ../shared, and an isolated cache dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CIFAR_JPEG = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own resnetkit cache unless it asks for the session one; the CPU
    precision probe is off (it would time every new model in every fresh cache) unless a test
    turns it on."""
    monkeypatch.setenv("RESNETKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("RESNETKIT_PRECISION_PROBE", "off")


@pytest.fixture(scope="session", autouse=True)
def _probe_off_for_shared_fixtures():
    """The probe is off for module- and session-scoped fixtures too: they are set up before the
    per-test one above. A study run in a module fixture otherwise timed its tiny model, and where
    contiguous and channels_last time alike (an AVX-512 CPU) it could pick another layout than the
    test's own run and round differently."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNETKIT_PRECISION_PROBE", "off")
        yield


@pytest.fixture(scope="session")
def cifar_jpeg() -> Path:
    """Path of ../shared/data/cifar10-jpeg.tar.gz; tests needing it skip when it is absent."""
    if not CIFAR_JPEG.is_file():
        pytest.skip(f"real data not found at {CIFAR_JPEG}")
    return CIFAR_JPEG


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory shared by the whole test session (decode the real archive once)."""
    return tmp_path_factory.mktemp("session-cache")


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
