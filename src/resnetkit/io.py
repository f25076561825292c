"""Atomic file writes: a temporary file beside the target, fsync, then a rename over it.

A crash, a full disk or Ctrl-C at any point leaves either the old file or the new one under the
target name, never half of one, and no temporary file (the timm CheckpointSaver pattern). New
files get the permissions ``open()`` would give them (``0666 & ~umask``; ``mkstemp`` makes 0600).
:func:`atomic_write` and :func:`atomic_path` re-raise every failure unchanged (``OSError``
included) for the caller to word; :func:`write_bytes`, :func:`write_text` and :func:`write_json`
turn an ``OSError`` into a :class:`~resnetkit.errors.UserError` naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import UserError


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; file systems that cannot do this are skipped."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; on success it is fsync'ed and renamed to ``path``.

    For writers that take a file name (ONNX, TorchScript, safetensors). The temporary name is
    ``.NAME.RANDOM.tmp`` (plus ``suffix``'s extension when it differs), so leftovers of a killed
    process are recognisable.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any], suffix: str = ".tmp") -> None:
    """Call ``write(f)`` on a binary file that becomes ``path`` only if it returns normally."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    """``data`` to ``path``, atomically; a failure is a UserError naming the file."""
    try:
        atomic_write(path, lambda f: f.write(data))
    except OSError as e:
        raise UserError(f"could not write {path}: {e.strerror or e}") from None


def write_text(path: str | Path, text: str) -> None:
    """UTF-8 ``text`` to ``path``, atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """``obj`` as JSON to ``path``, atomically; NaN is written as ``null`` (undefined, not a number)."""
    write_text(path, json.dumps(to_json(obj), indent=indent, default=str) + "\n")


def to_json(obj: Any) -> Any:
    """``obj`` with every float NaN replaced by ``None`` (JSON has no NaN; ``null`` means undefined)."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    return obj
