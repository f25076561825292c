"""Training configuration: one dataclass, and named recipes that fill it.

A recipe is a documented preset with its source. Values given explicitly (CLI flags or keyword
arguments) override the recipe; ``None`` means "not given", so defaults never override recipes.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from ..data.synthetic import parse_synthetic
from ..errors import UserError
from ..models.registry import UnknownModelError, check_model_options, model_info
from ..runtime.inference import tta_mode
from .loggers import check_installed


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved as ``config.json`` and in checkpoints)."""

    model: str = "resnet20"
    data: str = "synthetic"
    dataset: str | None = None
    recipe: str = "default"
    epochs: float = 30
    # seconds of training: the lr schedule runs on the clock and training stops when they are spent;
    # ``epochs`` is then not used (see training/trainer.py)
    time_budget: float | None = None
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    # "sgd", or "muon": Muon on the convolution filters (lr muon_lr, momentum muon_momentum), SGD with
    # lr/momentum/weight_decay on the rest (training/muon.py)
    optimizer: str = "sgd"
    muon_lr: float = 0.1
    muon_momentum: float = 0.6
    muon_ns_steps: int = 5  # Newton-Schulz iterations per Muon update
    weight_decay: float = 5e-4
    no_decay_1d: bool = True
    label_smoothing: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    crop_pad: int = 4
    crop_fill: str = "zero"
    flip: str = "random"
    cutout: int = 0
    brightness: float = 0.0  # per-image shift of the normalised image, uniform in +-brightness
    contrast: float = 0.0  # per-image scale of the normalised image, uniform in 1 +- contrast
    val_split: int = 0
    test_split: float | None = None  # image folders with only train/: hold out this fraction as the test split
    test_split_seed: int = 0  # its own seed, so runs with different --seed share one test split
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    deterministic: bool = False
    image_size: int | None = None
    progressive_sizes: list[int] | None = None  # train at these sizes in equal consecutive parts
    skip_bad_images: bool = False
    download: bool = False
    out: str | None = None
    overwrite: bool = False
    checkpoint_every: int = 0
    eval_every: int = 1
    tta: bool | str = False  # False, True (= "flip") or "flip-shift"
    max_steps: int | None = None
    stop_after_steps: int | None = None  # save last.pt and stop; unlike max_steps the schedule is unchanged
    log_steps: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    freeze_backbone: bool = False
    backbone_lr_mult: float = 1.0
    sync_bn: bool = False
    tensorboard: bool = False  # the same as "tensorboard" in ``log``
    adapt_batch: bool = True  # cap the recipe's batch to small training sets (off once applied, or when given)
    log: list[str] = field(default_factory=list)  # any of LOGGERS; metrics.jsonl is always written
    mlflow_uri: str | None = None  # default: an SQLite store beside the run directory (see training/loggers.py)
    ema: float = 0.0  # decay of the weight EMA per update (0: off), e.g. 0.999
    ema_every: int = 1
    mixup: float = 0.0  # Beta alpha (0: off), Zhang et al. 2018
    cutmix: float = 0.0  # Beta alpha (0: off), Yun et al. 2019
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5
    # with a time budget on a CPU: the recipe's choice of network. A list of {"model", "min_epochs", and optionally
    # "batch_size" and "muon_lr"}, largest network first: the run trains the first one the budget buys at least
    # min_epochs of at the rate the precision probe measures (at its batch_size and muon_lr), else the recipe's
    # model (one such dict alone is a list of one; decided once, and off when model, batch_size or muon_lr are given)
    budget_model: list[dict[str, Any]] | dict[str, Any] | None = None
    # train the network's stem for this many epochs, then freeze it (networks with freeze_stem(): resnet_cpu)
    stem_epochs: int | None = None
    # after the last step, set the BatchNorm running statistics from this many training images, un-augmented, in
    # train-mode batches averaged equally (precise BatchNorm; 0: off); inside the time budget
    bn_recalibration: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


LOGGERS = ("tensorboard", "csv", "mlflow")
OPTIMIZERS = ("sgd", "muon")


@dataclass(frozen=True)
class Recipe:
    name: str
    doc: str
    values: dict[str, Any]


RECIPES: dict[str, Recipe] = {}


def _recipe(name: str, doc: str, **values: Any) -> None:
    RECIPES[name] = Recipe(name, doc, values)


_recipe(
    "tutorial",
    "The tutorial exactly: ResNet-18 (CIFAR form), SGD lr 0.1, momentum 0.9, weight decay 5e-4 on "
    "every parameter, constant lr, batch 128, random crop (4-pixel zero padding) + horizontal flip "
    "+ normalisation, 10 epochs, fp32.",
    model="resnet18_cifar", epochs=10, batch_size=128, lr=0.1, momentum=0.9, nesterov=False,
    weight_decay=5e-4, no_decay_1d=False, label_smoothing=0.0, schedule="constant",
    warmup_epochs=0, crop_pad=4, crop_fill="zero", flip="random", cutout=0, precision="fp32",
    channels_last=False,
)
_recipe(
    "default",
    "A modern single-machine recipe: Nesterov SGD (momentum 0.9), lr 0.2 for batch 256 (linear "
    "scaling, Goyal et al. 2017), 1-epoch linear warmup then cosine decay (Loshchilov and Hutter "
    "2017), label smoothing 0.1 (Szegedy et al. 2016), weight decay 5e-4 except on BatchNorm and "
    "biases, reflect-padded crop + flip, bf16 + channels_last where supported, 30 epochs.",
    epochs=30, batch_size=256, lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4,
    no_decay_1d=True, label_smoothing=0.1, schedule="cosine", warmup_epochs=1, crop_pad=4,
    crop_fill="reflect", flip="random",
)
_recipe(
    "fast",
    "Shortest time to a target accuracy (the CIFAR-10 speedrun tricks): ResNet-9 (Page 2018), batch "
    "512, Nesterov SGD lr 0.4 with linear warmup over 2 epochs then linear decay to 0 (one-cycle, "
    "Smith 2018; Page 2018), weight decay 5e-4 except BatchNorm/bias, label smoothing 0.2 "
    "(hlb-CIFAR10), reflect-padded crop + alternating flip (Jordan 2024), flip TTA at test, "
    "no evaluation before the end, 10 epochs.",
    model="resnet9", epochs=10, batch_size=512, lr=0.4, momentum=0.9, nesterov=True, weight_decay=5e-4,
    no_decay_1d=True, label_smoothing=0.2, schedule="linear", warmup_epochs=2, crop_pad=4,
    crop_fill="reflect", flip="alternating", cutout=0, tta=True, eval_every=0,
)
_recipe(
    "cpu-fast",
    "Shortest time to a good model on a CPU: resnet_cpu (patchify stem, ResNet-9 stages; about 6x "
    "fewer multiply-adds than ResNet-20's full-resolution layers) with its stem set to the whitening "
    "transform of the training patches and frozen (hlb-CIFAR10; Jordan 2024) and GELU activations "
    "(Hendrycks and Gimpel 2016; as in airbench94), batch 512, Muon on the "
    "convolution filters (lr 0.2, momentum 0.6, 3 Newton-Schulz iterations; Jordan et al. 2024, as in airbench94_muon) "
    "and Nesterov SGD "
    "lr 0.8 on the rest, 0.3 warmup epochs then linear decay (Smith 2018; Page 2018; the batch and "
    "learning rates chosen by measurement: docs/speed-cpu.md), weight decay 5e-4 except BatchNorm/bias, "
    "label smoothing 0.2 (hlb-CIFAR10), 2-pixel reflect-padded crop + alternating flip (Jordan 2024), brightness "
    "and contrast jitter of +-0.14 and +-0.13 (hiverge cifar10-speedrun 2025), "
    "flip-and-shift TTA (Jordan 2024), the stem's BatchNorm trained for 2 epochs, then frozen (as airbench94 "
    "trains its whitening bias for 3), after the last step the BatchNorm statistics set from 10,240 training images "
    "averaged equally (precise BatchNorm, Wu and Johnson 2021), precision and layout measured (--precision auto), "
    "10 epochs. With a "
    "time budget on a CPU, a larger network at batch 256 and Muon lr 0.1 where the budget buys enough epochs of it "
    "(at the rate the precision probe measures): resnet_cpu_fullres_deep from 4.5 epochs, else "
    "resnet_cpu_fullres_narrow from 2.5 (docs/training.md).",
    model="resnet_cpu", model_kwargs={"whiten": True, "activation": "gelu"}, epochs=10, batch_size=512, lr=0.8,
    momentum=0.9,
    nesterov=True, optimizer="muon", muon_lr=0.2, muon_momentum=0.6, muon_ns_steps=3, weight_decay=5e-4,
    no_decay_1d=True, label_smoothing=0.2, schedule="linear", warmup_epochs=0.3, crop_pad=2, crop_fill="reflect",
    flip="alternating", brightness=0.14, contrast=0.13, cutout=0, tta="flip-shift", eval_every=0, precision="auto",
    budget_model=[{"model": "resnet_cpu_fullres_deep", "batch_size": 256, "muon_lr": 0.1, "min_epochs": 4.5},
                  {"model": "resnet_cpu_fullres_narrow", "batch_size": 256, "muon_lr": 0.1, "min_epochs": 2.5}],
    stem_epochs=2, bn_recalibration=10240,
)


# The batch is at most 1/BATCH_FRACTION of the training images (a power of two, at least MIN_BATCH) unless
# given: an epoch is then at least ~16 steps, so a small folder gets enough updates to learn in a few
# epochs. The lr scales with the batch (linear scaling rule, Goyal et al. 2017).
BATCH_FRACTION = 16
MIN_BATCH = 8


def adapted_batch(batch_size: int, lr: float, n_train: int, world_size: int = 1) -> tuple[int, float]:
    """``(batch, lr)`` for ``n_train`` training images: the batch capped, the lr scaled with it."""
    cap = max(MIN_BATCH, n_train // BATCH_FRACTION)
    cap = 1 << (cap.bit_length() - 1)  # a power of two: divides any power-of-two world size
    cap = max(world_size, cap - cap % world_size)
    if cap >= batch_size:
        return batch_size, lr
    return cap, lr * cap / batch_size


def list_recipes() -> list[Recipe]:
    return list(RECIPES.values())


def resolve_recipe_defaults(recipe: str) -> dict[str, Any]:
    """Every option's value under ``recipe`` when nothing is given (for help texts and tables)."""
    if recipe not in RECIPES:
        raise UserError(f"unknown recipe {recipe!r}; choose one of: {', '.join(sorted(RECIPES))}")
    return {**TrainConfig().to_dict(), **RECIPES[recipe].values, "recipe": recipe}


def _same_family(name: str, recipe_model: str | None) -> bool:
    """Whether ``name`` is built like the recipe's model, so the recipe's model options apply to it too."""
    if name == recipe_model:
        return True
    try:
        return recipe_model is not None and model_info(name).family == model_info(recipe_model).family
    except UnknownModelError:
        return False  # the unknown name is reported where the model is built


def _absolute_source(data: str, dataset: str | None) -> str:
    """A data path made absolute, so resume, ``eval`` and reports find it from any directory.

    ``synthetic``/``synthetic:N`` are names, not paths, and stay as they are.
    """
    try:
        if dataset == "synthetic" or parse_synthetic(data) is not None:
            return data
    except UserError:
        return data  # a malformed synthetic name is reported where the data is prepared
    return os.path.abspath(os.path.expanduser(data))


def resolve_config(recipe: str | None = None, **overrides: Any) -> TrainConfig:
    """The recipe's values over the dataclass defaults, then every non-``None`` override."""
    name = recipe or "default"
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; choose one of: {', '.join(sorted(RECIPES))}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"unknown training option(s): {', '.join(unknown)}")
    given = {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in overrides.items() if v is not None}
    if isinstance(given.get("data"), str):
        given["data"] = _absolute_source(given["data"], given.get("dataset"))
    recipe_values = copy.deepcopy(RECIPES[name].values)  # a run must never edit the recipe's dicts
    if "model" in given and not _same_family(given["model"], recipe_values.get("model")):
        recipe_values.pop("model_kwargs", None)  # the recipe's model options are for its own family
        recipe_values.pop("stem_epochs", None)  # and so is freezing the stem
    elif "model_kwargs" in given:
        given["model_kwargs"] = {**recipe_values.get("model_kwargs", {}), **given["model_kwargs"]}
    values = {**recipe_values, **given}
    if "batch_size" in given and "adapt_batch" not in given:
        values["adapt_batch"] = False  # a batch the user chose is kept as it is
    if "budget_model" not in given and any(k in given for k in ("model", "batch_size", "muon_lr")):
        values["budget_model"] = None  # the network, batch or Muon lr the user chose is kept
    cfg = TrainConfig(recipe=name, **values)
    validate(cfg)
    muon_only = [k for k in ("muon_lr", "muon_momentum", "muon_ns_steps") if k in given]
    if muon_only and cfg.optimizer != "muon":
        raise UserError(f"{' and '.join(f'<<{k}>>' for k in muon_only)} only apply with <<optimizer=muon>>, and this "
                        f"run trains with {cfg.optimizer}; add <<optimizer=muon>> or drop them")
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Reject values no run could use, in one sentence each."""
    if not cfg.epochs or cfg.epochs <= 0:
        raise UserError(f"<<epochs>> must be positive, got {cfg.epochs}")
    if cfg.time_budget is not None and not 0 < cfg.time_budget < float("inf"):
        raise UserError(f"<<time_budget>> takes a positive number of seconds, got {cfg.time_budget}")
    if cfg.batch_size is None or cfg.batch_size <= 0:
        raise UserError(f"<<batch_size>> must be a positive integer, got {cfg.batch_size}")
    if not cfg.lr or cfg.lr <= 0:
        raise UserError(f"<<lr>> must be positive, got {cfg.lr}")
    if cfg.weight_decay < 0:
        raise UserError(f"<<weight_decay>> must be >= 0, got {cfg.weight_decay}")
    if not 0 <= cfg.label_smoothing < 1:
        raise UserError(f"<<label_smoothing>> must be in [0, 1), got {cfg.label_smoothing}")
    if not 0 <= cfg.momentum < 1:
        raise UserError(f"<<momentum>> must be in [0, 1), got {cfg.momentum}")
    if cfg.optimizer not in OPTIMIZERS:
        raise UserError(f"<<optimizer>> must be {' or '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    if not cfg.muon_lr or cfg.muon_lr <= 0:
        raise UserError(f"<<muon_lr>> must be positive, got {cfg.muon_lr}")
    if not 0 <= cfg.muon_momentum < 1:
        raise UserError(f"<<muon_momentum>> must be in [0, 1), got {cfg.muon_momentum}")
    if not isinstance(cfg.muon_ns_steps, int) or isinstance(cfg.muon_ns_steps, bool) or cfg.muon_ns_steps < 1:
        raise UserError(f"<<muon_ns_steps>> takes a positive number of Newton-Schulz iterations, got {cfg.muon_ns_steps!r}")
    if cfg.val_split < 0:
        raise UserError(f"<<val_split>> must be >= 0, got {cfg.val_split}")
    if cfg.test_split is not None and not 0 < cfg.test_split < 1:
        raise UserError(f"<<test_split>> takes a fraction between 0 and 1 (for example 0.1), got {cfg.test_split}")
    if cfg.checkpoint_every < 0:
        raise UserError(f"<<checkpoint_every>> must be >= 0, got {cfg.checkpoint_every}")
    if cfg.max_steps is not None and cfg.max_steps <= 0:
        raise UserError(f"<<max_steps>> must be positive, got {cfg.max_steps}")
    if cfg.stop_after_steps is not None and cfg.stop_after_steps <= 0:
        raise UserError(f"<<stop_after_steps>> must be positive, got {cfg.stop_after_steps}")
    if cfg.schedule not in ("constant", "cosine", "linear", "step"):
        raise UserError(f"<<schedule>> must be constant, cosine, linear or step, got {cfg.schedule!r}")
    if cfg.flip not in ("random", "alternating", "none"):
        raise UserError(f"<<flip>> must be random, alternating or none, got {cfg.flip!r}")
    tta_mode(cfg.tta)  # False, True, "none", "flip" or "flip-shift"
    if cfg.crop_fill not in ("zero", "reflect"):
        raise UserError(f"<<crop_fill>> must be zero or reflect, got {cfg.crop_fill!r}")
    if cfg.crop_pad < 0 or cfg.cutout < 0:
        raise UserError("<<crop_pad>> and <<cutout>> must be >= 0")
    if not 0 <= cfg.brightness < float("inf") or not 0 <= cfg.contrast < 1:
        raise UserError(f"<<brightness>> takes a shift >= 0 and <<contrast>> a fraction in [0, 1), got "
                        f"{cfg.brightness} and {cfg.contrast}")
    if cfg.progressive_sizes is not None:
        sizes = list(cfg.progressive_sizes)
        if not sizes or any(not isinstance(v, int) or v < 8 for v in sizes):
            raise UserError(f"<<progressive_sizes>> takes image sizes of at least 8 pixels, got {sizes}")
    if not (cfg.ema == 0 or 0 < cfg.ema < 1):
        raise UserError(f"<<ema>> takes a decay between 0 and 1 (e.g. 0.999), got {cfg.ema}")
    if not isinstance(cfg.ema_every, int) or cfg.ema_every < 1:
        raise UserError(f"<<ema_every>> takes a positive number of steps, got {cfg.ema_every}")
    if cfg.mixup < 0 or cfg.cutmix < 0:
        raise UserError(f"<<mixup>> and <<cutmix>> take a non-negative alpha, got {cfg.mixup} and {cfg.cutmix}")
    if not 0 <= cfg.mix_prob <= 1 or not 0 <= cfg.mix_switch_prob <= 1:
        raise UserError(f"<<mix_prob>> and <<mix_switch_prob>> must be in [0, 1], got {cfg.mix_prob} and "
                        f"{cfg.mix_switch_prob}")
    unknown = [name for name in cfg.log if name not in LOGGERS]
    if unknown:
        raise UserError(f"<<log>> takes any of {', '.join(LOGGERS)} (comma-separated), got {', '.join(unknown)}")
    check_installed([*cfg.log, *(["tensorboard"] if cfg.tensorboard else [])])
    if cfg.backbone_lr_mult < 0:
        raise UserError(f"<<backbone_lr_mult>> must be >= 0, got {cfg.backbone_lr_mult}")
    if cfg.freeze_backbone and not cfg.pretrained:
        raise UserError("<<freeze_backbone>> needs <<pretrained>> weights to keep (a random backbone would stay "
                        "random); add <<pretrained>> or drop <<freeze_backbone>>")
    check_model_options(cfg.model, cfg.model_kwargs)
    if not isinstance(cfg.bn_recalibration, int) or isinstance(cfg.bn_recalibration, bool) or cfg.bn_recalibration < 0:
        raise UserError(f"<<bn_recalibration>> takes a number of training images (0 or more), got "
                        f"{cfg.bn_recalibration!r}")
    if cfg.stem_epochs is not None:
        if not isinstance(cfg.stem_epochs, int) or isinstance(cfg.stem_epochs, bool) or cfg.stem_epochs < 0:
            raise UserError(f"<<stem_epochs>> takes a whole number of epochs (0 or more), got {cfg.stem_epochs!r}")
        try:
            freezable = hasattr(model_info(cfg.model).builder, "freeze_stem")
        except UnknownModelError:
            freezable = True  # the unknown name is reported where the model is built
        if not freezable:
            raise UserError(f"<<stem_epochs>> freezes the stem of a resnet_cpu network; {cfg.model} has no stem to "
                            f"freeze, so drop it")
    if isinstance(cfg.budget_model, dict):
        cfg.budget_model = [cfg.budget_model]
    for bm in cfg.budget_model or []:
        if not isinstance(bm, dict) or "model" not in bm or not bm.get("min_epochs", 0) > 0 or set(bm) - {
                "model", "batch_size", "muon_lr", "min_epochs"}:
            raise UserError(f"<<budget_model>> takes a model name, a positive min_epochs and optionally a batch_size "
                            f"and a muon_lr (or a list of such, largest network first), got {bm!r}")
        model_info(bm["model"])
