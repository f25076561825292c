"""Muon for convolution filters, Nesterov SGD for the rest, as one optimizer.

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks") replaces a
weight matrix's momentum update by the nearest semi-orthogonal matrix (about ``U V^T`` of its SVD),
so every direction the update spans moves by the same amount instead of a few dominant ones. A
convolution's filters ``(out, in, k, k)`` are treated as the matrix ``(out, in * k * k)``, as in the
airbench94 CIFAR-10 speedrun that first used it on a ConvNet. The orthogonalisation is a
Newton-Schulz iteration (five steps of a quintic polynomial whose coefficients, 3.4445, -4.7750
and 2.0315, are the published ones); it costs a few small matrix products per filter bank and
step, run in bf16 where the run trains in bf16.

``torch.optim.Muon`` (PyTorch 2.9+) takes only 2-D parameters and leaves the rest to a second
optimizer; here one optimizer holds both kinds, so a run keeps one learning-rate schedule, one
``state_dict`` in its checkpoint and one ``step()``. Groups with ``muon=True`` get the Muon update
with their own ``lr`` and ``momentum``; the others get PyTorch's SGD update (coupled weight decay,
Nesterov momentum) through ``torch.optim.sgd.sgd``, the function ``torch.optim.SGD`` steps with.

Before each update a Muon filter bank is rescaled to the Frobenius norm ``sqrt(out)`` (rows of
unit norm on average), as airbench94 does: a convolution followed by BatchNorm computes the same
function at any scale, so the rescaling only fixes the step size relative to the weights, which
weight decay would otherwise have to. (In a pre-activation block the branch's last convolution is
added to the shortcut before the next BatchNorm, so there the rescaling also sets the branch's
scale against the shortcut's.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.sgd import sgd as sgd_update

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


@torch.no_grad()
def orthogonalize(m: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32,
                  eps: float = 1e-7) -> torch.Tensor:
    """About ``U V^T`` of the 2-D ``m`` (singular values pushed into roughly [0.7, 1.2]), in ``dtype``."""
    if m.ndim != 2:
        raise ValueError(f"orthogonalize takes a matrix, got shape {tuple(m.shape)}")
    a, b, c = NS_COEFFICIENTS
    x = m.to(dtype)
    x = x / (x.norm() + eps)  # spectral norm <= Frobenius norm <= 1: inside the iteration's basin
    wide = x.size(0) <= x.size(1)
    if not wide:
        x = x.T  # iterate on the smaller Gram matrix
    for _ in range(steps):  # x <- a x + (b G + c G^2) x with G = x x^T; the sums ride in the products
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x if wide else x.T


class MuonSGD(torch.optim.Optimizer):
    """Muon on the groups marked ``muon=True`` (4-D filters), Nesterov SGD on the others."""

    def __init__(self, params: Iterable[dict], lr: float, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5, ns_dtype: torch.dtype = torch.float32) -> None:
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, muon=False,
                        ns_steps=ns_steps)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype  # not state: a resumed run may pick another precision on another machine

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 (torch.optim.Optimizer's signature)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["muon"]:
                self._muon(group, params)
            elif params:
                bufs = [self.state[p].get("momentum_buffer") for p in params]
                sgd_update(params, [p.grad for p in params], bufs, weight_decay=group["weight_decay"],
                           momentum=group["momentum"], lr=group["lr"], dampening=0.0, nesterov=group["nesterov"],
                           maximize=False)
                for p, buf in zip(params, bufs):
                    self.state[p]["momentum_buffer"] = buf
        return loss

    def _muon(self, group: dict, params: list[torch.Tensor]) -> None:
        mu = group["momentum"]
        for p in params:
            buf = self.state[p].get("momentum_buffer")
            if buf is None:
                buf = self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            buf.mul_(mu).add_(p.grad)
            update = p.grad.add(buf, alpha=mu) if group["nesterov"] else buf
            p.mul_(math.sqrt(p.size(0)) / p.norm().clamp_min(1e-12))
            ortho = orthogonalize(update.reshape(len(update), -1), group["ns_steps"], self.ns_dtype)
            p.add_(ortho.view_as(p).to(p.dtype), alpha=-group["lr"])


def muon_filters(model: nn.Module) -> set[int]:
    """``id`` of every parameter Muon updates: the convolution filters (every 4-D weight)."""
    return {id(p) for p in model.parameters() if p.ndim == 4}
