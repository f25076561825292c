"""--precision auto by measurement: the rule (fastest wins, slow scouts dropped), the cache, its key."""

from __future__ import annotations

import json

import pytest
import torch

from resnetkit.runtime import probe
from resnetkit.runtime.probe import decide, measure, pick, probe_key, resolve_precision_layout


class StubTimer:
    """Seconds per image for each (precision, channels_last); records every call."""

    def __init__(self, per_image: dict[tuple[str, bool], float]) -> None:
        self.per_image = per_image
        self.calls: list[tuple[str, bool, int, int]] = []

    def __call__(self, precision: str, channels_last: bool, batch: int, steps: int) -> float:
        self.calls.append((precision, channels_last, batch, steps))
        return self.per_image[(precision, channels_last)] * batch


AVX2 = {("fp32", True): 1 / 1000, ("fp32", False): 1 / 800, ("bf16", True): 1 / 40, ("bf16", False): 1 / 35}
AMX = {("fp32", True): 1 / 600, ("fp32", False): 1 / 500, ("bf16", True): 1 / 1100, ("bf16", False): 1 / 700}


@pytest.mark.parametrize("table, want", [(AVX2, ("fp32", True)), (AMX, ("bf16", True)),
                                         ({**AVX2, ("fp32", False): 1 / 1500}, ("fp32", False))])
def test_fastest_candidate_wins(table, want):
    timer = StubTimer(table)
    rows = measure(timer, 256, steps=3)
    assert pick(rows) == want
    best = next(r for r in rows if (r.precision, r.channels_last) == want)
    assert best.images_per_s == pytest.approx(1 / table[want])


def test_slow_scouts_are_not_timed_at_full_batch():
    timer = StubTimer(AVX2)
    rows = measure(timer, 256, steps=3)
    assert len(timer.calls) == 4 + 2  # four scouts, two survivors
    dropped = {(r.precision, r.channels_last) for r in rows if r.dropped}
    assert dropped == {("bf16", True), ("bf16", False)}  # 25x slower on the 16-image scout
    full = [c for c in timer.calls if c[2] == 256]
    assert {(p, cl) for p, cl, _, _ in full} == {("fp32", True), ("fp32", False)}
    assert all(c[2] == probe.SCOUT_BATCH for c in timer.calls if c[0] == "bf16")
    assert sorted(c[3] for c in full) == [3, 3]  # one call per survivor, timing `steps` steps


def test_tie_prefers_fp32():
    timer = StubTimer({("fp32", True): 1 / 1000, ("fp32", False): 1 / 500, ("bf16", True): 1 / 1020,
                       ("bf16", False): 1 / 500})
    assert pick(measure(timer, 64)) == ("fp32", True)


def test_time_cap_cuts_steps():
    ticks = iter(range(0, 1000, 100))  # every clock read is 100 s later
    rows = measure(StubTimer(AMX), 64, steps=5, max_seconds=50, clock=lambda: float(next(ticks)))
    assert all(r.steps == 1 for r in rows if not r.dropped)


def test_decision_is_cached_and_a_hit_skips_timing(tmp_path):
    first = StubTimer(AMX)
    d1 = decide("resnet20", {}, 128, 32, timer=first, cache_dir=tmp_path)
    assert (d1.precision, d1.channels_last, d1.cached) == ("bf16", True, False)
    assert first.calls
    again = StubTimer(AVX2)  # would pick fp32 if it were consulted
    d2 = decide("resnet20", {}, 128, 32, timer=again, cache_dir=tmp_path)
    assert (d2.precision, d2.channels_last, d2.cached) == ("bf16", True, True)
    assert again.calls == []
    assert len(d2.rows) == 4 and d2.rows[0].images_per_s == pytest.approx(d1.rows[0].images_per_s)
    table = json.loads((tmp_path / probe.PROBE_FILE).read_text())
    assert len(table) == 1 and next(iter(table.values()))["key"]["model"] == "resnet20"
    d3 = decide("resnet20", {}, 128, 32, timer=again, cache_dir=tmp_path, refresh=True)
    assert (d3.precision, d3.cached) == ("fp32", False)


@pytest.mark.parametrize("change", [dict(model_name="resnet56"), dict(batch_size=256), dict(image_size=24),
                                    dict(model_kwargs={"width_mult": 0.5})])
def test_key_changes_with_model_batch_size_and_kwargs(tmp_path, change):
    base = dict(model_name="resnet20", model_kwargs={}, batch_size=128, image_size=32)
    k0 = probe.key_digest(probe_key(**base))
    assert probe.key_digest(probe_key(**base)) == k0
    assert probe.key_digest(probe_key(**{**base, **change})) != k0
    decide(**{**base, "timer": StubTimer(AMX), "cache_dir": tmp_path})
    timer = StubTimer(AVX2)
    d = decide(**{**base, **change, "timer": timer, "cache_dir": tmp_path})
    assert not d.cached and timer.calls and d.precision == "fp32"


def test_key_changes_with_cpu_flags():
    a = probe_key("resnet20", {}, 128, 32, cpuinfo="model name : X\nflags : avx2 fma\n")
    b = probe_key("resnet20", {}, 128, 32, cpuinfo="model name : X\nflags : avx2 fma amx_bf16\n")
    assert a["cpu"] == b["cpu"] == "X" and a["flags_sha"] != b["flags_sha"]


def test_resolve_uses_probe_on_cpu_only_for_auto(monkeypatch):
    seen = []

    def fake_decide(*args, **kwargs):
        seen.append(args)
        return probe.ProbeDecision("bf16", False)

    monkeypatch.setattr(probe, "decide", fake_decide)
    monkeypatch.setenv("RESNETKIT_PRECISION_PROBE", "on")
    cpu = torch.device("cpu")
    kw = dict(model_name="resnet20", model_kwargs={}, batch_size=64, image_size=32)
    assert resolve_precision_layout("auto", None, cpu, **kw) == ("bf16", False)
    assert resolve_precision_layout("auto", True, cpu, **kw) == ("bf16", True)  # explicit layout kept
    assert resolve_precision_layout("fp32", None, cpu, **kw) == ("fp32", True)  # explicit precision: no probe
    assert len(seen) == 2
    monkeypatch.setenv("RESNETKIT_PRECISION_PROBE", "off")
    assert resolve_precision_layout("auto", None, cpu, **kw)[0] in ("fp32", "bf16")
    assert len(seen) == 2


@pytest.mark.slow
def test_real_probe_times_a_tiny_model(tmp_path):
    d = decide("resnet_cpu", {"stem_width": 8, "widths": (16, 16), "residual": (True, False)}, 8, 16,
               cache_dir=tmp_path, steps=1)
    assert d.precision in ("fp32", "bf16") and not d.cached
    timed = [r for r in d.rows if not r.dropped]
    assert timed and all(r.images_per_s > 0 and r.scout_images_per_s > 0 for r in timed)
    assert max(timed, key=lambda r: r.images_per_s).images_per_s >= max(r.images_per_s for r in timed) / 1.03


def test_real_timer_leaves_the_global_rng_untouched():
    """The probe runs after the run seeded torch: model initialisation must not depend on it."""
    timer = probe.real_step_timer("resnet20", {"width_mult": 0.25}, 10, 3, 8, torch.device("cpu"))
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    assert timer("fp32", False, 2, 1) > 0
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize("flags, label", [
    ("fpu sse avx2 fma", "AMD EPYC (avx2)"),
    ("avx2 avx512f avx512bw avx512_bf16 avx512_vnni", "AMD EPYC (avx512_bf16)"),
    ("avx2 avx512f avx512bw", "AMD EPYC (avx512f)"),
    ("avx2 avx512f avx512_bf16 amx_bf16 amx_tile", "AMD EPYC (avx512_bf16, amx_bf16)"),
    ("fpu sse", "AMD EPYC"),
])
def test_cpu_label_tells_apart_cpus_with_the_same_model_name(flags, label):
    # a virtual machine may name an AVX2-only EPYC and one with AVX-512 BF16 both just "AMD EPYC"
    assert probe.cpu_label(f"model name\t: AMD EPYC\nflags\t\t: {flags}\n") == label
