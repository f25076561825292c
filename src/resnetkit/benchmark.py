"""Benchmarks: training throughput against the tutorial's pipeline and a ceiling, and
time-to-accuracy over seeds.

Throughput compares, in one process and one run:
  (a) resnetkit's pipeline: the device-resident loader with batched augmentation, at the
      resolved precision and memory layout;
  (b) the tutorial's pipeline, reproduced faithfully: a torchvision DataLoader over the same
      images with per-image PIL ``RandomCrop(32, 4)`` + ``RandomHorizontalFlip`` + ``ToTensor`` +
      ``Normalize``, batch 128, ``num_workers=0``, fp32;
  (c) a ceiling: the same model, batch and precision as (a) on one batch already on the device.
Each figure is the median of per-step times (device-synchronised) after warm-up steps.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .data.dataset import ImageData
from .data.loader import DeviceLoader
from .data.prepare import prepare_data
from .errors import UserError
from .models import create_model
from .runtime.device import autocast, keep_freed_memory, resolve_device, synchronize
from .runtime.loaders import batch_dtype
from .runtime.probe import cpu_isa, cpu_label, cpu_model_and_flags, resolve_precision_layout
from .training.config import resolve_config
from .training.optim import build_sgd
from .training.trainer import fit

log = logging.getLogger(__name__)


@dataclass
class Throughput:
    name: str
    batch_size: int
    precision: str
    channels_last: bool
    images_per_s: float  # from the median step
    step_ms: float
    mean_images_per_s: float = 0.0  # images over the total time of the timed steps, stalls included


def _time_steps(model: nn.Module, opt: torch.optim.Optimizer, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
                device: torch.device, precision: str, warmup: int, steps: int,
                prepare: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
                ) -> list[float]:
    """Per-step wall times (data fetch included) for ``steps`` steps after ``warmup``."""
    times: list[float] = []
    model.train()
    for i in range(warmup + steps):
        synchronize(device)
        t0 = time.perf_counter()
        x, y = next(batches)
        if prepare is not None:
            x, y = prepare(x, y)
        with autocast(device, precision):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def _cycle(make: Callable[[], Iterable]) -> Iterator:
    epoch = 0
    while True:
        it = make(epoch)
        yield from it
        epoch += 1


def _fresh(model_name: str, num_classes: int, device: torch.device, channels_last: bool,
           model_kwargs: dict | None = None):
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=num_classes, **(model_kwargs or {}))
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return model, build_sgd(model, 0.01, 0.9, 5e-4, nesterov=True)


def tutorial_loader(data: ImageData, batch_size: int = 128):
    """The tutorial's input pipeline over ``data``'s training images (PIL per image, 0 workers)."""
    import torchvision.transforms as T  # deferred: importing torchvision costs seconds

    tf = T.Compose([T.RandomCrop(data.image_size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(data.mean, data.std)])
    images = data.train_images.permute(0, 2, 3, 1).contiguous().numpy()
    labels = data.train_labels.tolist()

    class _Set(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, i: int):
            return tf(Image.fromarray(images[i])), labels[i]

    return torch.utils.data.DataLoader(_Set(), batch_size=batch_size, shuffle=True, num_workers=0, drop_last=True)


def throughput(model_name: str, data: ImageData, *, device: str = "auto", precision: str = "auto",
               channels_last: bool | None = None, batch_size: int = 256, steps: int = 20, warmup: int = 3,
               tutorial_batch_size: int = 128, include_tutorial: bool = True, include_ceiling: bool = True,
               model_kwargs: dict | None = None) -> list[Throughput]:
    """Measure (a) resnetkit, (b) the tutorial pipeline, (c) the ceiling, in this order."""
    dev = resolve_device(device)
    keep_freed_memory(dev)  # as training runs
    prec, cl = resolve_precision_layout(precision, channels_last, dev, model_name=model_name, model_kwargs=model_kwargs or {},
                                        batch_size=batch_size, image_size=data.image_size,
                                        num_classes=data.num_classes, in_channels=int(data.train_images.shape[1]))
    dtype = batch_dtype(prec)
    results = []

    def record(name: str, bs: int, p: str, c: bool, times: list[float]) -> None:
        med = statistics.median(times)
        results.append(Throughput(name, bs, p, c, bs / med, med * 1e3, bs * len(times) / sum(times)))
        log.info("%s: %.0f img/s (median step %.1f ms; %.0f img/s over %d steps, %.1f s)", name, bs / med,
                 med * 1e3, bs * len(times) / sum(times), len(times), sum(times))

    model, opt = _fresh(model_name, data.num_classes, dev, cl, model_kwargs)
    loader = DeviceLoader(data.train_images, data.train_labels, batch_size=batch_size, device=dev, train=True,
                          mean=data.mean, std=data.std, dtype=dtype, channels_last=cl)

    def epoch_iter(e: int):
        loader.set_epoch(e)
        return iter(loader)

    record("resnetkit", batch_size, prec, cl,
           _time_steps(model, opt, _cycle(epoch_iter), dev, prec, warmup, steps))

    if include_tutorial:
        model, opt = _fresh(model_name, data.num_classes, dev, False)
        tut = tutorial_loader(data, tutorial_batch_size)
        record("tutorial", tutorial_batch_size, "fp32", False,
               _time_steps(model, opt, _cycle(lambda e: iter(tut)), dev, "fp32", warmup, steps,
                           prepare=lambda x, y: (x.to(dev), y.to(dev))))

    if not include_ceiling:
        return results
    model, opt = _fresh(model_name, data.num_classes, dev, cl, model_kwargs)
    loader.set_epoch(0)
    x, y = next(iter(loader))

    def fixed():
        while True:
            yield x, y

    record("ceiling", batch_size, prec, cl, _time_steps(model, opt, fixed(), dev, prec, warmup, steps))
    return results


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


@dataclass
class SeedRun:
    seed: int
    top1: float
    train_seconds: float
    compile_seconds: float
    prep_seconds: float
    eval_seconds: float
    wall_seconds: float
    epochs: float
    model: str = ""  # the network the run trained (a recipe's time budget can choose it)
    batch_size: int = 0
    target_seconds: float | None = None  # training seconds until the check first reached the target
    target_epoch: int | None = None
    check_curve: list[float] | None = None  # the held-out check's top-1 after each epoch


def _target_time(history: list[dict], target: float) -> tuple[float | None, int | None]:
    """Cumulative training seconds (and epoch) at the first epoch whose check reached ``target``."""
    spent = 0.0
    for row in history:
        spent += row["seconds"]
        if row.get("val_acc") is not None and row["val_acc"] >= target:
            return spent, int(row["epoch"])
    return None, None


def time_to_accuracy(recipe: str, data_source: str, seeds: list[int], out_root: str, *,
                     epochs: float | None = None, budget_seconds: float | None = None,
                     target: float | None = None, check_images: int = 2500,
                     progress: bool = False, **overrides) -> dict:
    """Run ``recipe`` once per seed with a fixed budget; mean +- std of accuracy and of the times.

    The speedrun convention: the budget is fixed in advance, no early stopping and no epoch
    picking on the test set; the reported accuracy is each run's final test top-1. A budget in
    epochs is a count of passes; ``budget_seconds`` runs each seed with that ``time_budget`` (the
    lr schedule on the clock, training stopped when the seconds are spent: see
    :mod:`resnetkit.training.trainer`), so a machine whose speed drifts still trains for the
    budget. Wall time is split into data preparation, training and the final test evaluation;
    compile time is apart.

    With ``target``, ``check_images`` training images are held out (a fixed, seeded subset, the
    same for every seed) and evaluated after each epoch only to report when the run first
    reached the target; nothing stops or is chosen on it. Those runs train on the rest.
    """
    base = dict(overrides)
    if target is not None:
        if not 0 < target <= 1:
            raise UserError(f"--target is a top-1 accuracy in (0, 1], got {target}")
        if check_images < 1:
            raise UserError(f"--check-images must be positive, got {check_images}")
        base["val_split"] = check_images
    if budget_seconds is not None:
        if not 0 < budget_seconds < float("inf"):
            raise UserError(f"--budget-seconds takes a positive number of seconds, got {budget_seconds}")
        base["time_budget"] = budget_seconds
    elif epochs is not None:
        base["epochs"] = epochs
    cfg = resolve_config(recipe, data=data_source, **base)
    t0 = time.perf_counter()
    prepare_data(data_source, dataset=cfg.dataset, image_size=cfg.image_size, progress=progress)  # fills the cache
    first_prep = time.perf_counter() - t0
    runs, last = [], None
    for seed in seeds:
        run_cfg = resolve_config(recipe, data=data_source, seed=seed, eval_every=0,
                                 out=f"{out_root}/seed{seed}", overwrite=True, **base)
        last = fit(run_cfg, progress=progress)
        hit_s, hit_e = _target_time(last.history, target) if target is not None else (None, None)
        curve = [row["val_acc"] for row in last.history if "val_acc" in row] if target is not None else None
        runs.append(SeedRun(seed, last.test_top1, last.train_seconds, last.compile_seconds, last.prep_seconds,
                            last.eval_seconds, last.wall_seconds, last.epochs_trained, last.config["model"],
                            int(last.config["batch_size"]), hit_s, hit_e, curve))
    models = sorted({r.model for r in runs})
    out: dict = {"recipe": recipe, "model": ", ".join(models) if runs else cfg.model,
                 "batch_size": ", ".join(sorted({str(r.batch_size) for r in runs})) if runs else str(cfg.batch_size),
                 "optimizer": cfg.optimizer, "data": data_source,
                 "epochs": mean_std([r.epochs for r in runs])[0] if runs else cfg.epochs, "budget_seconds": budget_seconds, "seeds": seeds,
                 "precision": last.precision if last else None,
                 "channels_last": last.channels_last if last else None,
                 "cpu": cpu_label(), "cpu_flags": cpu_isa(cpu_model_and_flags()[1]),
                 "threads": torch.get_num_threads(),
                 "first_prep_seconds": first_prep, "runs": [r.__dict__ for r in runs]}
    for name, attr in (("top1", "top1"), ("epochs", "epochs"), ("train_seconds", "train_seconds"), ("prep_seconds", "prep_seconds"),
                       ("eval_seconds", "eval_seconds"), ("compile_seconds", "compile_seconds"),
                       ("wall_seconds", "wall_seconds")):
        out[f"{name}_mean"], out[f"{name}_std"] = mean_std([getattr(r, attr) for r in runs])
    if target is not None:
        hits = [r.target_seconds for r in runs if r.target_seconds is not None]
        out.update(target=target, check_images=check_images, target_reached=len(hits))
        out["target_seconds_mean"], out["target_seconds_std"] = mean_std(hits)
    return out
