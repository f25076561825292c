"""The Python API: everything the command line does, as functions (the CLI reaches the library
only through this module).

Training: :func:`train`, :func:`resume`. Using a checkpoint: :func:`load_checkpoint`,
:func:`evaluate`, :func:`predict_files`, :func:`export`, :func:`explain` (Grad-CAM).
Showing runs: :func:`report`. Models: :func:`model_table`,
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
from .checkpoint import load_model, peek
from .data.prepare import prepare_data
from .errors import UserError
from .export import TOLERANCE, ExportResult, export_checkpoint, is_torchscript_export, load_export
from .gradcam import Explanation, explain_images, write_explanations
from .io import write_json, write_text
from .lr_find import LrFindResult
from .lr_find import lr_find as _lr_find
from .models import model_info
from .plots import plot_confusion
from .predict import Prediction, draw_grid, expand_inputs, predict, predict_paths
from .reporting import evaluation_extras, format_class_table, load_run, render_report
from .reporting.extras import hardware
from .runtime.cpuinfo import CpuFacts, collect
from .runtime.device import resolve_channels_last, resolve_device, resolve_precision
from .runtime.inference import TTA_MODES, tta_mode
from .runtime.inference import evaluate as evaluate_loader
from .runtime.loaders import eval_loader
from .runtime.probe import ProbeDecision, decide
from .study.degradation import run_degradation as study_degradation
from .study.gradients import run_gradients as study_gradients
from .training import ray_train
from .training.config import BATCH_FRACTION, Recipe, TrainConfig, list_recipes, resolve_config, resolve_recipe_defaults
from .training.ray_train import RayRunResult
from .training.resume import RESUME_OVERRIDABLE
from .training.trainer import RunResult, fit
from .version import __version__

log = logging.getLogger(__name__)

__all__ = [
    "BATCH_FRACTION", "RESUME_OVERRIDABLE", "ExportResult", "Prediction", "Recipe", "RunResult", "__version__",
    "TTA_MODES", "bench_throughput", "bench_time_to_accuracy", "cpu_facts", "default_eval_out", "draw_grid", "evaluate",
    "explain", "export",
    "format_class_table", "list_recipes", "load_checkpoint", "lr_find", "machine_info", "model_summary",
    "model_table", "precision_probe", "predict", "predict_files", "recipe_defaults", "report", "resume", "save_json",
    "study_degradation", "study_gradients", "train", "train_on_ray",
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
          progress: bool | None = None, report: bool = False, command: str | None = None,
          auto_resume: bool = False, **options: Any) -> RunResult:
    """Train a model and return its :class:`~resnetkit.training.trainer.RunResult`.

    Example: ``resnetkit.train("resnet20", "path/to/folder", epochs=2, out="runs/demo")``, or
    ``time_budget=300`` to train for 300 s of training steps instead of a number of epochs. Options
    are :class:`~resnetkit.training.config.TrainConfig` fields; ``None`` values keep the recipe's.
    ``data`` is required ('synthetic' asks for generated images). A progress bar is drawn on
    stderr when run interactively (``progress=None``); ``progress=False`` silences it.
    To continue a run, use :func:`resume`; with ``auto_resume`` (and always after torchrun
    restarted the workers) a run already in ``out`` with the same settings continues from its
    ``last.pt``, and otherwise starts there. With ``report`` (the CLI's default) the run directory
    gets ``report.html`` at the end (see :func:`report`), with ``command`` as the command that ran.
    """
    if "resume" in options:
        raise UserError("train() starts a new run; continue one with resnetkit.resume(run_dir)")
    if progress is None:
        progress = interactive()
    if data is None and options.get("dataset") != "synthetic":
        raise UserError(NO_DATA)
    cfg = resolve_config(recipe, model=model, data=data, **options)
    result = fit(cfg, progress=progress, auto_resume=auto_resume)
    if report:
        report_after_training(result.out_dir, command, result)
    return result


def train_on_ray(model: str | None = None, data: str | None = None, recipe: str | None = None, *,
                 num_workers: int = 2, use_gpu: bool = False, max_failures: int = 1,
                 storage_path: str | Path | None = None, name: str = "resnetkit", **options: Any) -> RayRunResult:
    """Train with Ray Train's ``TorchTrainer`` on ``num_workers`` workers (``pip install "resnetkit[ray]"``).

    Options are those of :func:`train`. Ray restarts the workers up to ``max_failures`` times
    after a failure, from the last reported checkpoint; see
    :func:`resnetkit.training.ray_train.train_on_ray`.
    """
    cfg = resolve_config(recipe, model=model, data=data, **options)
    return ray_train.train_on_ray(cfg, num_workers=num_workers, use_gpu=use_gpu, max_failures=max_failures,
                                  storage_path=storage_path, name=name)


def recipe_defaults(recipe: str) -> dict[str, Any]:
    """Every training option's value under ``recipe`` when nothing else is given."""
    return resolve_recipe_defaults(recipe)


def report_after_training(run_dir: Path | None, command: str | None = None, result: RunResult | None = None) -> None:
    """Write RUN_DIR/report.html (and command.txt) on rank 0; a failure is logged, never raised.

    The run's ``eval/`` (per-class metrics, confusion matrix, worst errors) comes from the final
    test pass of ``result`` when it kept its logits, so it holds the numbers training reported
    (same weights, same test-time augmentation) without a second pass; otherwise ``last.pt`` is
    evaluated again with the run's test-time augmentation. Files a previous run in the same
    directory left in ``eval/`` and ``explain/`` are replaced.
    """
    if run_dir is None or int(os.environ.get("RANK", "0")) != 0:
        return
    run_dir = Path(run_dir)
    try:
        if command:
            write_text(run_dir / "command.txt", command + "\n")
        ds = _eval_from_training(run_dir, result) if result is not None else None
        if ds is None:
            _evaluate_run(run_dir, fresh=True)
        for old in [*(run_dir / "explain").glob("[0-9][0-9][0-9]-*.png"),
                    *(run_dir / "explain").glob("[0-9][0-9][0-9]-*.npy")]:
            old.unlink()
        _explain_run(run_dir, REPORT_CAMS, ds)
        report([run_dir], run_dir / "report.html")
    except Exception as e:  # the run has finished and is saved: a report problem must not fail it
        log.warning("could not write %s/report.html: %s", run_dir, e)


REPORT_CAMS = 8  # Grad-CAM maps in a report: the first test image of each of the first 8 classes


def _run_data(cfg: TrainConfig) -> Any:
    """The data of a run as its training prepared it: the same cache entry, the same test split
    (one held out with ``test_split`` is carved again, identically)."""
    return prepare_data(cfg.data, dataset=cfg.dataset, image_size=cfg.image_size, skip_bad_images=cfg.skip_bad_images,
                        test_split=cfg.test_split, test_split_seed=cfg.test_split_seed)


def _eval_from_training(run_dir: Path, result: RunResult) -> Any:
    """Write RUN_DIR/eval/ from ``result``'s final test logits and return the run's data; None when
    it has no logits that fit."""
    if result.test_logits is None or not (run_dir / "last.pt").is_file():
        return None
    model = load_checkpoint(run_dir / "last.pt", "cpu", "raw")  # the weights result.test measured
    cfg = TrainConfig.from_dict(model.checkpoint_meta["config"])
    ds = _run_data(cfg)
    if len(ds.test_labels) != len(result.test_logits) or list(ds.classes) != list(model.classes):
        return None
    out = run_dir / "eval"
    _make_eval_out(out)
    _complete_metrics(dict(result.test), result.test_logits, ds, model, resolve_device(cfg.device),
                      run_dir / "last.pt", cfg.data, tta_mode(cfg.tta), out, 24)
    return ds


def _evaluate_run(run_dir: Path, fresh: bool = False) -> None:
    """Evaluate a run's ``last.pt`` into RUN_DIR/eval/ as training did (its test-time augmentation),
    unless (and ``fresh`` is false) an evaluation with per-class metrics is already there."""
    ev = run_dir / "eval" / "metrics.json"
    if fresh or not ev.is_file() or "per_class_metrics" not in ev.read_text():
        tta = TrainConfig.from_dict(peek(run_dir / "last.pt")["config"]).tta
        evaluate(run_dir / "last.pt", out=run_dir / "eval", device="cpu", tta=tta, overwrite=True)


def resume(run_dir: str | Path, *, progress: bool | None = None, report: bool = False, command: str | None = None,
           **overrides: Any) -> RunResult:
    """Continue the run in ``run_dir`` (or from a ``last.pt``) exactly where it stopped.

    A progress bar is drawn when run interactively (``progress=None``); ``progress=False`` silences it.
    The settings come from the checkpoint; ``overrides`` may change only the keys in
    :data:`RESUME_OVERRIDABLE` (``epochs``, ``device``, stop points and logging); ``None`` values
    are ignored, any other key is refused. ``report`` and ``command`` as in :func:`train`.
    """
    result = fit(resume=run_dir, resume_overrides=overrides, progress=interactive() if progress is None else progress)
    if report:
        report_after_training(result.out_dir, command, result)
    return result


# ---------------------------------------------------------------------------------- checkpoints
def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", weights: str = "auto") -> nn.Module:
    """Rebuild the model saved in a resnetkit checkpoint (or exported .safetensors), in eval mode.

    The model carries ``classes``, ``mean``, ``std`` and ``image_size`` from training, and
    ``model.predict(images)`` (PIL images, paths, or uint8/float tensors). ONNX and TorchScript
    files written by :func:`export` load too, as models for prediction only.
    """
    if Path(path).suffix == ".onnx" or (Path(path).suffix != ".safetensors" and is_torchscript_export(path)):
        model: nn.Module = load_export(path, device)
    else:
        model = load_model(path, device, weights)
    model.predict = functools.partial(predict, model)
    return model


def _class_difference(data: list[str], trained: list[str]) -> str:
    """What sets two class lists apart, in words: the names only one side has, or their order."""
    def names(items: list[str]) -> str:
        return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")

    only_data = [c for c in data if c not in trained]
    only_ckpt = [c for c in trained if c not in data]
    parts = ([f"only the data has {names(only_data)}"] if only_data else []) + (
        [f"only the checkpoint has {names(only_ckpt)}"] if only_ckpt else [])
    return "; ".join(parts) or f"the same {len(data)} names in another order"


def evaluate(checkpoint: str | Path, data: str | None = None, *, tta: bool | str = False,
             device: str = "auto", batch_size: int = 256, precision: str = "auto",
             out: str | Path | None = None, overwrite: bool = False, progress: bool = False,
             worst: int = 24, weights: str = "auto") -> dict:
    """Top-1/top-5/loss/per-class accuracy and the confusion matrix on a dataset's test split.

    ``tta``: ``False``, ``True`` or "flip" (image and mirror), "flip-shift" (and both moved a pixel).
    ``weights``: ``auto`` uses a checkpoint's EMA weights when it has them (``metrics["weights"]``
    says which), ``raw`` or ``ema`` choose.
    ``data`` defaults to the data the checkpoint was trained on, and on it to the same test split
    (a split carved with ``test_split`` is carved again, identically). No training augmentation is
    applied. A class with no test images has accuracy NaN (``null`` in JSON). With ``out`` the
    metrics go to ``metrics.json`` and ``confusion.png`` there; earlier ones are replaced only with
    ``overwrite`` (checked before any work). Per-class precision, recall, F1 and support
    (``per_class_metrics``) and the ``worst`` most confidently wrong test images (``worst_errors``;
    with ``out`` also drawn in ``worst_errors.png``) come with them.
    """
    tta = tta_mode(tta)
    if out is not None:
        out = _check_eval_out(Path(out), overwrite)
    dev = resolve_device(device)
    model = load_checkpoint(checkpoint, dev, weights)
    cfg = TrainConfig.from_dict(model.checkpoint_meta["config"])
    source = data or cfg.data
    same = data is None or Path(data).expanduser().resolve() == Path(cfg.data).expanduser().resolve()
    # the training data is asked for as training asked (same cache entry: no second decode of an archive)
    ds = prepare_data(source, dataset=cfg.dataset if data is None else None,
                      image_size=cfg.image_size if same else model.image_size,
                      skip_bad_images=cfg.skip_bad_images, progress=progress,
                      test_split=cfg.test_split if same else None, test_split_seed=cfg.test_split_seed)
    if list(ds.classes) != list(model.classes):
        raise UserError(f"the classes of {source} differ from the checkpoint's "
                        f"({_class_difference(ds.classes, model.classes)})")
    prec = resolve_precision(precision, dev)
    # the layout training evaluates in (a bf16 TTA evaluation of CIFAR-10 ran 2x faster in it on an AMX Xeon)
    channels_last = resolve_channels_last(None, dev, prec)
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if out is not None:
        _make_eval_out(out)
    loader = eval_loader(ds.test_images, ds.test_labels, device=dev, precision=prec, mean=model.mean,
                         std=model.std, batch_size=batch_size, channels_last=channels_last)
    kept: list[torch.Tensor] = []
    metrics = evaluate_loader(model, loader, len(model.classes), device=dev, precision=prec, tta=tta,
                              keep_logits=kept)
    metrics["train_tta"] = tta_mode(cfg.tta)  # how training's own test passes were made
    return _complete_metrics(metrics, torch.cat(kept), ds, model, dev, checkpoint, source, tta, out, worst)


def _complete_metrics(metrics: dict, logits: torch.Tensor, ds: Any, model: nn.Module, device: torch.device,
                      checkpoint: str | Path, source: str, tta: str, out: Path | None, worst: int) -> dict:
    """A test pass's ``metrics`` plus per-class P/R/F1, worst errors and the facts of the run; with
    ``out``, written there (``metrics.json``, ``confusion.png``, ``worst_errors.png``)."""
    metrics.update(evaluation_extras(metrics["confusion"], logits, ds.test_labels, ds.test_images,
                                     model.classes, out, worst))
    metrics.update(parameters=sum(p.numel() for p in model.parameters()), hardware=hardware(device),
                   checkpoint_bytes=Path(checkpoint).stat().st_size)
    metrics.update(classes=list(model.classes), checkpoint=str(checkpoint), data=str(source), tta=tta,
                   weights=model.weights)
    if out is not None:
        write_json(out / "metrics.json", metrics)
        try:
            plot_confusion(torch.tensor(metrics["confusion"]), model.classes, out / "confusion.png")
        except OSError as e:
            raise UserError(f"could not write {out / 'confusion.png'}: {e.strerror or e}") from None
    return metrics


EVAL_FILES = ("metrics.json", "confusion.png", "worst_errors.png")


def default_eval_out(checkpoint: str | Path) -> Path:
    """Where ``resnetkit eval`` writes without ``--out``: CHECKPOINT_DIR/eval, or eval-2, eval-3, ...
    when that already holds an evaluation (training's report writes RUN_DIR/eval), so a default
    evaluation never replaces an earlier one and never refuses to run."""
    parent = Path(checkpoint).parent
    n = 1
    while True:
        out = parent / ("eval" if n == 1 else f"eval-{n}")
        if not out.exists() or (out.is_dir() and not any((out / f).exists() for f in EVAL_FILES)):
            return out
        n += 1


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


def predict_files(checkpoint: str | Path, inputs: Sequence[str | Path], *, top_k: int = 5, tta: bool | str = False,
                  batch_size: int = 256, device: str = "auto", weights: str = "auto"
                  ) -> tuple[list[Prediction], list[tuple[str, str]], nn.Module]:
    """Classify files, folders (recursively) and glob patterns with a checkpoint.

    Returns ``(predictions, failures, model)``: unreadable and missing files are ``(path, reason)``
    failures, not errors, so one bad file never stops the rest (nothing to classify at all is an error).
    """
    if top_k < 1 or batch_size < 1:
        raise UserError("--top-k and --batch-size must be at least 1")
    missing: list[str] = []
    paths = expand_inputs(inputs, missing)
    model = load_checkpoint(checkpoint, resolve_device(device), weights)
    preds, failures = predict_paths(model, paths, top_k=top_k, tta=tta, batch_size=batch_size)
    return preds, [(m, "does not exist") for m in missing] + failures, model


def export(checkpoint: str | Path, fmt: str, out: str | Path | None = None, *, tolerance: float = TOLERANCE,
           overwrite: bool = False, weights: str = "auto") -> ExportResult:
    """Export a checkpoint to ONNX, TorchScript or safetensors, verified against the eager model.

    The export's logits must match within ``tolerance`` relative to their scale
    (:func:`resnetkit.export.relative_error`); an existing ``out`` is replaced only with ``overwrite``.
    ``weights``: ``auto`` exports a checkpoint's EMA weights when it has them, ``raw`` or ``ema`` choose.
    """
    return export_checkpoint(checkpoint, fmt, out, tolerance=tolerance, overwrite=overwrite, weights=weights)


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
    need = getattr(model, "min_input_size", 1)
    if min(hw) < need:
        raise UserError(f"{name} takes images of at least {need}x{need} pixels, got {hw[0]}x{hw[1]}")
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


# ---------------------------------------------------------------------------------- showing runs
def explain(checkpoint: str | Path, images: Any, *, target_class: int | str | None = None,
            layer: str | None = None, out: str | Path | None = None, device: str = "cpu",
            batch_size: int = 32, failures: list[tuple[str, str]] | None = None) -> list[Explanation]:
    """Grad-CAM heat maps of ``images`` under a checkpoint's model.

    ``images``: files, folders and glob patterns, or uint8 ``(3, H, W)`` tensors. ``target_class``
    (index or name) defaults to each image's predicted class; ``layer`` to the last residual
    stage. With ``out``, each image's overlay PNG and its map (.npy) are written there. A missing
    or unreadable file is an error, unless a ``failures`` list is given: it is then skipped and
    added there as ``(path, reason)`` (as ``predict`` reports them), an error only when none is left.
    """
    if isinstance(images, (str, Path)):
        images = [images]
    if not isinstance(images, torch.Tensor) and all(isinstance(i, (str, Path)) for i in images):
        missing: list[str] | None = [] if failures is not None else None
        images = expand_inputs(images, missing)
        if failures is not None and missing:
            failures.extend((m, "does not exist") for m in missing)
    model = load_checkpoint(checkpoint, resolve_device(device))
    result = explain_images(model, images, target_class=target_class, layer=layer, batch_size=batch_size,
                            failures=failures)
    if out is not None:
        write_explanations(result, out)
    return result


def report(run_dirs: Sequence[str | Path], out: str | Path | None = None, *, cams: int = REPORT_CAMS) -> Path:
    """One self-contained HTML report of one run, or a comparison of several; returns its path.

    A run without ``eval/metrics.json`` is first evaluated (``last.pt`` on its test split) and
    gets Grad-CAM maps of ``cams`` test images (the first of each class) in ``explain/``. ``out``
    defaults to RUN_DIR/report.html for one run and ./report.html for several.
    """
    if not run_dirs:
        raise UserError("give at least one run directory")
    runs = [Path(r) for r in run_dirs]
    for run in runs:
        if not run.exists():
            raise UserError(f"{run} does not exist; give the run directory of a training run")
        if not (run / "last.pt").is_file():
            raise UserError(f"{run} holds no last.pt; give the run directory of a finished training run")
        _evaluate_run(run)
        if cams > 0 and not any((run / "explain").glob("*.png")):
            _explain_run(run, cams)
    out = Path(out) if out is not None else (runs[0] / "report.html" if len(runs) == 1 else Path("report.html"))
    return render_report([load_run(r) for r in runs], out)


def _explain_run(run: Path, cams: int, ds: Any = None) -> None:
    """Grad-CAM maps of the first test image of each class (at most ``cams``) into RUN/explain/;
    ``ds``: the run's data when the caller already prepared it."""
    model = load_checkpoint(run / "last.pt")
    if ds is None:
        ds = _run_data(TrainConfig.from_dict(model.checkpoint_meta["config"]))
    firsts = [int((ds.test_labels == c).nonzero()[0]) for c in range(len(ds.classes))
              if bool((ds.test_labels == c).any())][:cams]
    write_explanations(explain_images(model, [ds.test_images[i] for i in firsts]), run / "explain")


def lr_find(model: str | nn.Module = "resnet20", data: str = "synthetic", **options: Any) -> LrFindResult:
    """The learning-rate range test (see :func:`resnetkit.lr_find.lr_find`); writes no run directory."""
    return _lr_find(model, data, **options)
