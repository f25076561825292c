"""The checkpoint format, in one place: version, atomic write, safe read, and rebuilding a model.

A checkpoint (``last.pt``/``best.pt``) is a dict of tensors and plain data, marked
``format: resnetkit-checkpoint`` with a ``format_version`` (the keys are listed in
:func:`build_payload`). Writes go to a temporary file in the same directory, are flushed and
fsync'ed, then renamed over the target (:mod:`resnetkit.io`), so a crash or a full disk never
leaves a half-written ``last.pt``. Loads use ``torch.load(weights_only=True)`` only: a checkpoint
whose pickle would run code is refused, with no fallback (torch>=2.10; CVE-2025-32434 affected
<2.6). A ``.safetensors`` export carries the same model metadata as string pairs in its header
(``format: resnetkit-export``), so either file alone rebuilds the model, its classes and its
preprocessing (:func:`load_model`).
"""

from __future__ import annotations

import importlib
import json
import logging
import pickle
import platform
import re
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .io import atomic_write
from .models import create_model
from .version import __version__

log = logging.getLogger(__name__)

FORMAT = "resnetkit-checkpoint"
FORMAT_VERSION = 1
EXPORT_MARKER = "resnetkit-export"  # the metadata marker of exported files (ONNX, TorchScript, safetensors)
EXPORT_VERSION = 1
_JSON_KEYS = ("format_version", "model_kwargs", "classes", "mean", "std", "image_size", "in_channels", "config")
_REQUIRED = ("model_name", "model_kwargs", "classes", "mean", "std", "image_size")


class CheckpointError(UserError):
    """A checkpoint that cannot be written, read or used."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.`` and ``_orig_mod.`` prefixes left by DDP / torch.compile wrappers."""
    out = {}
    for k, v in state.items():
        while k.startswith(("module.", "_orig_mod.")):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temp file + fsync + rename; the old file survives any failure."""
    path = Path(path)
    try:
        atomic_write(path, lambda f: torch.save(obj, f))
    except OSError as e:  # read-only or missing directory, no space, an I/O error
        raise CheckpointError(f"could not write checkpoint {path}: {e.strerror or e}") from None


def safe_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load with ``weights_only=True``; every failure is a :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; give the path of a .pt file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch words every weights_only failure alike: a code object shows as a refused GLOBAL,
        # reduce or build; anything else (bad opcode, short file) is damage, not an attack
        found = re.search(r"GLOBAL (\S+)|unrecognized function|Can only (?:create new object|build)", str(e))
        if found:
            raise CheckpointError(
                f"refusing to load {path}: it contains Python objects that could run code when "
                f"loaded ({found.group(1) or 'not plain data'}), and resnetkit only loads tensors and plain data"
            ) from None
        raise CheckpointError(f"{path} is truncated or not a PyTorch checkpoint (UnpicklingError)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, IndexError, KeyError) as e:
        raise CheckpointError(f"{path} is truncated or not a PyTorch checkpoint ({type(e).__name__})") from None


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A bare state dict from ``.pt``/``.pth`` (safe load) or ``.safetensors``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)[1]
    obj = safe_load(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return obj["model"]
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return clean_state_dict(obj)


def load_model_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                       allow_head_mismatch: bool = False) -> list[str]:
    """Load ``state`` strictly, with an error that names what differs.

    With ``allow_head_mismatch`` (explicit fine-tuning), classifier tensors of another shape are
    dropped and the classifier keeps its fresh initialisation; returns the names left untouched.
    """
    state = clean_state_dict(state)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    head = [k for k in wrong + missing if k.startswith("fc.")]
    if allow_head_mismatch:
        wrong = [k for k in wrong if not k.startswith("fc.")]
        missing = [k for k in missing if not k.startswith("fc.")]
        unexpected = [k for k in unexpected if not k.startswith("fc.")]
        state = {k: v for k, v in state.items() if k not in head}
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            what = "class count" if k.startswith("fc.") else "shape"
            parts.append(f"{what} differs at {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        if missing:
            parts.append(f"{len(missing)} model tensor(s) missing from it (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s) in it (first: {unexpected[0]})")
        hint = "; to fine-tune with a new classifier pass --pretrained" if wrong and all(k.startswith("fc.") for k in wrong) and not missing and not unexpected else ""
        raise CheckpointError(f"{source} does not fit this model: {'; '.join(parts)}{hint}")
    model.load_state_dict(state, strict=not allow_head_mismatch)
    return head


def peek(path: str | Path) -> dict[str, Any]:
    """Load a resnetkit checkpoint and check its format marker."""
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a resnetkit checkpoint (no '{FORMAT}' marker); bare state dicts go through --pretrained")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer resnetkit (format {ckpt['format_version']}); upgrade resnetkit")
    return ckpt


def _safetensors() -> Any:
    try:  # deferred: safetensors is the optional extra resnetkit[export]
        return importlib.import_module("safetensors")
    except ImportError:
        raise CheckpointError("reading .safetensors needs the 'safetensors' package: "
                              "pip install 'resnetkit[export]'") from None


def read_safetensors(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """``(header metadata as strings, state dict)`` of a ``.safetensors`` file (nothing is executed)."""
    path = Path(path)
    st = _safetensors()
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        with st.safe_open(str(path), framework="pt", device="cpu") as f:
            raw = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a damaged header or data
        raise CheckpointError(f"{path} is not a readable safetensors file ({str(e)[:160]})") from None
    return dict(raw), clean_state_dict(state)


def encode_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """String key/value pairs (ONNX metadata_props, safetensors header): JSON for non-strings."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def decode_metadata(raw: dict[str, str], path: str | Path) -> dict[str, Any]:
    """Check the marker and required keys of exported string metadata and decode its JSON values."""
    if raw.get("format") != EXPORT_MARKER:
        raise CheckpointError(f"{path} has no resnetkit metadata; a file of bare weights can start training "
                              f"with --pretrained but cannot be loaded as a model")
    meta: dict[str, Any] = dict(raw)
    try:
        for k in _JSON_KEYS:
            if k in raw:
                meta[k] = json.loads(raw[k])
        missing = [k for k in _REQUIRED if k not in meta]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        if int(meta["format_version"]) > EXPORT_VERSION:
            raise CheckpointError(f"{path} was written by a newer resnetkit (format {meta['format_version']}); "
                                  f"upgrade resnetkit")
        ok = (isinstance(meta["model_kwargs"], dict) and isinstance(meta["classes"], list)
              and all(isinstance(c, str) for c in meta["classes"]) and len(meta["mean"]) == len(meta["std"])
              and int(meta["image_size"]) > 0)
        if not ok:
            raise ValueError("values of the wrong type")
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path} has damaged resnetkit metadata ({e})") from None
    return meta


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(metadata, state dict)`` of a resnetkit checkpoint (``.pt``) or a safetensors export."""
    path = Path(path)
    if path.suffix == ".safetensors":
        raw, state = read_safetensors(path)
        return decode_metadata(raw, path), state
    meta = peek(path)
    return meta, meta["model"]


WEIGHTS = ("auto", "raw", "ema")


def choose_weights(meta: dict[str, Any], state: dict[str, torch.Tensor], weights: str, path: str | Path
                   ) -> tuple[str, dict[str, torch.Tensor]]:
    """``("raw" | "ema", tensors)``: ``auto`` takes the EMA weights when the checkpoint has them,
    unless its validation split preferred the raw ones (``best["weights"]``)."""
    if weights not in WEIGHTS:
        raise UserError(f"--weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    ema = meta.get("ema")
    if ema is None:  # one set of weights; an export's metadata says which it was
        held = "ema" if meta.get("weights") == "ema" else "raw"
        if weights not in ("auto", held):
            raise CheckpointError(f"{path} holds no EMA weights (the run was trained without --ema); use --weights raw"
                                  if held == "raw" else f"{path} holds only EMA weights (it was exported with them); "
                                  f"export the checkpoint with --weights raw for the others")
        return held, state
    if weights == "raw":
        return "raw", state
    if weights == "auto" and (meta.get("best") or {}).get("weights") == "raw":
        return "raw", state
    return "ema", ema["weights"]


def load_model(path: str | Path, device: str | torch.device = "cpu", weights: str = "auto") -> nn.Module:
    """Rebuild the model saved in ``path`` alone, in eval mode on ``device``.

    The model carries ``classes``, ``mean``, ``std``, ``image_size``, ``weights`` (``"raw"`` or
    ``"ema"``, see :func:`choose_weights`) and ``checkpoint_meta`` (everything but the tensors).
    """
    meta, state = read_checkpoint(path)
    chosen, state = choose_weights(meta, state, weights, path)
    try:
        model = create_model(meta["model_name"], **meta["model_kwargs"])
    except UserError as e:
        raise CheckpointError(f"{path} names a model this resnetkit cannot build ({e})") from None
    load_model_weights(model, state, str(path))
    model.eval().to(device)
    model.classes = list(meta["classes"])
    model.mean = tuple(meta["mean"])
    model.std = tuple(meta["std"])
    model.image_size = int(meta["image_size"])
    model.checkpoint_meta = {k: v for k, v in meta.items() if k not in ("model", "optimizer", "rng", "ema")}
    model.weights = chosen
    return model


def model_metadata(model: nn.Module) -> dict[str, Any]:
    """What an export records so that its file alone rebuilds ``model`` (from :func:`load_model`)."""
    spec = getattr(model, "spec", None)
    if spec is None or not hasattr(model, "classes"):
        raise CheckpointError("export needs a model from resnetkit.load_checkpoint (it carries the model name, "
                              "classes, mean, std and image size that the export records)")
    meta: dict[str, Any] = {
        "format": EXPORT_MARKER, "format_version": EXPORT_VERSION,
        "model_name": spec["name"], "model_kwargs": dict(spec["kwargs"]),
        "classes": list(model.classes), "mean": [float(v) for v in model.mean],
        "std": [float(v) for v in model.std], "image_size": int(model.image_size),
        "in_channels": int(getattr(model, "in_channels", 3)),
        "input_name": "input", "output_name": "logits",
        "preprocessing": "RGB, shorter side resized to image_size then centre-cropped; (x/255 - mean)/std",
    }
    if getattr(model, "weights", None) is not None:
        meta["weights"] = model.weights  # "raw" or "ema": which of a checkpoint's weights these are
    config = getattr(model, "checkpoint_meta", {}).get("config")
    if config is not None:
        meta["config"] = config
    return meta


def versions() -> dict[str, str]:
    """Library versions for config.json and checkpoints (metadata only: importing torchvision costs seconds)."""
    try:
        tv = version("torchvision")
    except PackageNotFoundError:
        tv = "unknown"
    return {"resnetkit": __version__, "torch": str(torch.__version__), "torchvision": tv,
            "python": platform.python_version()}


def build_payload(model: nn.Module, optimizer: torch.optim.Optimizer, *, model_name: str, config: dict,
                  progress: dict[str, Any], rng: dict, classes: list[str], mean: tuple, std: tuple,
                  image_size: int, in_channels: int, data_fingerprint: str, world_size: int,
                  ema: dict | None = None) -> dict:
    """The checkpoint dict (format 1): loadable with ``weights_only=True``, enough to resume exactly.

    ``progress`` holds ``epoch``, ``step_in_epoch``, ``global_step``, ``epoch_done``, ``best`` and
    ``history``; ``rng`` every global RNG state (:func:`resnetkit.runtime.device.rng_state`).
    ``ema`` (runs with ``--ema``): :meth:`resnetkit.training.ema.ModelEma.state_dict`, key ``ema``.
    """
    net = unwrap(model)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": net.state_dict(),
        "model_name": model_name,
        "model_kwargs": dict(net.spec["kwargs"]),
        "optimizer": optimizer.state_dict(),
        "epoch": progress["epoch"],
        "step_in_epoch": progress["step_in_epoch"],
        "global_step": progress["global_step"],
        # the position in the epoch's shuffled global order, which no number of processes changes
        "global_batch": int(config["batch_size"]),
        "images_in_epoch": progress["step_in_epoch"] * int(config["batch_size"]),
        "epoch_done": progress["epoch_done"],
        "rng": rng,
        "best": dict(progress["best"]),
        "history": list(progress["history"]),
        "config": config,
        "classes": list(classes),
        "mean": list(mean),
        "std": list(std),
        "image_size": image_size,
        "in_channels": in_channels,
        "data_fingerprint": data_fingerprint,
        "world_size": world_size,
        "versions": versions(),
        **({"ema": ema} if ema is not None else {}),
    }
