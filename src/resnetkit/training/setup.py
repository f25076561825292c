"""Everything a run needs before its first step: device, data, model, optimizer and loaders.

Built the same way for a new run and a resumed one; a resumed run then overwrites the model,
optimizer and RNG states from the checkpoint, so the two continue identically.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..checkpoint import CheckpointError, build_payload, load_model_weights, unwrap
from ..data.augment import AugmentConfig, normalize
from ..data.dataset import ImageData
from ..data.loader import DeviceLoader
from ..data.mix import MixConfig, Mixer
from ..data.prepare import prepare_data
from ..errors import UserError
from ..models import create_model
from ..runtime.device import (
    keep_freed_memory,
    resolve_device,
    rng_state,
    seed_everything,
    set_deterministic,
    set_rng_state,
    synchronize,
)
from ..runtime.inference import predict_logits
from ..runtime.loaders import batch_dtype, eval_loader
from ..runtime.probe import decide, measured_rate, probe_applies, resolve_precision_layout
from .config import TrainConfig, adapted_batch
from .distributed import DistContext
from .ema import ModelEma
from .loop import StepState, train_epoch
from .optim import build_optimizer
from .pretrained import apply_pretrained, freeze_backbone

log = logging.getLogger(__name__)


@dataclass
class Setup:
    cfg: TrainConfig
    dist: DistContext
    device: torch.device
    precision: str
    channels_last: bool
    data: ImageData
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: DeviceLoader
    val_loader: DeviceLoader | None
    test_loader: DeviceLoader
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    prep_seconds: float
    warmup_seconds: float = 0.0
    ema: ModelEma | None = None
    mixer: Mixer | None = None
    recalibration_loader: DeviceLoader | None = None  # cfg.bn_recalibration training images, every rank all of them

    def payload(self, state: StepState, history: list[dict], best: dict, epoch_done: bool) -> dict:
        """The checkpoint dict (:func:`resnetkit.checkpoint.build_payload`) of this run at ``state``."""
        progress = {"epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "global_step": state.global_step,
                    "epoch_done": epoch_done, "best": best, "history": history}
        payload = build_payload(self.model, self.optimizer, model_name=self.cfg.model, config=self.cfg.to_dict(),
                             progress=progress, rng=rng_state(), classes=self.data.classes, mean=self.mean,
                             std=self.std, image_size=self.data.image_size,
                             in_channels=int(self.data.train_images.shape[1]),
                             data_fingerprint=self.data.fingerprint, world_size=self.dist.world_size,
                             ema=self.ema.state_dict() if self.ema is not None else None)
        # what "auto" resolved to, so a resume runs the same kernels even if the probe would now choose otherwise
        payload["resolved_precision"] = {"precision": self.precision, "channels_last": self.channels_last,
                                         "device_type": self.device.type}
        return payload


def _load_data(cfg: TrainConfig, dist: DistContext, progress: bool) -> tuple[ImageData, float]:
    t0 = time.perf_counter()
    # rank 0 decodes and caches first; then the first process of each other machine (which reads
    # that cache on a shared file system, or builds its machine's own); then all the others
    mine = 0 if dist.rank == 0 else 1 if dist.local_rank == 0 else 2
    for turn in range(3):
        if turn == mine:
            data = prepare_data(cfg.data, dataset=cfg.dataset, image_size=cfg.image_size,
                                skip_bad_images=cfg.skip_bad_images, download=cfg.download,
                                progress=progress and dist.is_main, test_split=cfg.test_split,
                                test_split_seed=cfg.test_split_seed)
        dist.barrier()
    return data, time.perf_counter() - t0


def _split(data: ImageData, n_val: int, seed: int):
    x, y = data.train_images, data.train_labels
    if n_val == 0:
        return x, y, None, None
    if n_val >= len(x):
        raise UserError(f"--val-split {n_val} must be smaller than the {len(x)} training images")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 7919))
    tr, va = perm[:-n_val].sort().values, perm[-n_val:].sort().values
    return x[tr], y[tr], x[va], y[va]


def recalibration_pick(n_train: int, images: int, seed: int) -> torch.Tensor:
    """Indices into the training split of the ``images`` (at most all) that ``bn_recalibration`` runs on:
    a fixed draw per seed, the same on every rank."""
    return torch.randperm(n_train, generator=torch.Generator().manual_seed(seed + 104729))[:images]


def build(cfg: TrainConfig, ckpt: dict | None, dist: DistContext, data: ImageData | None,
          progress: bool = False) -> Setup:
    device = resolve_device(cfg.device)
    keep_freed_memory(device)
    seed_everything(cfg.seed)
    set_deterministic(cfg.deterministic, device)
    if device.type == "cuda" and not cfg.deterministic:
        torch.backends.cudnn.benchmark = True
    if cfg.batch_size % dist.world_size:  # before any collective or data loading
        raise UserError(f"the global batch of {cfg.batch_size} images cannot be split evenly over "
                        f"{dist.world_size} processes; use a number of processes that divides it")
    if cfg.sync_bn and dist.enabled and device.type != "cuda":
        raise UserError("--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm does not run on CPU); "
                        "drop --sync-bn or train on GPUs")
    if data is None:
        data, prep_seconds = _load_data(cfg, dist, progress)
    else:
        prep_seconds = 0.0
    if cfg.val_split >= len(data.train_labels):  # before the batch is scaled to what would be left
        raise UserError(f"--val-split {cfg.val_split} must be smaller than the {len(data.train_labels)} training images")
    _check_image_size(cfg, data)
    if data.num_classes == 1:
        log.warning("the data has one class (%s): every prediction will be that class and every accuracy 100%%; "
                    "add a folder per class to learn to tell them apart", data.classes[0])
    if cfg.budget_model and cfg.time_budget is not None and ckpt is None:
        _network_for_budget(cfg, device, dist, data)
    cfg.budget_model = None  # decided once; the saved config holds the network the run trains
    if cfg.adapt_batch and ckpt is None:
        n_train = len(data.train_labels) - cfg.val_split
        batch, lr = adapted_batch(cfg.batch_size, cfg.lr, n_train, dist.world_size)
        if batch != cfg.batch_size:
            muon = ""
            if cfg.optimizer == "muon":  # measured: Muon's best lr doubled with the batch
                muon_lr = cfg.muon_lr * batch / cfg.batch_size
                muon = f", Muon lr {muon_lr:.4g} from {cfg.muon_lr:.4g}"
                cfg.muon_lr = muon_lr
            log.info("batch %d and lr %.4g (the %s recipe's %d and %.4g scaled to %d training images%s; "
                     "a batch size given explicitly is kept)", batch, lr, cfg.recipe, cfg.batch_size, cfg.lr, n_train,
                     muon)
        cfg.batch_size, cfg.lr = batch, lr
    cfg.adapt_batch = False  # applied once; the saved config holds the values used
    if cfg.batch_size % dist.world_size:  # an adapted batch is a power of two of at least 8, but say so
        raise UserError(f"the global batch of {cfg.batch_size} images cannot be split evenly over "
                        f"{dist.world_size} processes; use a number of processes that divides it")
    per_rank = cfg.batch_size // dist.world_size
    tx, ty, vx, vy = _split(data, cfg.val_split, cfg.seed)
    if cfg.batch_size > len(tx):  # before the precision probe, which can take a minute
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the {len(tx)} training images")
    precision, channels_last = _pinned_precision(cfg, ckpt, device) or _precision_layout(cfg, device, dist, data,
                                                                                         per_rank)

    model = create_model(cfg.model, num_classes=data.num_classes, in_channels=int(data.train_images.shape[1]),
                         **cfg.model_kwargs)
    mean, std = data.mean, data.std
    if cfg.pretrained and ckpt is None:
        mean, std = apply_pretrained(model, cfg.pretrained, cfg.model, data, cfg.freeze_backbone)
    elif cfg.pretrained and ckpt is not None:
        mean, std = tuple(ckpt["mean"]), tuple(ckpt["std"])
        if cfg.freeze_backbone:  # the optimizer must see the parameters the run trained
            freeze_backbone(model)
    if ckpt is None and not cfg.pretrained and hasattr(model, "init_from_data"):
        # e.g. resnet_cpu's patch-whitening stem, from the first 5,000 training images as the loader
        # normalises them (fixed images, no RNG drawn: runs stay reproducible)
        model.init_from_data(normalize(tx[:5000], mean, std))
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = build_optimizer(model, cfg, precision)
    if ckpt is not None:
        load_model_weights(model, ckpt["model"], "the checkpoint")
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"the checkpoint's optimizer state does not fit this run ({e})") from None
        set_rng_state(ckpt["rng"])
    ema = ModelEma(model, cfg.ema, cfg.ema_every) if cfg.ema else None
    if ema is not None and ckpt is not None:
        if "ema" not in ckpt:
            raise CheckpointError("this run asks for --ema but its checkpoint holds no EMA weights")
        ema.load_state_dict(ckpt["ema"])
    mix = MixConfig(cfg.mixup, cfg.cutmix, cfg.mix_prob, cfg.mix_switch_prob)
    mixer = Mixer(mix, cfg.seed) if mix.enabled else None
    if cfg.sync_bn and dist.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net: nn.Module = model
    if dist.enabled:
        # a stem frozen mid-run stops getting gradients, which DDP must be told to expect
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                  find_unused_parameters=cfg.stem_epochs is not None)
    if cfg.compile:
        net = torch.compile(net)

    aug = AugmentConfig(crop_pad=cfg.crop_pad, crop_fill=cfg.crop_fill, flip=cfg.flip, cutout=cfg.cutout,
                        brightness=cfg.brightness, contrast=cfg.contrast)
    common: dict[str, Any] = dict(device=device, mean=mean, std=std, seed=cfg.seed,
                                  channels_last=channels_last, rank=dist.rank, world_size=dist.world_size)
    train_loader = DeviceLoader(tx, ty, batch_size=per_rank, train=True, augment=aug, dtype=batch_dtype(precision),
                                **common)
    eval_bs = max(per_rank, 256)
    val_loader = eval_loader(vx, vy, batch_size=eval_bs, precision=precision, **common) if vx is not None else None
    test_loader = eval_loader(data.test_images, data.test_labels, batch_size=eval_bs, precision=precision, **common)
    recalibration = None
    if cfg.bn_recalibration:
        pick = recalibration_pick(len(tx), cfg.bn_recalibration, cfg.seed)
        recalibration = eval_loader(tx[pick], ty[pick], batch_size=per_rank, precision=precision,
                                    **{**common, "rank": 0, "world_size": 1})
    s = Setup(cfg, dist, device, precision, channels_last, data, net, optimizer, train_loader, val_loader,
              test_loader, mean, std, prep_seconds, ema=ema, mixer=mixer, recalibration_loader=recalibration)
    if cfg.compile:
        s.warmup_seconds = _warm_up_compiled(s)
    log.info("device %s, precision %s, channels_last %s, %d train / %d test images, %d classes",
             device, precision, channels_last, len(tx), len(data.test_labels), data.num_classes)
    return s


def _probe_size(cfg: TrainConfig, data: ImageData) -> int:
    """The image size the probe times: the largest the run trains at."""
    return max(cfg.progressive_sizes or [data.image_size])


def _network_for_budget(cfg: TrainConfig, device: torch.device, dist: DistContext, data: ImageData) -> None:
    """The first of the recipe's ``budget_model`` networks the time budget buys ``min_epochs`` of, instead of its model.

    The candidates come largest first; the epochs are the budget times the training rate the precision
    probe measures for that network and batch on this CPU (cached per machine, as the precision
    decision), over the training images. Where nothing is timed (a GPU, several processes, a fixed
    precision, the probe switched off) or the budget buys too few epochs of every one, the recipe's
    model stays.
    """
    candidates = list(cfg.budget_model or [])
    if dist.enabled or not probe_applies(cfg.precision, device):
        log.info("training %s: with a time budget the %s recipe trains %s instead when the budget buys enough epochs "
                 "of it, as measured by the precision probe on a CPU, which this run does not run", cfg.model,
                 cfg.recipe, " or ".join(bm["model"] for bm in candidates))
        return
    n_train = len(data.train_labels) - cfg.val_split
    own = cfg.model
    for bm in candidates:
        other, min_epochs = bm["model"], float(bm["min_epochs"])
        batch = int(bm.get("batch_size", cfg.batch_size))
        d = decide(other, cfg.model_kwargs, adapted_batch(batch, cfg.lr, n_train)[0] if cfg.adapt_batch else batch,
                   _probe_size(cfg, data),
                   num_classes=data.num_classes, in_channels=int(data.train_images.shape[1]), device=device)
        rate = measured_rate(d)
        epochs = cfg.time_budget * rate / max(1, n_train)
        if epochs < min_epochs:
            log.info("not training %s: %.0f s buy about %.1f epochs of it here (%.0f img/s measured), fewer than the "
                     "%.3g at which it is the better choice", other, cfg.time_budget, epochs, rate, min_epochs)
            continue
        changes = [f"batch {batch}"] + ([f"Muon lr {bm['muon_lr']:.4g}"] if "muon_lr" in bm else [])
        log.info("training %s (%s) instead of %s: %.0f s buy about %.1f epochs of it here (%.0f img/s measured), at "
                 "least the %.3g at which it is the better choice (--model %s keeps the recipe's own network)", other,
                 ", ".join(changes), own, cfg.time_budget, epochs, rate, min_epochs, own)
        cfg.model, cfg.batch_size = other, batch
        cfg.muon_lr = float(bm.get("muon_lr", cfg.muon_lr))
        return
    log.info("training %s: the time budget buys too few epochs of the larger networks", cfg.model)


def _check_image_size(cfg: TrainConfig, data: ImageData) -> None:
    """Refuse images smaller than the network takes (its pooling layers), in one sentence, before any work.

    Progressive sizes above the images' own are allowed (the batches are upsampled) but said.
    """
    larger = sorted({s for s in cfg.progressive_sizes or [] if s > data.image_size})
    if larger:
        log.warning("progressive sizes %s exceed the images' %d px: those parts of the run train on upsampled "
                    "images, which costs time and teaches nothing finer (evaluation stays at %d px)",
                    " ".join(map(str, larger)), data.image_size, data.image_size)
    smallest = min([data.image_size, *(cfg.progressive_sizes or [])])
    if smallest >= 32:  # every registered network takes 32x32; only small images need the check's model build
        return
    with torch.random.fork_rng(devices=[]):  # building the model draws weights: leave the run's RNG as it was
        need = getattr(create_model(cfg.model, num_classes=data.num_classes,
                                    in_channels=int(data.train_images.shape[1]), **cfg.model_kwargs),
                       "min_input_size", 1)
    if smallest < need:
        raise UserError(f"{cfg.model} takes images of at least {need}x{need} pixels, but this run would train at "
                        f"{smallest}x{smallest}; use <<image_size={need}>> or more (and no smaller "
                        f"<<progressive_sizes>>)")


def _pinned_precision(cfg: TrainConfig, ckpt: dict | None, device: torch.device) -> tuple[str, bool] | None:
    """A resumed run's precision and layout as the run resolved them, where its settings said ``auto``.

    The probe's choice is cached per machine, but a cleared cache or a near tie could choose
    another layout on resume, and the continuation would no longer be bit-exact. Every rank reads
    the same checkpoint, so all of them take this path or none does.
    """
    pinned = (ckpt or {}).get("resolved_precision")
    if not pinned or pinned.get("device_type") != device.type or cfg.precision not in (None, "", "auto"):
        return None
    channels_last = pinned["channels_last"] if cfg.channels_last is None else bool(cfg.channels_last)
    log.info("precision %s, channels_last %s: as the run resolved them when it started", pinned["precision"],
             channels_last)
    return str(pinned["precision"]), bool(channels_last)


def _precision_layout(cfg: TrainConfig, device: torch.device, dist: DistContext, data: ImageData,
                      per_rank: int) -> tuple[str, bool]:
    """Resolved on rank 0 (``auto`` on a CPU runs the timing probe) and shared with every rank."""
    choice = None
    if dist.is_main:
        choice = resolve_precision_layout(
            cfg.precision, cfg.channels_last, device, model_name=cfg.model, model_kwargs=cfg.model_kwargs,
            batch_size=per_rank, image_size=_probe_size(cfg, data),
            num_classes=data.num_classes, in_channels=int(data.train_images.shape[1]))
    return tuple(dist.broadcast_object(choice))  # type: ignore[return-value]


def _warm_up_compiled(s: Setup) -> float:
    """Compile before the clock starts: one train step and one eval pass, then restore all state."""
    t0 = time.perf_counter()
    saved = (copy.deepcopy(unwrap(s.model).state_dict()), copy.deepcopy(s.optimizer.state_dict()), rng_state())
    s.train_loader.set_epoch(0)
    train_epoch(s.model, s.train_loader, s.optimizer, StepState(), device=s.device, precision=s.precision,
                label_smoothing=0.0, set_lr=lambda _step: 0.0, max_steps=1)
    x, _ = next(iter(s.test_loader))
    predict_logits(s.model, x, s.device, s.precision)
    unwrap(s.model).load_state_dict(saved[0])
    s.optimizer.load_state_dict(saved[1])
    set_rng_state(saved[2])
    synchronize(s.device)
    return time.perf_counter() - t0

