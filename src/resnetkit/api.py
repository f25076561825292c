"""The Python API: everything the command line does, as functions (the CLI reaches the library
only through this module).

Training: :func:`train`, :func:`resume`. Using a checkpoint: :func:`load_checkpoint`,
:func:`evaluate`, :func:`predict_files`, :func:`export`. Models: :func:`model_table`,
:func:`model_summary`. Benchmarks and studies: :func:`bench_throughput`,
:func:`bench_time_to_accuracy`, :func:`study_degradation`, :func:`study_gradients`.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .analysis import meta_model, model_table, summarize
from .benchmark import throughput, time_to_accuracy
from .checkpoint import load_model
from .data.prepare import prepare_data
from .errors import UserError
from .export import TOLERANCE, ExportResult, export_checkpoint, is_torchscript_export, load_export
from .io import write_json
from .models import model_info
from .plots import plot_confusion
from .predict import Prediction, draw_grid, expand_inputs, predict, predict_paths
from .runtime.cpuinfo import CpuFacts, collect
from .runtime.device import resolve_device, resolve_precision
from .runtime.inference import evaluate as evaluate_loader
from .runtime.loaders import eval_loader
from .runtime.probe import ProbeDecision, decide
from .study.degradation import run_degradation as study_degradation
from .study.gradients import run_gradients as study_gradients
from .training.config import BATCH_FRACTION, Recipe, TrainConfig, list_recipes, resolve_config, resolve_recipe_defaults
from .training.trainer import RESUME_OVERRIDABLE, RunResult, fit
from .version import __version__

log = logging.getLogger(__name__)

__all__ = [
    "BATCH_FRACTION", "RESUME_OVERRIDABLE", "ExportResult", "Prediction", "Recipe", "RunResult", "__version__",
    "bench_throughput", "bench_time_to_accuracy", "cpu_facts", "draw_grid", "evaluate", "export", "list_recipes",
    "load_checkpoint", "machine_info", "model_summary", "model_table", "precision_probe", "predict", "predict_files",
    "recipe_defaults", "resume", "save_json",
    "study_degradation", "study_gradients", "train",
]


NO_DATA = ("no training data given; set <<data>> to an image folder or archive (train/<class>/ and test/<class>/ "
           "images), a CIFAR directory or archive, 'cifar10' or 'cifar100' (with <<download>>), or 'synthetic' "
           "for generated images")


def interactive() -> bool:
    """Whether a person is probably watching: stderr is a terminal, or this is a Jupyter kernel."""
    try:
        return sys.stderr.isatty() or "ipykernel" in sys.modules
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


# ---------------------------------------------------------------------------------- training
def train(model: str | None = None, data: str | None = None, recipe: str | None = None, *,
          progress: bool | None = None, **options: Any) -> RunResult:
    """Train a model and return its :class:`~resnetkit.training.trainer.RunResult`.

    Example: ``resnetkit.train("resnet20", "path/to/folder", epochs=2, out="runs/demo")``. Options
    are :class:`~resnetkit.training.config.TrainConfig` fields; ``None`` values keep the recipe's.
    ``data`` is required ('synthetic' asks for generated images). A progress bar is drawn on
    stderr when run interactively (``progress=None``); ``progress=False`` silences it.
    To continue a run, use :func:`resume`.
    """
    if "resume" in options:
        raise UserError("train() starts a new run; continue one with resnetkit.resume(run_dir)")
    if progress is None:
        progress = interactive()
    if data is None and options.get("dataset") != "synthetic":
        raise UserError(NO_DATA)
    cfg = resolve_config(recipe, model=model, data=data, **options)
    return fit(cfg, progress=progress)


def recipe_defaults(recipe: str) -> dict[str, Any]:
    """Every training option's value under ``recipe`` when nothing else is given."""
    return resolve_recipe_defaults(recipe)


def resume(run_dir: str | Path, *, progress: bool | None = None, **overrides: Any) -> RunResult:
    """Continue the run in ``run_dir`` (or from a ``last.pt``) exactly where it stopped.

    A progress bar is drawn when run interactively (``progress=None``); ``progress=False`` silences it.
    The settings come from the checkpoint; ``overrides`` may change only the keys in
    :data:`RESUME_OVERRIDABLE` (``epochs``, ``device``, stop points and logging); ``None`` values
    are ignored, any other key is refused.
    """
    return fit(resume=run_dir, resume_overrides=overrides, progress=interactive() if progress is None else progress)


# ---------------------------------------------------------------------------------- checkpoints
def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved in a resnetkit checkpoint (or exported .safetensors), in eval mode.

    The model carries ``classes``, ``mean``, ``std`` and ``image_size`` from training, and
    ``model.predict(images)`` (PIL images, paths, or uint8/float tensors). ONNX and TorchScript
    files written by :func:`export` load too, as models for prediction only.
    """
    if Path(path).suffix == ".onnx" or (Path(path).suffix != ".safetensors" and is_torchscript_export(path)):
        model: nn.Module = load_export(path, device)
    else:
        model = load_model(path, device)
    model.predict = functools.partial(predict, model)
    return model


def evaluate(checkpoint: str | Path, data: str | None = None, *, tta: bool = False,
             device: str = "auto", batch_size: int = 256, precision: str = "auto",
             out: str | Path | None = None, overwrite: bool = False, progress: bool = False) -> dict:
    """Top-1/top-5/loss/per-class accuracy and the confusion matrix on a dataset's test split.

    ``data`` defaults to the data the checkpoint was trained on, and on it to the same test split
    (a split carved with ``test_split`` is carved again, identically). No training augmentation is
    applied. A class with no test images has accuracy NaN (``null`` in JSON). With ``out`` the
    metrics go to ``metrics.json`` and ``confusion.png`` there; earlier ones are replaced only with
    ``overwrite`` (checked before any work).
    """
    if out is not None:
        out = _check_eval_out(Path(out), overwrite)
    dev = resolve_device(device)
    model = load_checkpoint(checkpoint, dev)
    cfg = TrainConfig.from_dict(model.checkpoint_meta["config"])
    source = data or cfg.data
    same = data is None or Path(data).expanduser().resolve() == Path(cfg.data).expanduser().resolve()
    ds = prepare_data(source, dataset=cfg.dataset if data is None else None, image_size=model.image_size,
                      skip_bad_images=cfg.skip_bad_images, progress=progress,
                      test_split=cfg.test_split if same else None, test_split_seed=cfg.test_split_seed)
    if list(ds.classes) != list(model.classes):
        raise UserError(f"the classes of {source} ({len(ds.classes)}: {', '.join(ds.classes[:4])}...) differ from "
                        f"the checkpoint's ({len(model.classes)}: {', '.join(model.classes[:4])}...)")
    prec = resolve_precision(precision, dev)
    if out is not None:
        _make_eval_out(out)
    loader = eval_loader(ds.test_images, ds.test_labels, device=dev, precision=prec, mean=model.mean,
                         std=model.std, batch_size=batch_size)
    metrics = evaluate_loader(model, loader, len(model.classes), device=dev, precision=prec, tta=tta)
    metrics.update(classes=list(model.classes), checkpoint=str(checkpoint), data=str(source), tta=tta)
    if out is not None:
        write_json(out / "metrics.json", metrics)
        try:
            plot_confusion(torch.tensor(metrics["confusion"]), model.classes, out / "confusion.png")
        except OSError as e:
            raise UserError(f"could not write {out / 'confusion.png'}: {e.strerror or e}") from None
    return metrics


EVAL_FILES = ("metrics.json", "confusion.png")


def _check_eval_out(out: Path, overwrite: bool) -> Path:
    """Refuse an output folder that is a file or holds an earlier evaluation, before any work."""
    if out.exists() and not out.is_dir():
        raise UserError(f"the output {out} exists and is not a folder; give a folder for metrics.json and "
                        f"confusion.png")
    earlier = [f for f in EVAL_FILES if (out / f).exists()]
    if earlier and not overwrite:
        raise UserError(f"{out} already holds an evaluation ({', '.join(earlier)}); choose another output folder "
                        f"or pass <<overwrite=True>> to replace it")
    return out


def _make_eval_out(out: Path) -> None:
    """Create the output folder and prove it writable (after the inputs were found good)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to the output folder {out}: {e.strerror or e}") from None


def predict_files(checkpoint: str | Path, inputs: Sequence[str | Path], *, top_k: int = 5, tta: bool = False,
                  batch_size: int = 256, device: str = "auto"
                  ) -> tuple[list[Prediction], list[tuple[str, str]], nn.Module]:
    """Classify files, folders (recursively) and glob patterns with a checkpoint.

    Returns ``(predictions, failures, model)``: unreadable files are ``(path, reason)`` failures,
    not errors, so one bad file never stops the rest.
    """
    if top_k < 1 or batch_size < 1:
        raise UserError("--top-k and --batch-size must be at least 1")
    paths = expand_inputs(inputs)
    model = load_checkpoint(checkpoint, resolve_device(device))
    preds, failures = predict_paths(model, paths, top_k=top_k, tta=tta, batch_size=batch_size)
    return preds, failures, model


def export(checkpoint: str | Path, fmt: str, out: str | Path | None = None, *, tolerance: float = TOLERANCE,
           overwrite: bool = False) -> ExportResult:
    """Export a checkpoint to ONNX, TorchScript or safetensors, verified against the eager model.

    The export's logits must match within ``tolerance`` relative to their scale
    (:func:`resnetkit.export.relative_error`); an existing ``out`` is replaced only with ``overwrite``.
    """
    return export_checkpoint(checkpoint, fmt, out, tolerance=tolerance, overwrite=overwrite)


# ---------------------------------------------------------------------------------- models
def model_summary(name: str, input_size: tuple[int, int] | None = None, num_classes: int | None = None,
                  in_channels: int | None = None) -> dict[str, Any]:
    """Per-stage shapes, parameters and FLOPs of a registered model (built on the meta device).

    Returns ``family``, ``num_classes`` and ``summary`` (:class:`resnetkit.analysis.ModelSummary`).
    """
    info = model_info(name)  # an unknown name fails here, with suggestions
    channels = in_channels or info.input_size[0]
    hw = tuple(input_size) if input_size else tuple(info.input_size[1:])
    model = meta_model(name, num_classes=num_classes, in_channels=in_channels)
    return {"family": info.family, "num_classes": model.num_classes,
            "summary": summarize(model, (channels, *hw), name=name)}


# ---------------------------------------------------------------------------------- benchmarks
def bench_throughput(model: str, data: str = "synthetic", *, progress: bool = False, **options: Any) -> dict:
    """Images/s of resnetkit's pipeline, the tutorial's and the ceiling, in one run (a report dict)."""
    ds = prepare_data(data, progress=progress)
    rows = throughput(model, ds, **options)
    by = {r.name: r for r in rows}
    report: dict[str, Any] = {"mode": "throughput", "model": model, "data": data, "machine": machine_info(),
                              "rows": [r.__dict__ for r in rows]}
    if "tutorial" in by:
        report["resnetkit_over_tutorial"] = by["resnetkit"].images_per_s / by["tutorial"].images_per_s
    report["resnetkit_over_ceiling"] = by["resnetkit"].images_per_s / by["ceiling"].images_per_s
    return report


def bench_time_to_accuracy(recipe: str, data: str, seeds: list[int], out_root: str, **options: Any) -> dict:
    """A recipe with a fixed budget over ``seeds``: mean +- std of accuracy and time (a report dict)."""
    report = time_to_accuracy(recipe, data, seeds, out_root, **options)
    report["machine"] = machine_info()
    return report


def cpu_facts(amx_check: bool = True) -> CpuFacts:
    """CPU model, speed-relevant flags, threads, torch/oneDNN build, and whether AMX kernels run."""
    return collect(run_amx_check=amx_check)


def precision_probe(model: str, batch_size: int, image_size: int = 32, *, refresh: bool = False) -> ProbeDecision:
    """What ``--precision auto`` picks on this CPU for ``model`` at this batch and size (timed or cached)."""
    model_info(model)  # an unknown name is a one-sentence error before any work
    return decide(model, {}, batch_size, image_size, device=torch.device("cpu"), refresh=refresh)


def machine_info() -> dict[str, Any]:
    """The device name, torch version and CPU threads that a benchmark ran with."""
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or platform.machine()
    return {"device": dev, "torch": torch.__version__, "threads": torch.get_num_threads()}


def save_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (folders created; NaN as ``null``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, obj)
    return path
