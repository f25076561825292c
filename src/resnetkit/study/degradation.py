"""The degradation study: plain vs residual networks of several depths (He et al. 2015, Figure 6).

Every network is trained by resnetkit's own training path (:func:`resnetkit.training.trainer.fit`) with
one fixed recipe, the same data, the same seed and the same number of iterations (the paper's
curves compare networks at equal iterations; an equal *time* split would hand the shallow nets
~3x more steps and bias the comparison). Two training errors are recorded after every epoch:

* ``train_error``: the network's error on a fixed sample of the training images (``train_eval``
  of them, no augmentation, eval mode), i.e. how well the weights at that iteration fit the
  training data. The verdict is computed from this one.
* ``running_train_error``: ``1 - accuracy`` on the epoch's augmented training batches in train
  mode (a window of iterations). It mixes in the weights of the whole epoch and BatchNorm's
  per-batch statistics, whose noise grows with depth; a pilot on 5,000 JPEG CIFAR-10 images put
  ResNet-56 above ResNet-20 by this measure while ResNet-56 had the lower test error. Its
  verdict is reported too (``verdict_running``).

Test error is measured after every epoch. On a subset of a dataset the epochs are short, so
there are many curve points.

The networks train in rounds: each round continues every run by one epoch (``fit(resume=...)``
with ``stop_after_steps``, which continues bit for bit), so all networks always have the same
number of iterations. The learning rate follows the paper's step schedule over a planned number
of epochs (divided by 10 at 50% and 75%; He et al. use 32k and 48k of 64k iterations): with
``epochs`` the plan is that; with a time budget it is fixed after the first round, from that
round's duration, as the number of rounds that fit (the first round runs at full lr under any
plan of two or more epochs, so fixing the plan late changes nothing). A round starts only if
its predecessor's duration still fits, so the budget holds even if the machine slows down; the
report says whether the schedule completed (:mod:`.budget`).

With the paper's initialisation the deeper ResNet needs iterations to catch up with the shallower
one: ResNet-56 ended below ResNet-20 after 2,730 iterations and above it after 702 (details in
:mod:`.budget`). When the plan gives fewer than :data:`~.budget.PAPER_INIT_MIN_ITERATIONS`, the
study says so before training goes on. ``zero_init_residual`` zeroes the last BatchNorm scale of
every residual branch (Goyal et al. 2017), so ResNets of every depth start as the same shallow
function; with it ResNet-56 ended below ResNet-20 after 1,209 and 1,326 iterations (two seeds).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_model
from ..data.dataset import ImageData
from ..data.prepare import prepare_data
from ..errors import UserError
from ..io import write_json
from ..models import create_model, list_models
from ..runtime.device import cpu_description, resolve_device, resolve_precision
from ..runtime.inference import evaluate
from ..runtime.loaders import eval_loader
from ..runtime.probe import resolve_precision_layout
from ..training.config import TrainConfig, resolve_config
from ..training.trainer import fit
from .budget import UNPLANNED_EPOCHS, StudyPlan, next_round_fits, plan_study
from .figure import plot_degradation
from .verdict import degradation_verdict, network_label

log = logging.getLogger(__name__)

#: He et al. 2015, section 4.2: SGD with momentum 0.9, lr 0.1, weight decay 1e-4 on every weight,
#: batch 128, 4-pixel zero-padded random crop + horizontal flip, no label smoothing, lr divided by
#: 10 at 50% and 75% of the run (32k and 48k of 64k iterations in the paper). Added: a linear
#: warmup over the first epoch, at most :data:`WARMUP_ITERS` iterations (the paper warms ResNet-110
#: up at lr 0.01; deep plain nets have exploding gradients at initialisation, see ``gradients``).
STUDY_RECIPE: dict[str, Any] = dict(
    batch_size=128, lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4, no_decay_1d=False,
    label_smoothing=0.0, schedule="step", crop_pad=4, crop_fill="zero", flip="random", cutout=0,
)
WARMUP_ITERS = 200


def check_depths(depths: Sequence[int]) -> list[int]:
    """Sorted distinct depths, each of the paper's form 6n+2 (8, 14, 20, 32, 44, 56, 110, ...)."""
    if not depths:
        raise UserError("give at least one depth, for example --depths 20 56")
    bad = [d for d in depths if d < 8 or (d - 2) % 6]
    if bad:
        raise UserError(f"depth {bad[0]} is not of the form 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...)")
    return sorted(set(int(d) for d in depths))


def model_spec(depth: int, plain: bool) -> tuple[str, dict[str, Any]]:
    """Registry name and overrides of the paper's CIFAR network of ``depth`` (option-A shortcuts).

    Registered depths use their own names (``plain56``, ``resnet56``); any other 6n+2 depth is
    ``resnet20`` with ``layers=(n, n, n)``, plus ``plain=True`` for the plain twin.
    """
    name = f"{'plain' if plain else 'resnet'}{depth}"
    if name in list_models():
        return name, {}
    n = (depth - 2) // 6
    return "resnet20", {"layers": [n, n, n], "plain": plain}


def take_subset(data: ImageData, n_train: int | None, n_test: int | None, seed: int) -> ImageData:
    """A random subset (fixed by ``seed``) of the training and/or test split; ``None`` keeps all."""

    def pick(total: int, n: int | None, what: str, salt: int) -> torch.Tensor | None:
        if n is None or n == total:
            return None
        if not 0 < n < total:
            raise UserError(f"the {what} subset must be between 1 and the {total} {what} images, got {n}")
        gen = torch.Generator().manual_seed(seed * 1000 + salt)
        return torch.randperm(total, generator=gen)[:n].sort().values

    tr = pick(len(data.train_labels), n_train, "training", 1)
    te = pick(len(data.test_labels), n_test, "test", 2)
    if tr is None and te is None:
        return data
    changes: dict[str, Any] = {"fingerprint": f"{data.fingerprint}|subset:{n_train}:{n_test}:{seed}"}
    if tr is not None:
        changes.update(train_images=data.train_images[tr], train_labels=data.train_labels[tr])
    if te is not None:
        changes.update(test_images=data.test_images[te], test_labels=data.test_labels[te])
    return dataclasses.replace(data, **changes)


def study_config(depth: int, plain: bool, source: str, *, epochs: float, steps_per_epoch: int,
                 out: str | Path | None, seed: int = 0, batch_size: int = 128, device: str = "auto",
                 precision: str = "auto", zero_init_residual: bool = False) -> TrainConfig:
    """The training configuration of one network of the study (:data:`STUDY_RECIPE`).

    ``zero_init_residual`` starts every residual branch of the ResNets at zero (the scale of its
    last BatchNorm; Goyal et al. 2017), so that a ResNet of any depth starts as the same shallow
    function; plain nets keep the paper's initialisation (zeroed, they would pass no signal).
    """
    name, kwargs = model_spec(depth, plain)
    if zero_init_residual and not plain:
        kwargs = {**kwargs, "zero_init_residual": True}
    warmup = min(WARMUP_ITERS, steps_per_epoch)
    # the paper's lr 0.1 is for batch 128; other batches scale it linearly (Goyal et al. 2017)
    recipe = {**STUDY_RECIPE, "batch_size": batch_size, "lr": study_lr(batch_size)}
    return resolve_config("default", model=name, data=source, model_kwargs=kwargs, epochs=epochs,
                          warmup_epochs=warmup / steps_per_epoch, seed=seed, eval_every=1,
                          out=None if out is None else str(out), overwrite=True, device=device,
                          precision=precision, **recipe)


def study_lr(batch_size: int) -> float:
    """The paper's learning rate, 0.1 at batch 128, scaled linearly to ``batch_size``."""
    return STUDY_RECIPE["lr"] * batch_size / 128


def curves_from_history(history: list[dict], train_eval_error: list[float] | None = None) -> dict[str, list]:
    """``iteration`` (end of each epoch), ``train_error``, ``running_train_error`` and ``test_error``.

    ``train_error`` is ``train_eval_error`` (one value per epoch, measured on training images in
    eval mode) when given, else the running error; ``test_error`` items are ``None`` where not measured.
    """
    running = [1.0 - float(r["train_acc"]) for r in history]
    if train_eval_error is not None and len(train_eval_error) != len(history):
        raise ValueError(f"{len(train_eval_error)} training-set evaluations for {len(history)} epochs")
    return {
        "iteration": [int(r["step"]) for r in history],
        "train_error": list(train_eval_error) if train_eval_error is not None else running,
        "running_train_error": running,
        "test_error": [1.0 - float(r["test_acc"]) if r.get("test_acc") is not None else None for r in history],
    }


def error_on(checkpoint: str | Path, images: torch.Tensor, labels: torch.Tensor, *, device: str = "auto",
             precision: str = "auto", batch_size: int = 256) -> float:
    """Top-1 error of a run's checkpoint on ``images`` (uint8), without augmentation, in eval mode."""
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    model = load_model(checkpoint, device=dev)
    loader = eval_loader(images, labels, device=dev, precision=prec, mean=model.mean, std=model.std,
                         batch_size=batch_size)
    return 1.0 - float(evaluate(model, loader, len(model.classes), device=dev, precision=prec)["top1"])


def run_degradation(depths: Sequence[int], data: str = "synthetic", *, out: str | Path,
                    epochs: int | None = None, budget_minutes: float | None = None,
                    subset: int | None = None, test_subset: int | None = None, train_eval: int = 1000, seed: int = 0,
                    batch_size: int = 128, image_size: int | None = None, device: str = "auto",
                    precision: str = "auto", zero_init_residual: bool = False, overwrite: bool = False,
                    progress: bool = False, on_plan: Callable[[StudyPlan], None] | None = None) -> dict[str, Any]:
    """Train plain and residual nets at each depth; write ``degradation.json`` and ``degradation.png``.

    The networks train in rounds of one epoch each (a round continues every run by one epoch),
    so every network has the same number of iterations at every point. Without
    ``budget_minutes`` there are ``epochs`` rounds (default 10); with it, rounds continue until
    the next would overrun the budget (or ``epochs`` is reached); the whole study, data
    preparation included, counts. After each round every network's error on ``train_eval``
    fixed training images (0: none) is measured in eval mode.

    Once the number of epochs is fixed (before the first round, or after it under a budget) the
    plan is logged, and when it gives too few iterations for the paper's initialisation
    (:func:`.budget.plan_study`) a warning with the ways out is logged before training goes on;
    ``on_plan``, when given, receives the :class:`.budget.StudyPlan` and reports it instead.
    Returns the report that ``degradation.json`` holds.
    """
    t0 = time.perf_counter()
    depths = check_depths(depths)
    if budget_minutes is not None and budget_minutes <= 0:
        raise UserError(f"--budget-minutes must be positive, got {budget_minutes}")
    if epochs is not None and (epochs < 1 or epochs != int(epochs)):
        raise UserError(f"--epochs must be a whole number of at least 1, got {epochs}")
    out = Path(out)
    if (out / "degradation.json").exists() and not overwrite:
        raise UserError(f"{out} already holds a degradation study; pass --overwrite or choose another --out")
    ds = take_subset(prepare_data(data, image_size=image_size, progress=progress), subset, test_subset, seed)
    steps_per_epoch = len(ds.train_labels) // batch_size
    if steps_per_epoch < 1:
        raise UserError(f"batch size {batch_size} is larger than the {len(ds.train_labels)} training images")
    if train_eval < 0:
        raise UserError(f"--train-eval must be >= 0, got {train_eval}")
    n_eval = min(train_eval, len(ds.train_labels))
    gen = torch.Generator().manual_seed(seed * 1000 + 3)
    pick = torch.randperm(len(ds.train_labels), generator=gen)[:n_eval].sort().values
    eval_x, eval_y = ds.train_images[pick], ds.train_labels[pick]
    dev = resolve_device(device)
    # one precision for every network, so the comparison is fair: on a CPU, ``auto`` is the timing
    # probe's choice for the deepest ResNet at the study's batch and image size
    name, kwargs = model_spec(max(depths), False)
    precision, _ = resolve_precision_layout(precision, None, dev, model_name=name, model_kwargs=kwargs,
                                            batch_size=batch_size, image_size=ds.image_size,
                                            num_classes=ds.num_classes, in_channels=int(ds.train_images.shape[1]))
    runs = [(d, plain) for d in depths for plain in (True, False)]
    run_dir = {r: out / "runs" / network_label(*r).lower() for r in runs}
    results: dict[tuple[int, bool], Any] = {}
    seconds = {r: 0.0 for r in runs}
    fitted: dict[tuple[int, bool], list[float]] = {r: [] for r in runs}

    def train_to(n_epochs: int, planned: int) -> None:
        """Continue every run to ``n_epochs`` of a ``planned``-epoch schedule."""
        stop = n_epochs * steps_per_epoch if n_epochs < planned else None
        for r in runs:
            log.info("training %s to epoch %d of %d", network_label(*r), n_epochs, planned)
            if n_epochs == 1:
                cfg = study_config(*r, data, epochs=planned, steps_per_epoch=steps_per_epoch, out=run_dir[r],
                                   seed=seed, batch_size=batch_size, device=device, precision=precision,
                                   zero_init_residual=zero_init_residual)
                cfg.stop_after_steps = stop
                results[r] = fit(cfg, data=ds)
            else:
                results[r] = fit(resume=run_dir[r], resume_overrides={"epochs": planned, "stop_after_steps": stop},
                                 data=ds)
            seconds[r] += results[r].wall_seconds
            if n_eval:
                t = time.perf_counter()
                fitted[r].append(error_on(run_dir[r] / "last.pt", eval_x, eval_y, device=device, precision=precision))
                seconds[r] += time.perf_counter() - t

    def announce(plan: StudyPlan) -> StudyPlan:
        log.info("planned %d epochs (%d iterations) per network%s", plan.epochs, plan.iterations,
                 "" if plan.first_round is None else f" from the first round's {plan.first_round:.0f} s")
        if on_plan is not None:
            on_plan(plan)
        elif plan.warned:
            log.warning("%s %s", plan.warning, plan.advice)
        return plan

    budget_s = None if budget_minutes is None else budget_minutes * 60
    cap = int(epochs) if epochs is not None else (10 if budget_s is None else None)
    plan_args = dict(cap=cap, zero_init_residual=zero_init_residual, n_depths=len(depths))
    plan = announce(plan_study(steps_per_epoch, **plan_args)) if budget_s is None else None
    planned = plan.epochs if plan is not None else UNPLANNED_EPOCHS
    n_epochs, last_round = 0, 0.0
    while n_epochs < planned:
        if budget_s is not None and n_epochs and not next_round_fits(time.perf_counter() - t0, last_round, budget_s):
            log.warning("stopping after %d of %d planned epochs: the next round would overrun the budget",
                        n_epochs, planned)
            break
        start = time.perf_counter()
        n_epochs += 1
        train_to(n_epochs, planned)
        last_round = time.perf_counter() - start
        if plan is None:
            plan = announce(plan_study(steps_per_epoch, budget_s=budget_s, elapsed=time.perf_counter() - t0,
                                       first_round=last_round, **plan_args))
            planned = plan.epochs
        log.info("round %d of %d took %.0f s (%.0f s used%s)", n_epochs, planned, last_round,
                 time.perf_counter() - t0, "" if budget_s is None else f" of {budget_s:.0f} s")

    networks: list[dict[str, Any]] = []
    for r in runs:
        res, (depth, plain) = results[r], r
        cfg = TrainConfig.from_dict(res.config)
        params = sum(p.numel() for p in create_model(cfg.model, num_classes=ds.num_classes,
                                                     **cfg.model_kwargs).parameters())
        networks.append({
            "name": network_label(*r), "model": cfg.model, "model_kwargs": cfg.model_kwargs, "depth": depth,
            "plain": plain, "params": params,
            "curves": curves_from_history(res.history, fitted[r] if n_eval else None),
            "final_train_error": fitted[r][-1] if n_eval else 1.0 - float(res.history[-1]["train_acc"]),
            "final_running_train_error": 1.0 - float(res.history[-1]["train_acc"]),
            "final_test_error": 1.0 - res.test_top1, "seconds": round(seconds[r], 2), "run_dir": str(run_dir[r]),
        })
    elapsed = round(time.perf_counter() - t0, 1)
    if budget_s is not None and elapsed > budget_s:
        log.warning("the study took %.0f s, over its budget of %.0f s", elapsed, budget_s)
    report: dict[str, Any] = {
        "study": "degradation", "data": str(data), "data_name": ds.name,
        "train_images": len(ds.train_labels), "test_images": len(ds.test_labels),
        "subset": subset, "test_subset": test_subset, "seed": seed,
        "device": str(dev), "precision": precision, "cpu": cpu_description(),
        "image_size": ds.image_size,
        "recipe": {**STUDY_RECIPE, "batch_size": batch_size, "lr": study_lr(batch_size),
                   "zero_init_residual": bool(zero_init_residual), "epochs": n_epochs,
                   "planned_epochs": planned, "schedule_completed": n_epochs == planned,
                   "iterations": n_epochs * steps_per_epoch, "iterations_per_epoch": steps_per_epoch,
                   "warmup_iterations": min(WARMUP_ITERS, steps_per_epoch)},
        "budget": {"minutes": budget_minutes, "seconds": elapsed},
        "plan": {"planned_iterations": plan.iterations, "completed_iterations": n_epochs * steps_per_epoch,
                 "min_iterations": plan.min_iterations, "warning_fired": plan.warned,
                 "warning": None if not plan.warned else f"{plan.warning} {plan.advice}",
                 "budget_minutes_needed": (None if plan.budget_minutes_needed is None
                                           else round(plan.budget_minutes_needed, 1))},
        "train_eval_images": n_eval,
        "train_error_definition": (f"top-1 error on {n_eval} fixed training images (no augmentation, eval mode) "
                                   "after each epoch" if n_eval else
                                   "1 - accuracy on the augmented training batches of each epoch (train mode)"),
        "running_train_error_definition": "1 - accuracy on the augmented training batches of each epoch (train "
                                          "mode), plotted at the epoch's last iteration",
        "networks": networks,
        "verdict": degradation_verdict(networks),
        "verdict_running": degradation_verdict(
            [{**n, "final_train_error": n["final_running_train_error"]} for n in networks]),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "degradation.json", report)
    plot_degradation(report, out / "degradation.png")
    return report
