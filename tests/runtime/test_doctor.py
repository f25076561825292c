"""``resnetkit doctor``: CPU facts, oneDNN build lines, the AMX check's parsing and the probe table."""

from __future__ import annotations

import json

import pytest

from resnetkit.cli import main
from resnetkit.runtime.cpuinfo import amx_check, amx_ran, collect, isa_in_verbose, onednn_lines

CONFIG = """PyTorch built with:
  - GCC 13.3
  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71)
  - OpenMP 201511 (a.k.a. OpenMP 4.5)
  - CPU capability usage: AVX512
  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=Release, CXX_FLAGS= -O2, USE_MKLDNN=ON, USE_OPENMP=ON,
"""


def test_onednn_lines_keep_the_build_facts_only():
    assert onednn_lines(CONFIG) == ["Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71)", "OpenMP 201511 (a.k.a. OpenMP 4.5)",
                                    "CPU capability usage: AVX512",
                                    "Build settings: BLAS_INFO=mkl, USE_MKLDNN=ON, USE_OPENMP=ON"]


def test_isa_parsing_of_onednn_verbose():
    amx = ("onednn_verbose,v1,info,cpu,isa:Intel AVX-512 with Intel AMX\n"
           "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_amx_bf16,forward_training\n")
    avx2 = "onednn_verbose,v1,info,cpu,isa:Intel AVX2\nonednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx2,x\n"
    assert isa_in_verbose(amx) == ["Intel AVX-512 with Intel AMX", "avx512_core_amx_bf16"]
    assert isa_in_verbose(avx2) == ["Intel AVX2", "avx2"]
    assert amx_ran(amx) and not amx_ran(avx2)


def test_amx_is_seen_in_the_kernel_names_of_newer_onednn():
    # oneDNN 3.12 (torch 2.14) on a Xeon with AMX: the ISA is named avx10_1_512_amx, not avx512_core_amx
    new = ("onednn_verbose,v1,info,cpu,isa:Intel AVX10.1 and Intel AMX with bfloat16 and 8-bit integer support\n"
           "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:bf16::blocked:acdb::f0\n"
           "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx10_1_512_amx,forward_training,src\n")
    assert amx_ran(new)
    assert "avx10_1_512_amx" in isa_in_verbose(new)
    # the info line names AMX as available; a run whose kernels are all AVX-512 did not use it
    no_amx = new.replace("brg_conv_fwd:avx10_1_512_amx", "brg_conv_fwd:avx10_1_512")
    assert not amx_ran(no_amx)


def test_collect_reads_cpuinfo_flags():
    facts = collect(run_amx_check=False, cpuinfo="model name\t: Test CPU 9000\nflags\t: fpu avx2 avx512f amx_bf16\n")
    assert facts.cpu == "Test CPU 9000"
    assert facts.flags == {"avx2": True, "avx512f": True, "avx512_bf16": False, "amx_bf16": True, "amx_tile": False}
    assert facts.threads >= 1 and facts.amx_kernels is None


def test_doctor_prints_facts_and_the_probe_table(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("RESNETKIT_CACHE", str(tmp_path))
    args = ["doctor", "--model", "resnet20", "--batch-size", "4", "--image-size", "8", "--no-amx-check",
            "--json", str(tmp_path / "d.json")]
    assert main(args) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("cpu ") and "avx2 " in lines[1] and "amx_bf16 " in lines[1]
    assert any(ln.startswith("torch ") for ln in lines)
    assert "resnet20, batch 4, 8px (measured in" in out
    rows = [ln.split() for ln in lines if ln.startswith("  fp32") or ln.startswith("  bf16")]
    assert sorted((r[0], r[1]) for r in rows) == [("bf16", "channels_last"), ("bf16", "contiguous"),
                                                 ("fp32", "channels_last"), ("fp32", "contiguous")]
    report = json.loads((tmp_path / "d.json").read_text())
    pick = report["probe"]
    assert out.strip().splitlines()[-1] == (
        f"auto picks   {pick['precision']}, {'channels_last' if pick['channels_last'] else 'contiguous'}")
    assert main(args) == 0  # the second time the decision comes from the cache
    assert "8px (cached)" in capsys.readouterr().out


def test_doctor_unknown_model_is_one_line(capsys):
    assert main(["doctor", "--model", "resnet5", "--no-amx-check"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet5'" in err and "Traceback" not in err


@pytest.mark.slow
def test_amx_check_runs_onednn_verbose():
    amx, isa = amx_check()
    assert amx is not None and isa  # oneDNN printed its ISA line
    with open("/proc/cpuinfo") as f:
        has_amx = "amx_bf16" in f.read().split()
    assert amx == has_amx
