"""Export a trained model to ONNX, TorchScript or safetensors, each verified before it is kept.

Every file is written under a temporary name next to the target, reloaded by its own runtime
(onnxruntime, ``torch.jit.load``, or a rebuild from safetensors) and compared with the eager
fp32 model on random inputs of two batch sizes; only a file whose largest difference, relative
to the scale of the logits (:func:`relative_error`), is within the tolerance (default
:data:`TOLERANCE`) is renamed into place. Each format carries the metadata needed to use it alone: model name and
arguments, class names, mean/std (inputs are ``(x/255 - mean)/std``, RGB) and input size.

ONNX uses the ``torch.export``-based exporter (the default since torch 2.9; the TorchScript-based
one is deprecated) with a symbolic batch dimension. TorchScript uses ``torch.jit.trace``; a ResNet
has no data-dependent control flow, so the trace serves any batch size. onnx, onnxruntime,
onnxscript and safetensors are the optional extra ``resnetkit[export]``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import (
    CheckpointError,
    decode_metadata,
    encode_metadata,
    load_model,
    model_metadata,
    read_safetensors,
)
from .errors import UserError
from .io import atomic_path

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript", "safetensors": ".safetensors"}
# Largest relative error of the logits allowed against eager fp32: max|a - b| / max(1, max|ref|).
# Measured on CPU fp32 (AMD EPYC, AVX2) with a half-width ResNet-20 whose classifier was scaled so its
# largest logit is ~1.5, ~5e1 and ~1.5e3 (tests/first_hour/_helpers.save_checkpoint): ONNX Runtime
# differs from eager by 3e-7, 1e-5 and 2.4e-4 absolute, i.e. 2.2e-7 to 2.8e-7 relative at every
# scale, and TorchScript by 0; a 1-epoch ResNet-20 with logits ~8e3 differed by 3.9e-3 absolute
# (~5e-7 relative). The error grows with the logits, the ratio does not, so a relative 1e-4 leaves a
# margin of ~300x while still catching a wrong graph (those differ by O(1)).
TOLERANCE = 1e-4
VERIFY_BATCHES = (1, 3)
INPUT_NAME, OUTPUT_NAME = "input", "logits"  # as recorded by checkpoint.model_metadata
TS_META_FILE = "resnetkit.json"  # the TorchScript archive's extra file holding the metadata
_NEEDS = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "torchscript": (), "safetensors": ("safetensors",)}


class ExportError(UserError):
    """An export that cannot be written, verified or read back."""


@dataclass
class ExportResult:
    """Where the verified file went, and how far its outputs are from eager fp32 at most."""

    path: Path
    format: str
    max_abs_diff: float
    seconds: float
    rel_diff: float = 0.0
    tolerance: float = TOLERANCE
    weights: str = "raw"  # "ema" when the checkpoint's weight average was exported


def _require(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{what} needs the '{module}' package, which is not installed: "
                          f"pip install 'resnetkit[export]'") from None


def _metadata(model: nn.Module) -> dict[str, Any]:
    try:
        return model_metadata(model)
    except CheckpointError as e:
        raise ExportError(str(e)) from None


def _decode(raw: dict[str, str], path: Path) -> dict[str, Any]:
    try:
        return decode_metadata(raw, path)
    except CheckpointError as e:
        raise ExportError(str(e)) from None


def _example(meta: dict[str, Any], batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + batch)
    s = int(meta["image_size"])
    return torch.randn(batch, int(meta.get("in_channels", 3)), s, s, generator=g)


# ------------------------------------------------------------------------------ writers
@contextlib.contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    """The ONNX exporter's passes log every rewrite at INFO; keep them below WARNING for the call."""
    loggers = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _write_onnx(model: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    onnx = _require("onnx", "ONNX export")
    _require("onnxscript", "ONNX export")
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (_example(meta, 2),), None, dynamo=True, dynamic_shapes=({0: batch},),
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], optimize=True,
                                    verbose=False)
    proto = program.model_proto
    for key, value in encode_metadata(meta).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"resnetkit {meta['model_name']}: {len(meta['classes'])} classes"
    onnx.save_model(proto, str(path))  # weights inline: one self-contained file


def _write_torchscript(model: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    with warnings.catch_warnings():  # torch.jit is deprecated in 2.14 but still the TorchScript format
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (_example(meta, 2),), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={TS_META_FILE: json.dumps(meta)})


def _write_safetensors(model: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    st = _require("safetensors.torch", "safetensors export")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    st.save_file(state, str(path), metadata=encode_metadata(meta))


# ------------------------------------------------------------------------------ readers (verification)
def _run_onnx(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    ort = _require("onnxruntime", "checking an ONNX export")
    onnx = _require("onnx", "checking an ONNX export")
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def _run_torchscript(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    return module


def _run_safetensors(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    return load_model(path)


_WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript, "safetensors": _write_safetensors}
_RUNNERS = {"onnx": _run_onnx, "torchscript": _run_torchscript, "safetensors": _run_safetensors}


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """``max|got - ref| / max(1, max|ref|)``: the error against the logits' scale.

    fp32 kernels reassociate sums, so their error grows with the magnitude of the logits; an
    absolute bound would refuse a well-trained model with large logits. The ``max(1, .)`` keeps
    tiny logits (an untrained model) to an absolute bound. Inf for a shape mismatch.
    """
    if got.shape != ref.shape:
        return float("inf")
    return float((got.float() - ref.float()).abs().max()) / max(1.0, float(ref.float().abs().max()))


@torch.no_grad()
def _max_diff(model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor],
              meta: dict[str, Any]) -> tuple[float, float]:
    """(largest |exported - eager|, largest relative error) over both batch sizes (NaN propagates)."""
    worst, worst_rel = 0.0, 0.0
    for b in VERIFY_BATCHES:
        x = _example(meta, b, seed=1)
        ref = model(x).float()
        got = run(x).float()
        if got.shape != ref.shape:
            return float("inf"), float("inf")
        worst = max(worst, float((got - ref).abs().max()))
        worst_rel = max(worst_rel, relative_error(got, ref))
    return worst, worst_rel


def _guarded(what: str, out: Path, fn: Callable[[], Any]) -> Any:
    """Run an exporter/runtime step; its internal errors become one sentence (traceback at debug)."""
    try:
        return fn()
    except (UserError, OSError):
        raise
    except Exception as e:
        log.debug("%s", what, exc_info=True)
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ExportError(f"{what} ({type(e).__name__}: {first}), so {out} was not written") from None


def _check_target(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise ExportError(f"cannot write {out}: it is a folder; give a file name")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; choose another output file or pass <<overwrite=True>> to "
                          f"replace it")


def export_model(model: nn.Module, fmt: str, out: str | Path, *, tolerance: float = TOLERANCE,
                 overwrite: bool = False) -> ExportResult:
    """Write ``model`` (from :func:`resnetkit.load_checkpoint`) as ``fmt`` to ``out``, verified.

    The file appears at ``out`` only when its outputs match eager fp32 within ``tolerance``
    (relative to the logits' scale, :func:`relative_error`) at batch sizes 1 and 3; otherwise an
    :class:`ExportError` is raised and nothing is left behind. An existing ``out`` is replaced
    only with ``overwrite``. The model is moved to the CPU in fp32 and eval mode.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not (tolerance >= 0 and tolerance != float("inf")):
        raise ExportError(f"the export tolerance must be a finite number >= 0, got {tolerance}")
    out = Path(out)
    _check_target(out, overwrite)
    for module in _NEEDS[fmt]:
        _require(module, f"{fmt} export")
    meta = _metadata(model)
    model = model.float().cpu().eval()
    if not out.parent.is_dir():
        raise ExportError(f"cannot write {out}: the folder {out.parent} does not exist")
    t0 = time.perf_counter()
    try:
        with atomic_path(out, suffix=f".tmp{FORMATS[fmt]}") as tmp:
            with _quiet_exporter_logs():
                _guarded(f"could not export {meta['model_name']} to {fmt}", out,
                         lambda: _WRITERS[fmt](model, tmp, meta))
            diff, rel = _guarded(f"could not load the {fmt} export back to check it", out,
                                 lambda: _max_diff(model, _RUNNERS[fmt](tmp), meta))
            if not rel <= tolerance:
                raise ExportError(f"the {fmt} export for {out} gives outputs that differ from the model's by "
                                  f"{rel:.2e} relative to the logits' scale (more than the tolerance {tolerance:g}), "
                                  f"so it was not written")
    except OSError as e:
        raise ExportError(f"cannot write {out}: {e.strerror or e}") from None
    seconds = time.perf_counter() - t0
    log.debug("wrote %s (%s, verified: max |diff| %.2e, relative %.2e at batch sizes %s, %.1fs)", out, fmt, diff,
              rel, "/".join(map(str, VERIFY_BATCHES)), seconds)
    return ExportResult(out, fmt, diff, seconds, rel, tolerance, getattr(model, "weights", "raw"))


def export_checkpoint(checkpoint: str | Path, fmt: str, out: str | Path | None = None, *,
                      tolerance: float = TOLERANCE, overwrite: bool = False, weights: str = "auto") -> ExportResult:
    """Export a resnetkit checkpoint; ``out`` defaults to the checkpoint's path with the format's suffix.

    ``weights`` as in :func:`resnetkit.checkpoint.choose_weights`: ``auto`` exports the EMA weights
    when the checkpoint has them (``ExportResult.weights`` and the file's metadata say which).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    for module in _NEEDS[fmt]:  # fail before the (slow) load when a package is missing
        _require(module, f"{fmt} export")
    checkpoint = Path(checkpoint)
    target = Path(out) if out is not None else checkpoint.with_suffix(FORMATS[fmt])
    if target.exists() and checkpoint.exists() and target.resolve() == checkpoint.resolve():
        raise ExportError(f"the output {target} is the checkpoint itself; choose another file name")
    _check_target(target, overwrite)  # before the (slow) load
    return export_model(load_model(checkpoint, "cpu", weights), fmt, target, tolerance=tolerance, overwrite=overwrite)


def read_export_metadata(path: str | Path) -> dict[str, Any]:
    """The resnetkit metadata of an exported file (.onnx, .safetensors or TorchScript), checked.

    Nothing in the file is executed: ONNX and safetensors headers are parsed, and TorchScript's
    metadata is read straight from its zip archive.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    if path.suffix == ".safetensors":
        _require("safetensors", f"reading {path}")
        try:
            return _decode(read_safetensors(path)[0], path)
        except CheckpointError as e:
            raise ExportError(str(e)) from None
    if path.suffix == ".onnx":
        onnx = _require("onnx", f"reading {path}")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf's DecodeError and friends
            raise ExportError(f"{path} is not a readable ONNX model ({type(e).__name__})") from None
        return _decode({p.key: p.value for p in proto.metadata_props}, path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith(f"/extra/{TS_META_FILE}")]
            if not names:
                raise ExportError(f"{path} is a TorchScript archive without resnetkit metadata")
            meta = json.loads(zf.read(names[0]))
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as e:
        raise ExportError(f"{path} is not a readable TorchScript archive ({type(e).__name__})") from None
    if not isinstance(meta, dict):
        raise ExportError(f"{path} has damaged resnetkit metadata (not a JSON object)")
    return _decode(encode_metadata(meta), path)


# ------------------------------------------------------------------------------ exports as models (predict)
class ExportedModel(nn.Module):
    """An ONNX or TorchScript export behind the ``nn.Module`` call that predict uses.

    Carries ``classes``, ``mean``, ``std`` and ``image_size`` from the export's metadata, so
    :func:`resnetkit.predict.predict` preprocesses exactly as for the checkpoint it came from.
    ONNX runs on the CPU through onnxruntime; TorchScript moves with ``.to(device)``.
    """

    def __init__(self, meta: dict[str, Any], path: Path, run: Callable[[torch.Tensor], torch.Tensor],
                 module: nn.Module | None = None) -> None:
        super().__init__()
        self.module = module  # TorchScript: registered, so .to(device) moves it
        self._run = run
        self.path = path
        self.classes = list(meta["classes"])
        self.mean = tuple(float(v) for v in meta["mean"])
        self.std = tuple(float(v) for v in meta["std"])
        self.image_size = int(meta["image_size"])
        self.weights = str(meta.get("weights", "raw"))  # which weights were exported (EMA or raw)
        self.checkpoint_meta = dict(meta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.module is not None:
            return self.module(x.float())
        return self._run(x.detach().float().cpu().contiguous()).to(x.device)


def is_torchscript_export(path: str | Path) -> bool:
    """Whether ``path`` is a zip archive holding resnetkit's TorchScript metadata file."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith(f"/extra/{TS_META_FILE}") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_export(path: str | Path, device: str | torch.device = "cpu") -> ExportedModel:
    """An ONNX or TorchScript file written by :func:`export_model`, ready for predict.

    The metadata is checked first (:func:`read_export_metadata`); a file without it is refused.
    """
    path = Path(path)
    meta = read_export_metadata(path)
    if path.suffix == ".onnx":
        model = ExportedModel(meta, path, _guarded("could not load the ONNX model", path,
                                                   lambda: _run_onnx(path)))
        return model.eval()
    module = _guarded("could not load the TorchScript model", path, lambda: _run_torchscript(path))
    return ExportedModel(meta, path, module, module=module).eval().to(device)
