"""Fixtures of the first-hour tests: small image folders from the real archive."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._helpers import CLASSES3, extract_folder


@pytest.fixture(scope="session")
def tiny3(cifar_jpeg: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 training images (20 per class, 3 classes) and 30 test images."""
    return extract_folder(cifar_jpeg, tmp_path_factory.mktemp("tiny3"), CLASSES3, 20, 10)
