"""Facts about the CPU and torch's CPU build, for ``resnetkit doctor``.

Which CPU, which of the flags that matter for training speed (AVX2, AVX-512, AVX-512 BF16, AMX),
how many threads torch uses, what oneDNN build torch carries (``torch.__config__.show()``), and
whether oneDNN really dispatches AMX kernels: a small bf16 convolution and matmul run in a child
process with ``ONEDNN_VERBOSE=1`` (oneDNN's documented verbose mode), whose lines name the ISA of
each primitive; an ``amx`` ISA there (``avx512_core_amx``, ``avx10_1_512_amx``) means AMX tiles ran.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field

import torch

from .probe import RELEVANT_FLAGS, cpu_model_and_flags

_AMX_SNIPPET = """
import torch
x = torch.randn(16, 64, 16, 16).to(memory_format=torch.channels_last)
conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
with torch.no_grad():
    conv(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(x)
        torch.randn(256, 256) @ torch.randn(256, 256)
"""


@dataclass
class CpuFacts:
    cpu: str
    flags: dict[str, bool]
    threads: int
    cores: int | None
    torch: str
    onednn: list[str] = field(default_factory=list)
    amx_kernels: bool | None = None  # None: the check could not run
    isa_seen: list[str] = field(default_factory=list)


def onednn_lines(config: str | None = None) -> list[str]:
    """The oneDNN / MKL / OpenMP / CPU-capability lines of ``torch.__config__.show()``; from its
    long "Build settings" line only the ``USE_MKLDNN`` / ``USE_OPENMP`` / ``BLAS_INFO`` entries."""
    text = torch.__config__.show() if config is None else config
    keep = re.compile(r"onednn|mkl-?dnn|openmp|cpu capability|\bisa\b", re.IGNORECASE)
    out = []
    for ln in text.splitlines():
        ln = ln.strip().lstrip("- ").strip()
        if ln.startswith("Build settings"):
            picked = re.findall(r"\b(USE_MKLDNN=\w+|USE_OPENMP=\w+|BLAS_INFO=\w+)", ln)
            if picked:
                out.append("Build settings: " + ", ".join(picked))
        elif keep.search(ln):
            out.append(ln)
    return out


def isa_in_verbose(output: str) -> list[str]:
    """ISA names (``avx2``, ``avx512_core_amx``...) in oneDNN verbose output, in order, once each."""
    seen: list[str] = []
    for m in re.finditer(r"isa:([^,\n]+)|\w+:(avx512_core\w*|avx2\w*|avx10\w*|sse41)\b", output):
        name = (m.group(1) or m.group(2)).strip()
        if name not in seen:
            seen.append(name)
    return seen


def amx_check(timeout: float = 120.0) -> tuple[bool | None, list[str]]:
    """Run bf16 conv + matmul in a child with ``ONEDNN_VERBOSE=1``; True if AMX kernels ran."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "DNNL_VERBOSE": "1"}
    try:
        proc = subprocess.run([sys.executable, "-c", _AMX_SNIPPET], env=env, capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None, []
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        return None, []
    return amx_ran(out), isa_in_verbose(out)


def amx_ran(output: str) -> bool:
    """True if a primitive in oneDNN verbose output ran an AMX kernel.

    oneDNN names the kernel's ISA after the implementation (``brg_conv_fwd:avx512_core_amx`` up to
    oneDNN 3.6 or so, ``brg_conv_fwd:avx10_1_512_amx`` in 3.12): any ``amx`` ISA there counts; the
    ``isa:`` info line only says what the CPU could run.
    """
    return any(re.search(r"\w+:\w*amx\w*", ln) for ln in output.splitlines() if ",exec," in ln)


def collect(run_amx_check: bool = True, cpuinfo: str | None = None) -> CpuFacts:
    cpu, flags = cpu_model_and_flags(cpuinfo)
    have = set(flags)
    facts = CpuFacts(cpu=cpu, flags={f: f in have for f in RELEVANT_FLAGS}, threads=torch.get_num_threads(),
                     cores=os.cpu_count(), torch=str(torch.__version__), onednn=onednn_lines())
    if run_amx_check:
        facts.amx_kernels, facts.isa_seen = amx_check()
    return facts
