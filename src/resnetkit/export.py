"""Export a trained model to ONNX, TorchScript or safetensors, each verified before it is kept.

Every file is written under a temporary name next to the target, reloaded by its own runtime
(onnxruntime, ``torch.jit.load``, or a rebuild from safetensors) and compared with the eager
fp32 model on random inputs of two batch sizes; only a file that matches within 1e-4 is
renamed into place. Each format carries the metadata needed to use it alone: model name and
arguments, class names, mean/std (inputs are ``(x/255 - mean)/std``, RGB) and input size.

ONNX uses the ``torch.export``-based exporter (the default since torch 2.9; the TorchScript-based
one is deprecated) with a symbolic batch dimension. TorchScript uses ``torch.jit.trace``; a ResNet
has no data-dependent control flow, so the trace serves any batch size. onnx, onnxruntime,
onnxscript and safetensors are the optional extra ``resnetkit[export]``.
"""

from __future__ import annotations

import importlib
import json
import logging
import contextlib
import os
import secrets
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .errors import UserError

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript", "safetensors": ".safetensors"}
MARKER = "resnetkit-export"
MARKER_VERSION = 1
TOLERANCE = 1e-4  # largest absolute difference of logits allowed against eager fp32
VERIFY_BATCHES = (1, 3)
INPUT_NAME, OUTPUT_NAME = "input", "logits"
TS_META_FILE = "resnetkit.json"  # the TorchScript archive's extra file holding the metadata
_JSON_KEYS = ("format_version", "model_kwargs", "classes", "mean", "std", "image_size", "in_channels", "config")
_REQUIRED = ("model_name", "model_kwargs", "classes", "mean", "std", "image_size")
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


def _require(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{what} needs the '{module}' package, which is not installed: "
                          f"pip install 'resnetkit[export]'") from None


def export_metadata(model: nn.Module) -> dict[str, Any]:
    """The metadata every export carries, from a model made by :func:`resnetkit.load_checkpoint`."""
    spec = getattr(model, "spec", None)
    if spec is None or not hasattr(model, "classes"):
        raise ExportError("export needs a model from resnetkit.load_checkpoint (it carries the model name, "
                          "classes, mean, std and image size that the export records)")
    meta: dict[str, Any] = {
        "format": MARKER, "format_version": MARKER_VERSION,
        "model_name": spec["name"], "model_kwargs": dict(spec["kwargs"]),
        "classes": list(model.classes), "mean": [float(v) for v in model.mean],
        "std": [float(v) for v in model.std], "image_size": int(model.image_size),
        "in_channels": int(getattr(model, "in_channels", 3)),
        "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
        "preprocessing": "RGB, shorter side resized to image_size then centre-cropped; (x/255 - mean)/std",
    }
    config = getattr(model, "checkpoint_meta", {}).get("config")
    if config is not None:
        meta["config"] = config
    return meta


def _encode(meta: dict[str, Any]) -> dict[str, str]:
    """String key/value pairs (ONNX metadata_props, safetensors header): JSON for non-strings."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def _decode(raw: dict[str, str], path: Path) -> dict[str, Any]:
    """Check the marker and required keys of string metadata and decode its JSON values."""
    if raw.get("format") != MARKER:
        raise ExportError(f"{path} has no resnetkit metadata; a file of bare weights can start training "
                          f"with --pretrained but cannot be loaded as a model")
    meta: dict[str, Any] = dict(raw)
    try:
        for k in _JSON_KEYS:
            if k in raw:
                meta[k] = json.loads(raw[k])
        missing = [k for k in _REQUIRED if k not in meta]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        if int(meta["format_version"]) > MARKER_VERSION:
            raise ExportError(f"{path} was written by a newer resnetkit (format {meta['format_version']}); upgrade resnetkit")
        ok = (isinstance(meta["model_kwargs"], dict) and isinstance(meta["classes"], list)
              and all(isinstance(c, str) for c in meta["classes"]) and len(meta["mean"]) == len(meta["std"])
              and int(meta["image_size"]) > 0)
        if not ok:
            raise ValueError("values of the wrong type")
    except (ValueError, TypeError, KeyError) as e:
        raise ExportError(f"{path} has damaged resnetkit metadata ({e})") from None
    return meta


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
    for key, value in _encode(meta).items():
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
    st.save_file(state, str(path), metadata=_encode(meta))


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
    from .api import load_checkpoint

    return load_checkpoint(path)


_WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript, "safetensors": _write_safetensors}
_RUNNERS = {"onnx": _run_onnx, "torchscript": _run_torchscript, "safetensors": _run_safetensors}


@torch.no_grad()
def _max_diff(model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], meta: dict[str, Any]) -> float:
    """Largest |exported - eager| over both batch sizes (inf for a wrong shape; NaN propagates)."""
    worst = 0.0
    for b in VERIFY_BATCHES:
        x = _example(meta, b, seed=1)
        ref = model(x).float()
        got = run(x).float()
        if got.shape != ref.shape:
            return float("inf")
        worst = max(worst, float((got - ref).abs().max()))
    return worst


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


def export_model(model: nn.Module, fmt: str, out: str | Path) -> ExportResult:
    """Write ``model`` (from :func:`resnetkit.load_checkpoint`) as ``fmt`` to ``out``, verified.

    The file appears at ``out`` only when its outputs match eager fp32 within 1e-4 at batch
    sizes 1 and 3; otherwise an :class:`ExportError` is raised and nothing is left behind.
    The model itself is moved to the CPU in fp32 and eval mode (as load_checkpoint gives it).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    for module in _NEEDS[fmt]:
        _require(module, f"{fmt} export")
    meta = export_metadata(model)
    model = model.float().cpu().eval()
    out = Path(out)
    if not out.parent.is_dir():
        raise ExportError(f"cannot write {out}: the folder {out.parent} does not exist")
    t0 = time.perf_counter()
    # a fresh name the writer creates itself, so the file gets the usual permissions (umask)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp{FORMATS[fmt]}"
    try:
        with _quiet_exporter_logs():
            _guarded(f"could not export {meta['model_name']} to {fmt}", out, lambda: _WRITERS[fmt](model, tmp, meta))
        diff = _guarded(f"could not load the {fmt} export back to check it", out,
                        lambda: _max_diff(model, _RUNNERS[fmt](tmp), meta))
        if not diff <= TOLERANCE:
            raise ExportError(f"the {fmt} export for {out} gives outputs that differ from the model's by {diff:.2e} "
                              f"(more than {TOLERANCE:g}), so it was not written")
        os.replace(tmp, out)
    except OSError as e:
        raise ExportError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    log.debug("wrote %s (%s, verified: max |diff| %.2e at batch sizes %s, %.1fs)", out, fmt, diff,
              "/".join(map(str, VERIFY_BATCHES)), seconds)
    return ExportResult(out, fmt, diff, seconds)


def export_checkpoint(checkpoint: str | Path, fmt: str, out: str | Path | None = None) -> ExportResult:
    """Export a resnetkit checkpoint; ``out`` defaults to the checkpoint's path with the format's suffix."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    for module in _NEEDS[fmt]:  # fail before the (slow) load when a package is missing
        _require(module, f"{fmt} export")
    from .api import load_checkpoint

    checkpoint = Path(checkpoint)
    target = Path(out) if out is not None else checkpoint.with_suffix(FORMATS[fmt])
    if target.exists() and checkpoint.exists() and target.resolve() == checkpoint.resolve():
        raise ExportError(f"--out {target} is the checkpoint itself; choose another file name")
    return export_model(load_checkpoint(checkpoint, "cpu"), fmt, target)


def load_safetensors_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(metadata, state_dict)`` of a safetensors export, for :func:`resnetkit.load_checkpoint`."""
    path = Path(path)
    _require("safetensors", f"reading {path}")
    from safetensors import safe_open

    if not path.is_file():
        raise ExportError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a damaged header or data
        raise ExportError(f"{path} is not a readable safetensors file ({str(e)[:160]})") from None
    return _decode(raw, path), state


def read_export_metadata(path: str | Path) -> dict[str, Any]:
    """The resnetkit metadata of an exported file (.onnx, .safetensors or TorchScript), checked.

    Nothing in the file is executed: ONNX and safetensors headers are parsed, and TorchScript's
    metadata is read straight from its zip archive.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    if path.suffix == ".safetensors":
        return load_safetensors_checkpoint(path)[0]
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
    return _decode(_encode(meta), path)
