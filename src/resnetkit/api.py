"""The Python API: ``train``, ``evaluate`` and ``load_checkpoint``, the same code the CLI runs."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .models import create_model
from .train.checkpoint import load_model_weights, peek
from .train.config import TrainConfig, resolve_config
from .train.run import RunResult, fit

log = logging.getLogger(__name__)


def train(model: str | None = None, data: str | None = None, recipe: str | None = None, *,
          resume: str | Path | None = None, progress: bool = False, **options: Any) -> RunResult:
    """Train a model and return its :class:`~resnetkit.train.run.RunResult`.

    Example: ``resnetkit.train("resnet20", "synthetic", epochs=2, out="runs/demo")``. Options are
    :class:`~resnetkit.train.config.TrainConfig` fields; ``None`` values keep the recipe's.
    With ``resume=RUN_DIR`` the run continues from its ``last.pt`` (only ``epochs``, ``device``
    and a few logging options may change).
    """
    if resume is not None:  # settings come from the checkpoint; fit refuses any that cannot change
        given = {"model": model, "data": data, "recipe": recipe, **options}
        return fit(resume=resume, resume_overrides=given, progress=progress)
    cfg = resolve_config(recipe, model=model, data=data, **options)
    return fit(cfg, progress=progress)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved in a resnetkit checkpoint (or exported .safetensors), in eval mode.

    The model carries ``classes``, ``mean``, ``std`` and ``image_size`` from training, and
    ``model.predict(images)`` (PIL images, paths, or uint8/float tensors).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from .export import load_safetensors_checkpoint

        meta, state = load_safetensors_checkpoint(path)
    else:
        meta = peek(path)
        state = meta["model"]
    try:
        model = create_model(meta["model_name"], **meta["model_kwargs"])
    except UserError as e:
        raise UserError(f"{path} names a model this resnetkit cannot build ({e})") from None
    load_model_weights(model, state, str(path))
    model.eval().to(device)
    model.classes = list(meta["classes"])
    model.mean = tuple(meta["mean"])
    model.std = tuple(meta["std"])
    model.image_size = int(meta["image_size"])
    model.checkpoint_meta = {k: v for k, v in meta.items() if k not in ("model", "optimizer", "rng")}
    from .predict import predict as _predict

    model.predict = functools.partial(_predict, model)
    return model


def evaluate(checkpoint: str | Path, data: str | None = None, *, tta: bool = False,
             device: str = "auto", batch_size: int = 256, precision: str = "auto",
             out: str | Path | None = None, progress: bool = False) -> dict:
    """Top-1/top-5/loss/per-class accuracy and the confusion matrix on a dataset's test split.

    ``data`` defaults to the data the checkpoint was trained on. No training augmentation is
    applied. With ``out`` the metrics go to ``metrics.json`` and ``confusion.png`` there.
    """
    from .data.loader import DeviceLoader
    from .data.prepare import prepare_data
    from .train.device import resolve_device, resolve_precision
    from .train.engine import evaluate as run_eval

    dev = resolve_device(device)
    model = load_checkpoint(checkpoint, dev)
    meta = model.checkpoint_meta
    cfg = TrainConfig.from_dict(meta["config"])
    source = data or cfg.data
    ds = prepare_data(source, dataset=cfg.dataset if data is None else None, image_size=model.image_size,
                      skip_bad_images=cfg.skip_bad_images, progress=progress)
    if list(ds.classes) != list(model.classes):
        raise UserError(f"the classes of {source} ({len(ds.classes)}: {', '.join(ds.classes[:4])}...) differ from "
                        f"the checkpoint's ({len(model.classes)}: {', '.join(model.classes[:4])}...)")
    prec = resolve_precision(precision, dev)
    loader = DeviceLoader(ds.test_images, ds.test_labels, batch_size=batch_size, device=dev, train=False,
                          mean=model.mean, std=model.std,
                          dtype=torch.bfloat16 if prec == "bf16" else torch.float32)
    metrics = run_eval(model, loader, len(model.classes), device=dev, precision=prec, tta=tta)
    metrics["classes"] = list(model.classes)
    metrics["checkpoint"] = str(checkpoint)
    metrics["data"] = str(source)
    metrics["tta"] = tta
    if out is not None:
        from .plots import plot_confusion
        from .train.rundir import write_json

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "metrics.json", metrics)
        plot_confusion(torch.tensor(metrics["confusion"]), model.classes, out / "confusion.png")
    return metrics
