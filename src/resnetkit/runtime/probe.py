"""``--precision auto`` on CPUs by measurement: time real training steps, keep the fastest, cache it.

CPU flags alone do not decide whether bf16 pays: bf16 autocast trained ResNet-20 about 1.7x
faster than fp32 on a Xeon with AMX, 1.6x faster on an EPYC with AVX-512 BF16, 0.74x on a Xeon
with AVX-512 BF16 but no AMX, and about 25x slower on an AVX2-only EPYC. So on first use for a
(CPU, torch, model, batch, image size) the probe times a few forward + backward + SGD steps of
the actual model on random data of the real batch shape, in fp32 and bf16 and in both memory
formats, and caches the winner in ``<resnetkit cache>/precision-probe.json``.

The cost is bounded: every candidate is first "scouted" with one step on a small batch (a bf16
step that is 25x slower costs little on 16 images), candidates more than ``SCOUT_DROP`` times
slower per image than the best scout are dropped, and the survivors get a warm-up and at most
``steps`` timed full-batch steps each (one once ``max_seconds`` have passed): a few seconds for
the cpu-fast recipe's network on 2 AVX2 cores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data.cache import cache_root
from .device import keep_freed_memory

log = logging.getLogger(__name__)

PROBE_FILE = "precision-probe.json"
PROBE_VERSION = 2  # 2: timed with the allocator kept warm and small-map GEMM weight gradients
SCOUT_BATCH = 16
SCOUT_DROP = 2.0  # a scout this many times slower per image than the best is not timed further
CANDIDATES: tuple[tuple[str, bool], ...] = (("fp32", True), ("fp32", False), ("bf16", True), ("bf16", False))
RELEVANT_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")

#: ``(precision, channels_last, batch, steps)`` -> median seconds per step of ``steps`` timed
#: training steps, after one untimed warm-up step (allocations, oneDNN primitive creation)
StepTimer = Callable[[str, bool, int, int], float]


@dataclass
class ProbeRow:
    """One candidate's measurement; ``images_per_s`` is 0 for a candidate dropped after scouting."""

    precision: str
    channels_last: bool
    scout_images_per_s: float
    images_per_s: float = 0.0
    steps: int = 0
    dropped: bool = False


@dataclass
class ProbeDecision:
    precision: str
    channels_last: bool
    rows: list[ProbeRow] = field(default_factory=list)
    key: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    seconds: float = 0.0


def read_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_model_and_flags(cpuinfo: str | None = None) -> tuple[str, list[str]]:
    """The first ``model name`` and ``flags`` of ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    import platform

    text = read_cpuinfo() if cpuinfo is None else cpuinfo
    model, flags = "", []
    for line in text.splitlines():
        k, _, v = line.partition(":")
        k = k.strip()
        if k == "model name" and not model:
            model = v.strip()
        elif k in ("flags", "Features") and not flags:
            flags = v.split()
    return model or platform.processor() or platform.machine(), flags


def cpu_isa(flags: list[str]) -> list[str]:
    """The bf16 matrix flags a CPU has (``avx512_bf16``, ``amx_bf16``), else its widest vector flag.

    ``model name`` alone does not tell CPUs apart (a virtual machine may show just "AMD EPYC" for
    an AVX2-only part and for one with AVX-512 BF16), and these flags decide what bf16 can gain.
    """
    have = set(flags)
    isa = [f for f in ("avx512_bf16", "amx_bf16") if f in have]
    if not isa:
        isa = ["avx512f"] if "avx512f" in have else ["avx2"] if "avx2" in have else []
    return isa


def cpu_label(cpuinfo: str | None = None) -> str:
    """``"AMD EPYC (avx512_bf16)"``: the CPU model with :func:`cpu_isa`, for naming the hardware of a figure."""
    model, flags = cpu_model_and_flags(cpuinfo)
    isa = cpu_isa(flags)
    return f"{model} ({', '.join(isa)})" if isa else model


def probe_key(model_name: str, model_kwargs: dict, batch_size: int, image_size: int, *,
              cpuinfo: str | None = None) -> dict[str, Any]:
    """What a cached decision depends on: CPU model + flags hash, threads, torch, model, batch, size."""
    cpu, flags = cpu_model_and_flags(cpuinfo)
    return {"version": PROBE_VERSION, "cpu": cpu,
            "flags_sha": hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16],
            "threads": torch.get_num_threads(), "torch": str(torch.__version__), "model": model_name,
            "model_kwargs": json.loads(json.dumps(model_kwargs or {}, sort_keys=True, default=str)),
            "batch_size": int(batch_size), "image_size": int(image_size)}


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def real_step_timer(model_name: str, model_kwargs: dict, num_classes: int, in_channels: int,
                    image_size: int, device: torch.device) -> StepTimer:
    """A :data:`StepTimer` that trains the real model (fresh copy per candidate) on random data."""
    from ..models import create_model

    keep_freed_memory(device)  # as training runs

    def time_steps(precision: str, channels_last: bool, batch: int, steps: int) -> float:
        # the run's own RNG streams (already seeded) must not depend on whether the probe ran
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)
            return _time(precision, channels_last, batch, steps)

    def _time(precision: str, channels_last: bool, batch: int, steps: int) -> float:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = create_model(model_name, num_classes=num_classes, in_channels=in_channels, **(model_kwargs or {}))
        model.to(device, memory_format=fmt).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        x = torch.randn(batch, in_channels, image_size, image_size, device=device).to(dtype=dtype, memory_format=fmt)
        y = torch.randint(0, num_classes, (batch,), device=device)
        times = []
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])

    return time_steps


def measure(timer: StepTimer, batch_size: int, *, steps: int = 2, max_seconds: float = 8.0,
            candidates: tuple[tuple[str, bool], ...] = CANDIDATES,
            clock: Callable[[], float] = time.perf_counter) -> list[ProbeRow]:
    """Scout every candidate on ``SCOUT_BATCH`` images, then time the survivors at ``batch_size``.

    A full-batch measurement is ``steps`` timed steps after the timer's warm-up step; once
    ``max_seconds`` have passed since the start, the remaining survivors get a single timed step.
    """
    start = clock()
    scout = min(SCOUT_BATCH, batch_size)
    rows = []
    for prec, cl in candidates:
        rows.append(ProbeRow(prec, cl, scout / max(timer(prec, cl, scout, 1), 1e-9)))
    best_scout = max(r.scout_images_per_s for r in rows)
    for r in rows:
        if r.scout_images_per_s * SCOUT_DROP < best_scout:
            r.dropped = True
            continue
        over = clock() - start > max_seconds
        r.steps = 1 if over else steps
        r.images_per_s = batch_size / max(timer(r.precision, r.channels_last, batch_size, r.steps), 1e-9)
    return rows


def pick(rows: list[ProbeRow]) -> tuple[str, bool]:
    """The fastest measured candidate; on a tie (within 3%) the earlier one, i.e. fp32 first."""
    timed = [r for r in rows if not r.dropped and r.images_per_s > 0]
    if not timed:
        return "fp32", True
    best = max(r.images_per_s for r in timed)
    win = next(r for r in timed if r.images_per_s >= best / 1.03)
    return win.precision, win.channels_last


def _load_table(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_table(path: Path, table: dict[str, Any]) -> None:
    """Atomic write (temporary file, then rename), so concurrent runs never read half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as e:  # a read-only cache costs a re-probe next time, nothing more
        log.warning("could not save the precision probe to %s (%s)", path, e)


def decide(model_name: str, model_kwargs: dict | None, batch_size: int, image_size: int, *,
           num_classes: int = 10, in_channels: int = 3, device: torch.device | None = None,
           timer: StepTimer | None = None, cache_dir: str | Path | None = None, refresh: bool = False,
           steps: int = 2, max_seconds: float = 8.0) -> ProbeDecision:
    """The fastest (precision, channels_last) for this model and batch on this CPU, cached."""
    device = device or torch.device("cpu")
    key = probe_key(model_name, model_kwargs or {}, batch_size, image_size)
    digest = key_digest(key)
    path = cache_root(cache_dir) / PROBE_FILE
    table = _load_table(path)
    hit = table.get(digest)
    if hit and not refresh:
        rows = [ProbeRow(**r) for r in hit.get("rows", [])]
        d = ProbeDecision(hit["precision"], bool(hit["channels_last"]), rows, key, cached=True)
        log.info("precision auto: %s, %s (cached probe for %s, batch %d, %dpx on %s)", d.precision,
                 _layout(d.channels_last), model_name, batch_size, image_size, key["cpu"])
        return d
    t0 = time.perf_counter()
    timer = timer or real_step_timer(model_name, model_kwargs or {}, num_classes, in_channels, image_size, device)
    rows = measure(timer, batch_size, steps=steps, max_seconds=max_seconds)
    prec, cl = pick(rows)
    d = ProbeDecision(prec, cl, rows, key, cached=False, seconds=time.perf_counter() - t0)
    table = _load_table(path)  # re-read: another run may have added entries meanwhile
    table[digest] = {"key": key, "precision": prec, "channels_last": cl, "rows": [asdict(r) for r in rows],
                     "probe_seconds": round(d.seconds, 2), "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _save_table(path, table)
    log.info("precision auto: %s, %s, measured in %.1f s (%s) for %s, batch %d, %dpx on %s", prec, _layout(cl),
             d.seconds, format_rows(rows), model_name, batch_size, image_size, key["cpu"])
    return d


def _layout(channels_last: bool) -> str:
    return "channels_last" if channels_last else "contiguous"


def format_rows(rows: list[ProbeRow]) -> str:
    return "; ".join(f"{r.precision} {_layout(r.channels_last)} "
                     + ("dropped" if r.dropped else f"{r.images_per_s:.0f} img/s") for r in rows)


def probe_enabled() -> bool:
    """False when ``RESNETKIT_PRECISION_PROBE`` is off (0, off, false, no)."""
    return os.environ.get("RESNETKIT_PRECISION_PROBE", "on").lower() not in ("0", "off", "false", "no")


def probe_applies(precision: str | None, device: torch.device) -> bool:
    """Whether ``precision`` on ``device`` is decided by timing: ``auto`` on a CPU with the probe on."""
    return precision in (None, "", "auto") and device.type == "cpu" and probe_enabled()


def measured_rate(d: ProbeDecision) -> float:
    """Training images per second of the decision's own precision and layout (0 if it was not timed)."""
    return next((r.images_per_s for r in d.rows if (r.precision, r.channels_last) == (d.precision, d.channels_last)),
                0.0)


def resolve_precision_layout(precision: str | None, channels_last: bool | None, device: torch.device, *,
                             model_name: str, model_kwargs: dict | None, batch_size: int, image_size: int,
                             num_classes: int = 10, in_channels: int = 3) -> tuple[str, bool]:
    """``auto`` on a CPU -> the probe's decision; otherwise the fixed rules of the device module.

    An explicit ``channels_last`` is kept; with ``auto`` precision it is the probe's layout.
    ``RESNETKIT_PRECISION_PROBE=off`` skips the probe (the flag rule instead), e.g. in test suites
    that start many short runs, each in a fresh cache.
    """
    from .device import resolve_channels_last, resolve_precision

    if probe_applies(precision, device):
        d = decide(model_name, model_kwargs, batch_size, image_size, num_classes=num_classes,
                   in_channels=in_channels, device=device)
        return d.precision, d.channels_last if channels_last is None else bool(channels_last)
    prec = resolve_precision(precision, device)
    return prec, resolve_channels_last(channels_last, device, prec)
