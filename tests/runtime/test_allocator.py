"""keep_freed_memory: large freed blocks are reused without new page faults, and the opt-out works."""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
                                reason="mallopt is glibc's")

_CHILD = """
import json, resource, torch
from resnetkit.runtime.device import keep_freed_memory
applied = keep_freed_memory(torch.device("cpu"))
torch.empty(16 << 20).fill_(1)  # 64 MiB: over glibc's mmap threshold
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(16 << 20).fill_(1)
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _run(tuning: str) -> dict:
    env = {**os.environ, "RESNETKIT_MALLOC_TUNING": tuning}
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_without_page_faults():
    tuned, plain = _run("1"), _run("0")
    assert tuned["applied"] is True and plain["applied"] is False
    # each fresh 64 MiB mapping faults in again (16,384 pages, or 32 huge pages); the kept heap does not
    assert plain["faults"] >= 10 * 32
    assert tuned["faults"] * 4 < plain["faults"]
