"""Precision and layout choices: bf16 autocast agrees with fp32; auto picks bf16 only where native."""

import pytest
import torch

from resnetkit.models import create_model
from resnetkit.runtime import device as dev


def test_bf16_autocast_forward_matches_fp32_within_tolerance():
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        with dev.autocast(torch.device("cpu"), "bf16"):
            low = model(x).float()
        cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    scale = ref.abs().max()
    assert (low - ref).abs().max() / scale < 0.05  # bf16 keeps ~3 significant digits
    assert (low - ref).abs().max() > 0  # it really ran in bf16
    assert torch.allclose(cl, ref, atol=1e-4, rtol=1e-4)  # the layout changes no result


def test_only_amx_cpus_count_as_fast_bf16():
    # AVX-512 BF16 without AMX trained ResNet-20 at 365 img/s in bf16 against 492 in fp32
    assert not dev.bf16_pays_on_cpu("flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_fp16\n")
    assert not dev.bf16_pays_on_cpu("flags\t\t: fpu sse avx2\n")
    assert dev.bf16_pays_on_cpu("flags\t\t: fpu avx512_bf16 amx_bf16 amx_tile amx_int8\n")


def test_auto_precision_is_bf16_only_where_native(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(dev, "cpu_bf16_pays", lambda: False)
    assert dev.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(dev, "cpu_bf16_pays", lambda: True)
    assert dev.resolve_precision("auto", cpu) == "bf16"
    assert dev.resolve_precision("fp32", cpu) == "fp32"
    assert dev.resolve_channels_last(None, cpu, "fp32") is True
    assert dev.resolve_channels_last(False, cpu, "bf16") is False
    with pytest.raises(Exception, match="precision"):
        dev.resolve_precision("fp16", cpu)
