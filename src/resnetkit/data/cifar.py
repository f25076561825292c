"""CIFAR-10/100 in the official python format: find, verify, read safely and download.

Layout and checksums are those of https://www.cs.toronto.edu/~kriz/cifar.html (the same values
torchvision's ``CIFAR10``/``CIFAR100`` classes check). The batch files are pickles, so they are read
with a restricted unpickler that can only rebuild numpy arrays: a crafted file cannot run code.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import pickle
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..errors import UserError
from ..io import atomic_write
from .cache import Splits

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant lives and what its official files hash to."""

    title: str
    folder: str
    archive: str
    url: str
    md5: str
    env: str
    train: tuple[tuple[str, str], ...]
    test: tuple[tuple[str, str], ...]
    meta: tuple[str, str]
    names_key: bytes
    labels_key: bytes


SPECS: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        "CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
        "RESNETKIT_CIFAR10",
        (("data_batch_1", "c99cafc152244af753f735de768cd75f"), ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
         ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"), ("data_batch_4", "634d18415352ddfa80567beed471001a"),
         ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")),
        (("test_batch", "40351d587109b95175f43aff81a1287e"),),
        ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"), b"label_names", b"labels",
    ),
    "cifar100": CifarSpec(
        "CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
        "RESNETKIT_CIFAR100",
        (("train", "16019d7e3df5f24257cddd939b257f8d"),),
        (("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
        ("meta", "7973b15100ade9c7d40fb424638fde48"), b"fine_label_names", b"fine_labels",
    ),
}


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes, latin-1 only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise ForbiddenGlobal(f"_codecs.encode with codec {encoding!r}")
    return text.encode("latin1")


@functools.lru_cache(maxsize=1)
def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle needs: numpy array/dtype rebuilding (numpy 1.x or 2.x names)."""
    try:  # numpy >= 2 moved numpy.core to numpy._core; files name either
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]

    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): _latin1_encode}
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays, dtypes and bytes; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _allowed_globals()[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(f"{module}.{name}") from None


def load_pickle(data: bytes, where: str) -> Any:
    """Unpickle one CIFAR file's bytes safely; any problem is a ``UserError`` naming ``where``."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except ForbiddenGlobal as exc:
        raise UserError(f"Refusing to load {where}: it references {exc}, which a CIFAR batch file never "
                        f"contains, so it may be malicious; replace it with the official file.") from None
    except Exception as exc:
        raise UserError(f"Could not read {where} ({type(exc).__name__}: {exc}); the file is truncated or not "
                        f"a CIFAR batch file, so replace it with the official one.") from None


def _member_name(name: str) -> str:
    return name[2:] if name.startswith("./") else name


def find_cifar(path: Path) -> tuple[str, Path] | None:
    """``(kind, location)`` if ``path`` is (or holds) CIFAR data: the batches folder or the archive."""
    for kind, spec in SPECS.items():
        if path.is_dir():
            for cand in (path / spec.folder, path):
                if (cand / spec.meta[0]).is_file() and (cand / spec.train[0][0]).is_file():
                    return kind, cand
            if (path / spec.archive).is_file():
                return kind, path / spec.archive
        elif path.is_file() and path.name == spec.archive:
            return kind, path
    if path.is_file() and tarfile.is_tarfile(path):
        try:  # an official archive under another name: its first member is the batches folder
            with tarfile.open(path, "r|*") as tf:
                first = next(iter(tf), None)
        except (tarfile.TarError, OSError, EOFError, zlib.error):
            return None
        top = _member_name(first.name).split("/")[0] if first is not None else ""
        for kind, spec in SPECS.items():
            if top == spec.folder:
                return kind, path
    return None


def _read_files(location: Path, spec: CifarSpec) -> dict[str, tuple[bytes, str]]:
    """Bytes of every file the variant needs, keyed by name, with a display path for messages."""
    wanted = [n for n, _ in spec.train + spec.test] + [spec.meta[0]]
    found: dict[str, tuple[bytes, str]] = {}
    if location.is_dir():
        for name in wanted:
            p = location / name
            if p.is_file():
                found[name] = (p.read_bytes(), str(p))
    else:
        try:
            with tarfile.open(location, "r|*") as tf:
                for member in tf:
                    parts = _member_name(member.name).split("/")
                    if member.isfile() and len(parts) == 2 and parts[0] == spec.folder and parts[1] in wanted:
                        f = tf.extractfile(member)
                        found[parts[1]] = (f.read() if f else b"", f"{location}:{member.name}")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise UserError(f"Could not read the archive {location} ({exc}); it is damaged or incomplete, "
                            f"so download it again.") from None
    missing = [n for n in wanted if n not in found]
    if missing:
        raise UserError(f"{spec.title} data at {location} is incomplete: {', '.join(missing)} missing; "
                        f"download {spec.archive} again.")
    return found


def _check_md5(data: bytes, expected: str, where: str) -> None:
    if hashlib.md5(data, usedforsecurity=False).hexdigest() != expected:
        logger.warning("%s does not match the official md5 %s; using it anyway", where, expected)


def _batch(entry: Any, spec: CifarSpec, where: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch dict -> uint8 (N, 3, 32, 32) images and int64 labels, shapes checked."""
    try:
        data, labels = entry[b"data"], entry[spec.labels_key]
        arr = np.asarray(data)
        lab = np.asarray(labels, dtype=np.int64)
    except Exception:
        raise UserError(f"{where} has no {b'data'!r}/{spec.labels_key!r} entries; replace it with the "
                        f"official {spec.title} file.") from None
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != 3072 or lab.shape != (arr.shape[0],):
        raise UserError(f"{where} holds data of shape {arr.shape} ({arr.dtype}) with {lab.shape} labels instead "
                        f"of N x 3072 uint8 with N labels; replace it with the official {spec.title} file.")
    if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
        raise UserError(f"{where} has labels outside 0..{num_classes - 1}; replace it with the official file.")
    # Each row is 1024 red, then 1024 green, then 1024 blue values of a 32x32 image, row-major.
    images = torch.from_numpy(np.ascontiguousarray(arr).reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(lab.copy())


def load_cifar(kind: str, location: Path) -> Splits:
    """Read a CIFAR batches folder or official archive (without extracting it) into tensors."""
    spec = SPECS[kind]
    files = _read_files(location, spec)
    meta_bytes, meta_where = files[spec.meta[0]]
    _check_md5(meta_bytes, spec.meta[1], meta_where)
    meta = load_pickle(meta_bytes, meta_where)
    try:
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[spec.names_key]]
    except Exception:
        raise UserError(f"{meta_where} has no {spec.names_key!r} list; replace it with the official file.") from None
    splits = []
    for group in (spec.train, spec.test):
        parts = []
        for name, md5 in group:
            raw, where = files[name]
            _check_md5(raw, md5, where)
            parts.append(_batch(load_pickle(raw, where), spec, where, len(classes)))
        splits.append((torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])))
    (xtr, ytr), (xte, yte) = splits
    return Splits(classes, xtr, ytr, xte, yte, [])


def download_target(kind: str, source: Path) -> Path:
    """Where a download for ``source`` goes: ``source`` itself if it names an archive, else inside it."""
    name = source.name.lower()
    if name.endswith((".tar.gz", ".tgz")):
        return source
    return source / SPECS[kind].archive


def download_cifar(kind: str, dest: Path, *, url: str | None = None, md5: str | None = None,
                   progress: bool = False, timeout: float = 60.0) -> Path:
    """Fetch the official archive to ``dest``: temp file beside it, md5 check, then ``os.replace``.

    ``url``/``md5`` default to env ``RESNETKIT_CIFAR10_URL``/``_MD5`` (or ``CIFAR100``), then the
    official values; no partial file is ever left under ``dest`` or beside it.
    """
    spec = SPECS[kind]
    url = url or os.environ.get(f"{spec.env}_URL") or spec.url
    md5 = md5 or os.environ.get(f"{spec.env}_MD5") or spec.md5
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create {dest.parent} for the {spec.title} download ({exc}); choose a "
                        f"writable location.") from None
    digest = hashlib.md5(usedforsecurity=False)

    def fetch(out: Any) -> None:
        _fetch(url, out, digest, spec, dest, progress, timeout)
        if digest.hexdigest() != md5:
            raise UserError(f"The file downloaded from {url} has md5 {digest.hexdigest()} instead of {md5}, so it "
                            f"was discarded; try again or put the official {spec.archive} at {dest}.")

    try:
        atomic_write(dest, fetch, suffix=".part")
    except OSError as exc:
        raise UserError(f"Could not write the {spec.title} download to {dest} ({exc}); free some space or "
                        f"choose another location.") from None
    logger.info("downloaded %s to %s", url, dest)
    return dest


def _fetch(url: str, out: Any, digest: Any, spec: CifarSpec, dest: Path, progress: bool, timeout: float) -> None:
    """Stream ``url`` into ``out`` and ``digest``, turning network failures into one-sentence errors."""
    bar = None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            if progress:
                bar = tqdm(total=total, unit="B", unit_scale=True, desc=spec.archive)
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise UserError(f"Could not write the {spec.title} download next to {dest} ({exc}); free "
                                    f"some space or choose another location.") from None
                if bar is not None:
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise UserError(f"Downloading {spec.title} from {url} failed with HTTP {exc.code}; download it by other "
                        f"means and put it at {dest}.") from None
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"Downloading {spec.title} failed because the network is unreachable ({reason}); "
                        f"download {url} by other means and put it at {dest}.") from None
    finally:
        if bar is not None:
            bar.close()
