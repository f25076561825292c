"""Checkpoints: atomic writes, safe loads, and rebuilding a model from a checkpoint alone.

Writes go to a temporary file in the same directory, are flushed and fsync'ed, then renamed over
the target (the timm CheckpointSaver pattern), so a crash or a full disk never leaves a
half-written ``last.pt``. Loads use ``torch.load(weights_only=True)`` only: a checkpoint whose
pickle would run code is refused, with no fallback (torch>=2.10; CVE-2025-32434 affected <2.6).
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError

log = logging.getLogger(__name__)

FORMAT = "resnetkit-checkpoint"
FORMAT_VERSION = 1


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


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temp file + fsync + rename; the old file survives any failure."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # read-only or missing directory, no space for an inode
        raise CheckpointError(f"could not write checkpoint {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; follow the umask like open()
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise CheckpointError(f"could not write checkpoint {path}: {e.strerror or e}") from None
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


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
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError("reading .safetensors needs the 'safetensors' package: pip install 'resnetkit[export]'") from None
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
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


def serialize_check(obj: Any) -> None:
    """Raise if ``obj`` would not load back with ``weights_only=True`` (used in tests)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    torch.load(buf, weights_only=True)
