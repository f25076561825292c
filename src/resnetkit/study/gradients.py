"""Gradient flow: the weight-gradient norm of every layer and the output scale of every block.

He et al. 2015 (section 4.1) argue that the optimisation difficulty of their deep plain nets is
"unlikely to be caused by vanishing gradients": the nets use BatchNorm, which keeps forward signals
at non-zero variance, and the backward gradients "exhibit healthy norms". Mean-field theory of
BatchNorm (Yang et al. 2019, "A Mean Field Theory of Batch Normalization") predicts that deep
plain BN nets have *exploding* gradients at initialisation, growing towards the input. This module
measures both: :class:`GradientRecorder` reads ``.grad`` after each backward pass and hooks every
residual block's output, while the model trains the first steps of the study recipe through the
engine (:func:`resnetkit.training.loop.train_epoch`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import unwrap
from ..data.dataset import ImageData
from ..data.prepare import prepare_data
from ..errors import UserError
from ..io import write_json
from ..models import model_info
from ..training.config import resolve_config
from ..training.distributed import DistContext
from ..training.loop import StepState, train_epoch
from ..training.schedule import apply_lr, lr_factor
from ..training.setup import build
from .degradation import STUDY_RECIPE, WARMUP_ITERS

log = logging.getLogger(__name__)


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Each convolution and linear weight on the main path, in depth order (input to output).

    Registration order is forward order for the ResNet builder. Projection shortcuts
    (``downsample``) are left out: they are not on the path whose depth is studied.
    """
    return [(name, m.weight) for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and "downsample" not in name.split(".")]


def residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's blocks (modules with a residual branch, plain twins included), in depth order."""
    return [(name, m) for name, m in model.named_modules() if hasattr(m, "residual_norms")]


class GradientRecorder:
    """Per-layer weight-gradient norms (after a backward pass) and per-block output RMS.

    Use as a context manager so the forward hooks are removed afterwards::

        with GradientRecorder(model) as rec:
            loss = loss_fn(model(x), y); loss.backward()
            rec.record(step=0)

    ``blocks`` overrides which modules' outputs are measured (default: :func:`residual_blocks`).
    """

    def __init__(self, model: nn.Module, blocks: Sequence[tuple[str, nn.Module]] | None = None) -> None:
        self.layers = weight_layers(model)
        if not self.layers:
            raise ValueError("the model has no convolution or linear weights to record")
        self.blocks = list(residual_blocks(model) if blocks is None else blocks)
        self.records: list[dict[str, Any]] = []
        self._acts: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    @property
    def layer_names(self) -> list[str]:
        return [name for name, _ in self.layers]

    @property
    def block_names(self) -> list[str]:
        return [name for name, _ in self.blocks]

    def attach(self) -> GradientRecorder:
        """Hook every block so its latest output RMS is kept (no-op if already attached)."""
        if not self._handles:
            for name, module in self.blocks:
                self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> GradientRecorder:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            self._acts[name] = output.detach().float().pow(2).mean().sqrt()
        return hook

    def grad_norms(self) -> list[float]:
        """L2 norm of each layer's weight gradient (NaN where no gradient exists yet)."""
        return [float(p.grad.detach().double().norm()) if p.grad is not None else math.nan for _, p in self.layers]

    def weight_norms(self) -> list[float]:
        return [float(p.detach().double().norm()) for _, p in self.layers]

    def activation_rms(self) -> list[float]:
        """RMS of each block's output in the latest forward pass (NaN before the first one)."""
        return [float(self._acts[n]) if n in self._acts else math.nan for n in self.block_names]

    def record(self, step: int, weight_norm: list[float] | None = None, **extra: Any) -> dict[str, Any]:
        """Append and return ``{step, **extra, grad_norm, weight_norm, act_rms}``.

        ``weight_norm`` defaults to the current weights; pass the norms taken before an optimizer
        step to pair them with the gradients that step used.
        """
        rec = {"step": int(step), **extra, "grad_norm": self.grad_norms(),
               "weight_norm": self.weight_norms() if weight_norm is None else list(weight_norm),
               "act_rms": self.activation_rms()}
        self.records.append(rec)
        return rec


def flow_summary(record: dict[str, Any], kinds: list[str]) -> dict[str, float]:
    """Input-to-output shape of one record: first/last conv gradient ratio and per-layer factor.

    ``per_layer_factor`` is exp of the least-squares slope of log gradient norm against conv
    index: below 1, gradients grow towards the input (explode backwards); above 1, they vanish.
    """
    g = [v for v, k in zip(record["grad_norm"], kinds) if k == "conv" and v > 0 and math.isfinite(v)]
    a = [v for v in record["act_rms"] if math.isfinite(v)]
    out: dict[str, float] = {}
    if len(g) >= 2:
        xs = range(len(g))
        ys = [math.log(v) for v in g]
        mx, my = (len(g) - 1) / 2, sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        out.update(first_conv_grad=g[0], last_conv_grad=g[-1], first_over_last=g[0] / g[-1],
                   per_layer_factor=math.exp(slope))
    if a:
        out.update(first_block_rms=a[0], last_block_rms=a[-1])
    return out


def record_network(model: str, data: ImageData, source: str, *, plain: bool | None = None, steps: int = 50,
                   record_every: int = 10, seed: int = 0, batch_size: int = 128, device: str = "auto",
                   precision: str = "auto") -> dict[str, Any]:
    """Train ``model`` for ``steps`` steps of the study recipe, recording at step 0 (initial weights),
    every ``record_every`` steps and at the last step. ``plain`` overrides the model's shortcuts.

    The learning rate follows the study's first steps: linear warmup over
    :data:`~resnetkit.study.degradation.WARMUP_ITERS` iterations to 0.1, then constant.
    """
    steps_per_epoch = len(data.train_labels) // batch_size
    if steps_per_epoch < 1:
        raise UserError(f"batch size {batch_size} is larger than the {len(data.train_labels)} training images")
    cfg = resolve_config("default", model=model, data=source, model_kwargs={} if plain is None else {"plain": plain},
                         epochs=steps / steps_per_epoch, max_steps=steps, warmup_epochs=0.0, seed=seed,
                         device=device, precision=precision, **{**STUDY_RECIPE, "batch_size": batch_size})
    s = build(cfg, None, DistContext(), data)
    net = unwrap(s.model)
    is_plain = any(getattr(m, "plain", False) for _, m in residual_blocks(net))
    wanted = set(range(0, steps, record_every)) | {steps - 1}
    state = StepState()
    losses: list[float] = []

    pre_step: dict[int, list[float]] = {}  # weight norms before step k, where k is recorded

    with GradientRecorder(net) as rec:
        def set_lr(step: int) -> float:  # called by the engine before each step's forward pass
            if step in wanted:
                pre_step[step] = rec.weight_norms()
            return apply_lr(s.optimizer, lr_factor(step, steps, WARMUP_ITERS, "constant"))

        def after_step(st: StepState, _probe: Any) -> bool:
            k = st.global_step - 1  # the gradients are those of the weights after k updates
            if k in wanted:
                rec.record(k, weight_norm=pre_step.pop(k), lr=s.optimizer.param_groups[0]["lr"])
            return st.global_step >= steps

        while state.global_step < steps:
            s.train_loader.set_epoch(state.epoch)
            stats = train_epoch(s.model, s.train_loader, s.optimizer, state, device=s.device, precision=s.precision,
                                label_smoothing=0.0, set_lr=set_lr, max_steps=steps, after_step=after_step,
                                record_steps=True)
            losses.extend(stats.step_losses)
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
    for r in rec.records:
        r["loss"] = losses[r["step"]]
    kinds = ["conv" if p.dim() == 4 else "linear" for _, p in rec.layers]
    return {
        "name": f"{model} ({'plain' if is_plain else 'residual'})", "model": model, "model_kwargs": cfg.model_kwargs,
        "plain": is_plain, "params": sum(p.numel() for p in net.parameters()), "layers": rec.layer_names,
        "layer_kind": kinds, "blocks": rec.block_names, "records": rec.records,
        "init": flow_summary(rec.records[0], kinds), "end": flow_summary(rec.records[-1], kinds),
    }


def plot_gradients(report: dict[str, Any], path: str | Path) -> None:
    """Top row: gradient norm vs layer (log), one line per recorded step; bottom: block output RMS."""
    # deferred: matplotlib costs a second to import
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    nets = report["networks"]
    fig = Figure(figsize=(5.5 * len(nets), 7.5), dpi=100)
    axes = fig.subplots(2, len(nets), sharey="row", squeeze=False)
    cmap = colormaps["viridis"]
    for j, net in enumerate(nets):
        n_rec = len(net["records"])
        for i, r in enumerate(net["records"]):
            colour = cmap(i / max(1, n_rec - 1))
            axes[0][j].semilogy(range(1, len(r["grad_norm"]) + 1), r["grad_norm"], ".-", color=colour, lw=1,
                                ms=3, label=f"step {r['step']}")
            axes[1][j].semilogy(range(1, len(r["act_rms"]) + 1), r["act_rms"], ".-", color=colour, lw=1, ms=3)
        axes[0][j].set_title(net["name"])
        axes[0][j].set_xlabel("layer (conv/linear weight), input to output")
        axes[1][j].set_xlabel("block, input to output")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3, which="both")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0][j].legend(fontsize=7)
    axes[0][0].set_ylabel("weight-gradient norm")
    axes[1][0].set_ylabel("block output RMS")
    fig.suptitle(f"gradient flow on {report['data_name']}, batch {report['batch_size']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def run_gradients(model: str, data: str = "synthetic", *, out: str | Path, steps: int = 50,
                  record_every: int = 10, compare: bool = False, seed: int = 0, batch_size: int = 128,
                  image_size: int | None = None, device: str = "auto", precision: str = "auto",
                  overwrite: bool = False, progress: bool = False) -> dict[str, Any]:
    """Record gradient flow of ``model`` (with ``compare``: its plain and residual forms, same seed).

    Writes ``gradients.json`` and ``gradients.png`` under ``out`` and returns the report.
    """
    if steps < 1 or record_every < 1:
        raise UserError(f"--steps and --record-every must be at least 1, got {steps} and {record_every}")
    model_info(model)  # an unknown name fails here, before any data is prepared
    out = Path(out)
    if (out / "gradients.json").exists() and not overwrite:
        raise UserError(f"{out} already holds a gradient study; pass --overwrite or choose another --out")
    ds = prepare_data(data, image_size=image_size, progress=progress)
    variants: list[bool | None] = [True, False] if compare else [None]
    networks = []
    for plain in variants:
        networks.append(record_network(model, ds, data, plain=plain, steps=steps, record_every=record_every,
                                       seed=seed, batch_size=batch_size, device=device, precision=precision))
        log.info("%s at init: %s", networks[-1]["name"], networks[-1]["init"])
    report = {"study": "gradients", "model": model, "data": str(data), "data_name": ds.name, "steps": steps,
              "record_every": record_every, "seed": seed, "batch_size": batch_size,
              "recipe": {**STUDY_RECIPE, "batch_size": batch_size, "warmup_iterations": WARMUP_ITERS,
                         "schedule": "linear warmup, then constant"},
              "grad_norm_definition": "L2 norm of each conv/linear weight's gradient of the mean batch loss, "
                                      "recorded at step k with the weights after k updates",
              "networks": networks}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "gradients.json", report)
    plot_gradients(report, out / "gradients.png")
    return report
