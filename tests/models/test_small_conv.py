"""Conv3x3: the GEMM weight gradient on small bf16 maps equals the convolution's, and is taken only there."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetkit.models import create_model
from resnetkit.models.small_conv import SMALL_MAP_PIXELS, Conv3x3, weight_grad_gemm


@pytest.mark.parametrize("size", [(1, 1), (3, 3), (4, 4), (3, 5), (7, 2)])
def test_weight_grad_gemm_equals_the_convolutions_in_fp32(size):
    torch.manual_seed(0)
    x = torch.randn(4, 5, *size, dtype=torch.float64)
    w = torch.randn(7, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 7, *size, dtype=torch.float64)
    (expected,) = torch.autograd.grad(F.conv2d(x, w, padding=1), w, g)
    got = weight_grad_gemm(x, g)
    assert got.shape == (7, 5, 3, 3)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # channels_last inputs (what training uses) give the same
    cl = weight_grad_gemm(x.contiguous(memory_format=torch.channels_last), g.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(cl, expected, rtol=1e-10, atol=1e-10)


def _grads(conv: nn.Module, x: torch.Tensor, g: torch.Tensor, bf16: bool):
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        y = conv(x)
    y.backward(g.to(y.dtype))
    return y, x.grad, conv.weight.grad


def test_bf16_small_map_takes_the_gemm_path_with_the_same_gradients():
    torch.manual_seed(0)
    ref = nn.Conv2d(32, 48, 3, padding=1, bias=False)
    conv = Conv3x3(32, 48)
    conv.load_state_dict(ref.state_dict())  # the same parameters under the same names
    x = torch.randn(16, 32, 4, 4).contiguous(memory_format=torch.channels_last)
    g = torch.randn(16, 48, 4, 4)
    y_ref, gx_ref, gw_ref = _grads(ref, x, g, bf16=True)
    y, gx, gw = _grads(conv, x, g, bf16=True)
    assert type(y.grad_fn).__name__ == "_SmallMapConvBackward"
    assert y.dtype == torch.bfloat16 and gw.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)  # oneDNN's forward, unchanged
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=0)  # and its input gradient
    # the weight gradient differs only by bf16 rounding: within 1% of its largest entry
    assert (gw - gw_ref).abs().max() <= 0.01 * gw_ref.abs().max()
    assert gw.abs().max() > 0


@pytest.mark.parametrize("case", ["fp32", "large map", "no grad", "frozen weight"])
def test_other_cases_keep_the_plain_convolution(case):
    conv = Conv3x3(8, 8)
    side = 5 if case == "large map" else 4
    assert side * side > SMALL_MAP_PIXELS or case != "large map"
    if case == "frozen weight":
        conv.weight.requires_grad_(False)
    x = torch.randn(2, 8, side, side, requires_grad=case != "no grad")
    with torch.set_grad_enabled(case != "no grad"), torch.autocast("cpu", torch.bfloat16, enabled=case != "fp32"):
        y = conv(x)
    name = type(y.grad_fn).__name__ if y.grad_fn is not None else None
    assert name != "_SmallMapConvBackward"
    torch.testing.assert_close(y.float(), F.conv2d(x.detach().to(y.dtype), conv.weight.detach().to(y.dtype),
                                                   padding=1).float(), rtol=0, atol=0)


def test_resnet_cpu_trains_its_small_maps_through_the_gemm_path():
    """resnet_cpu's pair and last stage see 4x4 maps: a bf16 training step matches one with plain convolutions."""
    torch.manual_seed(0)
    model = create_model("resnet_cpu")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert convs and all(isinstance(m, Conv3x3) for m in convs)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    seen = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append(type(out.grad_fn).__name__)) for m in convs]
    with torch.autocast("cpu", torch.bfloat16):
        loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    for h in hooks:
        h.remove()
    # stages at 16x16 and 8x8, then the pair's two convolutions and the last stage at 4x4
    assert seen.count("_SmallMapConvBackward") == 3 and len(seen) == 5
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
