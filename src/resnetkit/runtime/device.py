"""Device, precision and layout choices, made at run time with a safe fallback.

bf16 autocast and channels_last are used where they pay: on CUDA with bf16 support, and on CPUs
with AMX tiles for bf16 (``amx_bf16``). Elsewhere fp32: on an AVX-512 BF16 Xeon without AMX, bf16
autocast trained ResNet-20 at 365 img/s against 492 in fp32 (``resnetkit bench throughput``, batch
256, channels_last), and on AVX2-only CPUs about 25x slower than fp32.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import random
from contextlib import AbstractContextManager as ContextManager

import numpy as np
import torch

from ..errors import UserError

log = logging.getLogger(__name__)


def resolve_device(name: str | None = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an unavailable CUDA request is a UserError."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} was requested but no CUDA device is available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) found")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"device type {dev.type!r} is not supported; use 'cpu' or 'cuda'")
    return dev


def bf16_pays_on_cpu(cpuinfo: str) -> bool:
    """Whether bf16 autocast pays on a CPU with these ``/proc/cpuinfo`` contents: AMX bf16 tiles.

    AVX-512 BF16 alone does not count: oneDNN's bf16 convolutions measured slower than fp32 there.
    """
    return "amx_bf16" in cpuinfo.split()


@functools.lru_cache(maxsize=1)
def cpu_bf16_pays() -> bool:
    """True when this CPU runs bf16 autocast faster than fp32 (:func:`bf16_pays_on_cpu`)."""
    try:
        with open("/proc/cpuinfo") as f:
            return bf16_pays_on_cpu(f.read())
    except OSError:
        return False


#: /proc/cpuinfo flags that decide CPU speed and precision here: vector width, bf16 and int8 units.
CPU_SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def describe_cpu(cpuinfo: str | None) -> dict[str, object]:
    """``{"model": ..., "flags": [...]}`` from ``/proc/cpuinfo`` text: the first processor's model
    name and which of :data:`CPU_SPEED_FLAGS` it has; ``"unknown"`` and ``[]`` without that text."""
    model, flags = "unknown", set()
    for line in (cpuinfo or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
            model = value.strip() or "unknown"
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return {"model": model, "flags": [f for f in CPU_SPEED_FLAGS if f in flags]}


def cpu_description() -> dict[str, object]:
    """This machine's :func:`describe_cpu` (``"unknown"`` where ``/proc/cpuinfo`` cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return describe_cpu(f.read())
    except OSError:
        return describe_cpu(None)


# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory(device: torch.device) -> bool:
    """On a CPU ``device``, let glibc keep freed blocks for reuse instead of returning them to the kernel.

    By default glibc serves every block over 32 MiB with a fresh ``mmap`` and unmaps it when freed, so a
    training step that frees and reallocates its large activations page-faults on all of them again:
    5,000-13,000 page faults per step of ``resnet_cpu_fullres_deep`` (batch 256, bf16). Serving them from
    the heap and trimming it only past 1 GiB of free space removed the faults and sped the step up
    1.11x on a 2-core Xeon with AMX (``bench/cpu_kernels.py``; what the Intel PyTorch tuning guide
    gets from jemalloc/tcmalloc; docs/speed-cpu.md). Peak memory stays the same: the blocks are reused, not added.
    ``RESNETKIT_MALLOC_TUNING=0`` leaves the allocator as it is. True if the settings are applied
    (once per process; a no-op on CUDA devices and without glibc).
    """
    return device.type == "cpu" and os.environ.get("RESNETKIT_MALLOC_TUNING", "1") != "0" and _tune_glibc_malloc()


@functools.lru_cache(maxsize=1)
def _tune_glibc_malloc() -> bool:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        mallopt = None
    if mallopt is None:  # not glibc (macOS, musl without mallopt, Windows): nothing to tune
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on CUDA with bf16 and on AMX CPUs, else ``fp32``."""
    if precision in (None, "", "auto"):
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_bf16_pays() else "fp32"
    if precision not in ("bf16", "fp32"):
        raise UserError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}")
    return precision


def resolve_channels_last(channels_last: bool | None, device: torch.device, precision: str) -> bool:
    """channels_last by default with bf16 (cuDNN / oneDNN NHWC kernels) and on every CPU.

    On the CPU oneDNN's NHWC convolutions were faster in fp32 too: ResNet-20 training at 287 vs
    249 img/s on 2 AVX2 cores (``resnetkit bench throughput`` with and without --channels-last).
    """
    if channels_last is None:
        return precision == "bf16" or device.type == "cpu"
    return bool(channels_last)


def autocast(device: torch.device, precision: str) -> ContextManager:
    """Autocast context for the forward pass; a no-op for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work (timing and end-of-epoch reads); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and python's ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool, device: torch.device) -> None:
    """``torch.use_deterministic_algorithms`` and the cuDNN/cuBLAS flags that it needs."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # the setter imports torch._inductor (seconds): call it only when something changes
    if enabled or torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(enabled)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = enabled
        torch.backends.cudnn.benchmark = not enabled


def rng_state() -> dict:
    """Every global RNG state, in a form ``torch.load(weights_only=True)`` accepts."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
