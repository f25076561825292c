"""The uint8 cache: a decoded source saved once with ``torch.save`` and reused while it is unchanged.

A cache file holds only tensors, strings and numbers, so it loads with ``weights_only=True``
(no pickle code can run). It is written atomically (temporary file in the same folder, fsync,
``os.replace``), so a crash never leaves a half file under the real name; a file that is
unreadable anyway (disk trouble, another version) is rebuilt rather than reported as an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..io import atomic_write
from .dataset import ImageData

logger = logging.getLogger(__name__)

#: Bumped whenever decoding or the file layout changes, so old caches are rebuilt.
FORMAT_VERSION = 1


class Splits(NamedTuple):
    """What a source decodes to, before statistics: uint8 ``(N, 3, S, S)`` images, int64 labels."""

    classes: list[str]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    skipped: list[str]


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else env ``RESNETKIT_CACHE``, else ``~/.cache/resnetkit``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("RESNETKIT_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "resnetkit"


def _stat_entries(path: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of ``path`` itself, or of every file below a directory."""
    if path.is_file():
        st = path.stat()
        return [("", st.st_size, st.st_mtime_ns)]
    entries = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in filenames:
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)
            except OSError:  # vanished or dangling link: still part of what the source looks like
                entries.append((os.path.relpath(full, path), -1, -1))
                continue
            entries.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    entries.sort()
    return entries


def cache_key(kind: str, path: Path, options: dict[str, Any]) -> str:
    """Names the cache file: one per (source kind, resolved path, result-changing options)."""
    blob = json.dumps([FORMAT_VERSION, kind, str(path.resolve()), options], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def fingerprint(kind: str, path: Path, options: dict[str, Any]) -> str:
    """Hash of the key plus the size and mtime of every file of the source: any edit changes it."""
    h = hashlib.sha256(cache_key(kind, path, options).encode())
    for rel, size, mtime in _stat_entries(path.resolve()):
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def cache_file(root: Path, kind: str, name: str, key: str) -> Path:
    """``<root>/<kind>-<name>-<key prefix>.pt``; the name is only there to help a human."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]
    return root / f"{kind}-{safe}-{key[:16]}.pt"


def _check_payload(obj: Any) -> ImageData:
    """Rebuild ``ImageData`` from a loaded payload, refusing anything not shaped like ours."""
    if not isinstance(obj, dict) or obj.get("version") != FORMAT_VERSION:
        raise ValueError("not a resnetkit cache of this version")
    data = ImageData(
        name=str(obj["name"]),
        classes=[str(c) for c in obj["classes"]],
        train_images=obj["train_images"],
        train_labels=obj["train_labels"],
        test_images=obj["test_images"],
        test_labels=obj["test_labels"],
        mean=tuple(float(v) for v in obj["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in obj["std"]),  # type: ignore[arg-type]
        fingerprint=str(obj["fingerprint"]),
        skipped=[str(s) for s in obj["skipped"]],
    )
    for images, labels in ((data.train_images, data.train_labels), (data.test_images, data.test_labels)):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError("images are not uint8 (N, 3, H, W)")
        if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
            raise ValueError("labels do not match the images")
    return data


def load_cached(path: Path, expected_fingerprint: str) -> ImageData | None:
    """The cached data if ``path`` holds a valid cache with this fingerprint, else ``None``."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        data = _check_payload(obj)
    except Exception as exc:  # any unreadable cache is rebuilt, never fatal
        logger.warning("cache file %s is unreadable (%s); rebuilding it", path, exc)
        return None
    if data.fingerprint != expected_fingerprint:
        logger.info("source changed since %s was written; rebuilding it", path)
        return None
    logger.info("using cache %s", path)
    return data


def save_cached(path: Path, data: ImageData) -> None:
    """Write ``data`` to ``path`` atomically; a failure logs a warning and leaves no temp file."""
    payload = {
        "version": FORMAT_VERSION,
        "name": data.name,
        "classes": list(data.classes),
        "train_images": data.train_images.contiguous(),
        "train_labels": data.train_labels,
        "test_images": data.test_images.contiguous(),
        "test_labels": data.test_labels,
        "mean": list(data.mean),
        "std": list(data.std),
        "fingerprint": data.fingerprint,
        "skipped": list(data.skipped),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: torch.save(payload, f))
        logger.info("wrote cache %s", path)
    except OSError as exc:  # an unwritable cache costs speed next time, not this run
        logger.warning("could not write cache %s (%s); continuing without it", path, exc)
