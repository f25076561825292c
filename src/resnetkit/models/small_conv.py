"""A 3x3 convolution whose weight gradient on small maps comes from one matrix product.

oneDNN computes the weight gradient of a 3x3 convolution on a tiny feature map far below its
speed on larger ones. Measured on a 2-core Intel Xeon with AMX (torch 2.14.1, bf16 autocast,
channels_last, batch 256; docs/speed-cpu.md): for 256 channels on a 3x3 map oneDNN's weight
gradient took 13.1 ms, one GEMM over the unfolded input (im2col: the 2,304 x 256 gradient by the
2,304 x 2,304 patches) 3.0 ms, and a layer's whole forward and backward pass 17.9 ms against
8.8 ms. On 4x4 maps the layer ran 1.4-1.8x faster; from 5x5 up the GEMM gained little and from
7x7 it lost, and in fp32 it gained nothing. So only maps of at most :data:`SMALL_MAP_PIXELS`
pixels trained in bf16 on a CPU take this path; the forward pass and the input gradient stay
oneDNN's, and the results equal ``nn.Conv2d``'s up to bf16 rounding of the weight gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: The largest feature map (height x width) whose weight gradient takes the GEMM path.
SMALL_MAP_PIXELS = 16


def weight_grad_gemm(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The weight gradient of a 3x3, stride-1, padding-1 convolution of ``x`` whose output got ``grad``.

    The input's 3x3 patches are laid out as rows (channels last, offsets outermost), so the
    gradient is one ``(O, N*H*W) @ (N*H*W, 9*C)`` product.
    """
    n, c, h, w = x.shape
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # N, H+2, W+2, C
    patches = torch.cat([padded[:, dy:dy + h, dx:dx + w, :] for dy in range(3) for dx in range(3)], dim=3)
    rows = grad.permute(0, 2, 3, 1).reshape(-1, grad.shape[1])
    return (rows.T @ patches.reshape(-1, 9 * c)).view(-1, 3, 3, c).permute(0, 3, 1, 2)


class _SmallMapConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 (autograd's ctx)
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, padding=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # noqa: ANN001
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0],
                                                         1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = weight_grad_gemm(x, grad)
        return grad_x, grad_w


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype


class Conv3x3(nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)``: the same parameters and
    state dict, with the weight gradient of small bf16 maps on a CPU from :func:`weight_grad_gemm`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1, bias=False)

    def _gemm_pays(self, x: torch.Tensor, dtype: torch.dtype) -> bool:
        return (x.device.type == "cpu" and x.dim() == 4 and x.shape[-2] * x.shape[-1] <= SMALL_MAP_PIXELS
                and dtype == torch.bfloat16 and self.weight.requires_grad and torch.is_grad_enabled()
                and not torch.jit.is_tracing() and not torch.jit.is_scripting()
                and not torch.compiler.is_compiling())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x)
        if not self._gemm_pays(x, dtype):
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):  # the casts autocast would make, made here
            return _SmallMapConv.apply(x.to(dtype), self.weight.to(dtype))
