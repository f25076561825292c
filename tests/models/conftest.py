"""Model tests run single-threaded: on a small shared box, OpenMP threads fighting other
processes for cores make a forward pass ten times slower, while one thread stays predictable."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _few_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
