"""Image-folder trees (``train/<class>/*``, ``test/`` or ``val/``), as folders or archives -> uint8.

A tree with only ``train/``, or only class folders (``<class>/*``, torchvision's ``ImageFolder``
layout), needs ``test_split`` (a fraction): the test split is then carved from it, seeded and
stratified (``holdout.py``), before any image is decoded.

Archives (.tar, .tar.gz/.tgz, .zip) are read member by member into memory, never extracted. Images
are decoded by a thread pool: JPEGs with torchvision's libjpeg-turbo op (which releases the GIL
and gives the same pixels as Pillow on the real CIFAR JPEGs, at ~3x less CPU), everything else
with Pillow. All modes become 8-bit RGB; other sizes are resized (shorter side to S, bilinear with
antialias, as Pillow) and centre-cropped. Pillow's ``MAX_IMAGE_PIXELS`` limit applies to all.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import os
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..errors import UserError
from .cache import Splits
from .holdout import carve_test_split
from .images import Ref, decode_images, image_extensions, image_size

logger = logging.getLogger(__name__)

MAX_DEFAULT_SIZE = 224  # default S is the images' median shorter side, capped here (ImageNet size)
SIZE_SAMPLE = 25  # images whose sizes give the default S
CHUNK = 256  # images per decode task: few enough tasks to keep pool overhead negligible
_JUNK = {"thumbs.db", "desktop.ini", "__macosx"}



def _ignored(rel: str) -> bool:
    """Hidden files and folders, macOS/Windows litter."""
    return any(p.startswith(".") or p.lower() in _JUNK for p in rel.split("/"))


def _norm(name: str) -> str:
    """Archive member name without leading ``./`` or slashes."""
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


def _tar_fast(path: Path) -> Iterator[tuple[str, bytes | None]]:
    """(name, data) per file and (name, None) per folder of a plain/gz/bz2/xz tar, streamed.

    ``tarfile`` spends ~60 us of Python per member, which dominates 60k tiny JPEGs; this reads
    ustar/GNU/pax headers directly. It raises ``ValueError`` on features it does not handle (the
    caller then falls back to ``tarfile``) and ``EOFError``/``ReadError`` on damage, which
    ``tarfile`` would silently treat as the end of the archive.
    """
    with open(path, "rb") as raw:
        magic = raw.read(6)
        raw.seek(0)
        f: Any = (gzip.GzipFile(fileobj=raw) if magic[:2] == b"\x1f\x8b" else bz2.BZ2File(raw)
                  if magic[:3] == b"BZh" else lzma.LZMAFile(raw) if magic == b"\xfd7zXZ\x00" else raw)
        longname, pax = None, {}
        while True:
            hdr = f.read(512)
            if len(hdr) < 512 or hdr == bytes(512):
                if len(hdr) == 512:
                    return
                raise EOFError("the tar data ends in the middle of a header")
            unsigned = sum(hdr) - sum(hdr[148:156]) + 256
            signed = unsigned - 256 * sum(1 for b in hdr if b > 127)  # some old tars sum signed bytes
            if int(hdr[148:156].split(b"\0")[0].strip() or b"0", 8) not in (unsigned, signed):
                raise tarfile.ReadError("a tar header has a bad checksum")
            size = int(hdr[124:136].split(b"\0")[0].strip() or b"0", 8)
            data = f.read(size)
            f.read(-size % 512)
            if len(data) < size:
                raise EOFError("the tar data ends in the middle of a file")
            kind = hdr[156:157]
            if kind in (b"L", b"x", b"g"):
                if kind == b"L":
                    longname = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
                elif kind == b"x":
                    for rec in data.decode("utf-8", "surrogateescape").split("\n"):
                        key, _, value = rec.partition(" ")[2].partition("=")
                        pax[key] = value
                    if "size" in pax:
                        raise ValueError("pax size override")
                continue
            name = hdr[:100].split(b"\0")[0].decode("utf-8", "surrogateescape")
            if hdr[257:265] == b"ustar\x0000" and hdr[345] != 0:  # POSIX prefix field
                name = hdr[345:500].split(b"\0")[0].decode("utf-8", "surrogateescape") + "/" + name
            name = _norm(pax.get("path") or longname or name)
            longname, pax = None, {}
            if kind in (b"0", b"\0", b"7"):
                yield name, data
            elif kind == b"5":
                yield name, None
            elif kind not in (b"1", b"2", b"3", b"4", b"6"):  # links and devices are skipped, as tarfile's isfile()
                raise ValueError(f"tar member type {kind!r}")


def _tar_slow(path: Path) -> Iterator[tuple[str, bytes | None]]:
    with tarfile.open(path, "r|*") as tf:
        for member in tf:
            if member.isdir():
                yield _norm(member.name), None
            elif member.isfile():
                f = tf.extractfile(member)
                yield _norm(member.name), f.read() if f else b""


def _archive_entries(source: Path) -> Iterator[tuple[str, bytes | None]]:
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            for info in zf.infolist():
                yield _norm(info.filename), None if info.is_dir() else zf.read(info)
    elif tarfile.is_tarfile(source):
        try:
            yield from list(_tar_fast(source))
        except ValueError as exc:
            logger.debug("fast tar reader cannot handle %s (%s); using tarfile", source, exc)
            yield from _tar_slow(source)
    else:
        raise UserError(f"{source} is neither a folder nor a .tar/.tar.gz/.tgz/.zip archive of images; "
                        f"point the data source at an image folder tree or such an archive.")


def _list_source(source: Path) -> tuple[dict[str, Ref], set[str]]:
    """Every candidate image (relative path -> bytes or file) and every folder of the source."""
    exts = image_extensions()  # every format Pillow can read: any of their extensions is an image
    files: dict[str, Ref] = {}
    dirs: set[str] = set()

    def keep(rel: str) -> bool:
        return not _ignored(rel) and os.path.splitext(rel)[1].lower() in exts

    if source.is_dir():
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames[:] = sorted(d for d in dirnames if not _ignored(d))
            base = Path(dirpath).relative_to(source).as_posix()
            prefix = "" if base == "." else base + "/"
            dirs.update(prefix + d for d in dirnames)
            files.update((prefix + f, Path(dirpath) / f) for f in filenames if keep(prefix + f))
        return files, dirs
    try:
        for rel, data in _archive_entries(source):
            if data is None:
                if not _ignored(rel):
                    dirs.add(rel)
            elif keep(rel):
                files[rel] = data
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise UserError(f"Could not read the archive {source} ({exc}); it is damaged or incomplete, so "
                        f"replace it.") from None
    for rel in files:  # archives need not list folders; implied ones count too
        parts = rel.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return files, dirs


def _find_root(source: Path, dirs: set[str], test_split: float | None = None,
               files: Iterable[str] = ()) -> tuple[str, str, str | None]:
    """The prefix of the tree (``""`` or one top-level folder), its training split and its test split.

    The training split is ``"train"``, or ``""`` for a flat tree of class folders (``<class>/*``,
    torchvision's ``ImageFolder`` layout), which needs ``test_split``. The test split is ``None``
    when there is none and ``test_split`` asks to carve one.
    """
    tops = {d.split("/")[0] for d in dirs}
    roots = [""] if "train" in dirs else [f"{t}/" for t in tops if f"{t}/train" in dirs]
    if len(roots) != 1:
        flat = _flat_root(dirs, files, tops)
        if flat is not None and test_split is not None:
            return flat, "", None
        if flat is not None:
            raise UserError(f"{source} holds class folders without a test split; pass <<test_split=0.1>> to hold out "
                            f"10% of each class as the test split (seeded), or arrange it as train/<class>/ and "
                            f"test/<class>/.")
        raise UserError(f"No train/ split found in {source}; it must hold train/<class>/ images and test/<class>/ "
                        f"(or val/<class>/), directly or under one top-level folder.")
    root = roots[0]
    for split in ("test", "val"):
        if root + split in dirs:
            if test_split is not None:
                raise UserError(f"{source} already has a {split}/ split, so <<test_split>> has nothing to do; drop "
                                f"it to evaluate on {root}{split}/.")
            return root, "train", split
    if test_split is not None:
        return root, "train", None
    raise UserError(f"No test/ or val/ split found in {source}; pass <<test_split=0.1>> to hold out 10% of "
                    f"{root}train/ (seeded, per class), or add test/<class>/ folders next to it.")


def _flat_root(dirs: set[str], files: Iterable[str], tops: set[str]) -> str | None:
    """``""`` or ``"<top>/"`` where a tree is only class folders of images (no deeper folders), else ``None``."""
    for prefix in ["", *(f"{t}/" for t in tops if len(tops) == 1)]:
        classes = {d[len(prefix):] for d in dirs if d.startswith(prefix) and d != prefix.rstrip("/")
                   and "/" not in d[len(prefix):]}
        deeper = [d for d in dirs if d.startswith(prefix) and d[len(prefix):].count("/") >= 1]
        direct = [f for f in files if f.startswith(prefix) and f[len(prefix):].count("/") == 1]
        if classes and not deeper and direct:
            return prefix
    return None


def _collect(source: Path, files: dict[str, Ref], dirs: set[str], root: str, test: str | None,
             skip_empty: bool = False, train_split: str = "train") -> tuple[list[str], list[list[tuple[str, int]]]]:
    """Sorted class names and, per split, sorted (relative path, label) pairs; checks the tree.

    With ``skip_empty`` (``skip_bad_images``) a class folder without images is left out with a
    warning instead of failing: a class with no training images is dropped from both splits.
    """
    per_split: list[dict[str, list[str]]] = []
    for split in (train_split, test) if test is not None else (train_split,):
        base = f"{root}{split}/" if split else root
        classes: dict[str, list[str]] = {d[len(base):]: [] for d in dirs
                                         if d.startswith(base) and "/" not in d[len(base):]}
        for rel in files:
            if rel.startswith(base) and "/" in rel[len(base):]:
                classes[rel[len(base):].split("/")[0]].append(rel)
        for name, members in sorted(classes.items()):
            if not members:
                if not skip_empty:
                    raise UserError(f"The class folder {_name(source, base + name)} has no images; add images to "
                                    f"it, remove it, or pass <<skip_bad_images=True>> to leave it out.")
                logger.warning("skipping the empty class folder %s", _name(source, base + name))
                del classes[name]
        per_split.append(classes)
    if test is None:  # carved later, from the training files of every class
        per_split.append({name: [] for name in per_split[0]})
    if skip_empty:
        for name in sorted(set(per_split[1]) - set(per_split[0])):
            logger.warning("skipping the class %s: it has test images but no training images", name)
            del per_split[1][name]
        for name in sorted(set(per_split[0]) - set(per_split[1])):
            per_split[1][name] = []  # test images only in other classes: its accuracy is undefined
    train, tst = set(per_split[0]), set(per_split[1])
    if not train:
        raise UserError(f"{source} has no class folders under {root}{train_split}{'/' if train_split else ''}; "
                        f"put images in train/<class>/.")
    if train != tst:
        raise UserError(f"The train and {test} splits of {source} have different classes (only in train: "
                        f"{sorted(train - tst) or 'none'}; only in {test}: {sorted(tst - train) or 'none'}); "
                        f"give both splits the same class folders.")
    classes = sorted(train)
    index = {c: i for i, c in enumerate(classes)}
    return classes, [sorted((rel, index[c]) for c, rels in split.items() for rel in rels) for split in per_split]


def _default_size(refs: list[Ref]) -> int:
    """The median shorter side of up to ``SIZE_SAMPLE`` readable images spread over ``refs``, capped.

    A median, not the first image, so one thumbnail (or one huge photo) does not set the size of
    the whole dataset; a folder of one size gets that size.
    """
    step = max(1, len(refs) // SIZE_SAMPLE)
    sides: list[int] = []
    for ref in refs[::step]:
        try:
            data = ref.read_bytes() if isinstance(ref, Path) else ref
            sides.append(min(image_size(data)))
        except Exception:  # a bad file is reported with the others later
            continue
        if len(sides) == SIZE_SAMPLE:
            break
    if not sides:
        return MAX_DEFAULT_SIZE
    sides.sort()
    size = min(sides[(len(sides) - 1) // 2], MAX_DEFAULT_SIZE)  # the lower median: a size the data has
    if sides[0] != sides[-1]:
        logger.info("images of shorter sides %d..%d px: all resized to %dx%d (the median, capped at %d; "
                    "--image-size chooses another)", sides[0], sides[-1], size, size, MAX_DEFAULT_SIZE)
    return size


def _name(source: Path, rel: str) -> str:
    return str(source / rel) if source.is_dir() else f"{source}:{rel}"


def load_folder(source: Path, *, image_size: int | None = None, skip_bad_images: bool = False,
                workers: int | None = None, progress: bool = False, test_split: float | None = None,
                test_split_seed: int = 0) -> Splits:
    """Decode an image-folder tree or archive; bad files fail together, or are skipped on request.

    ``test_split`` (a fraction) carves the test split from ``train/`` when the tree has no
    ``test/`` or ``val/`` (and is refused when it has one); see ``holdout.py``.
    """
    files, dirs = _list_source(source)
    root, train_split, test = _find_root(source, dirs, test_split, files)
    classes, (train, tst) = _collect(source, files, dirs, root, test, skip_empty=skip_bad_images,
                                     train_split=train_split)
    if test is None and test_split is not None:
        train, tst = carve_test_split(train, test_split, test_split_seed)
        logger.info("held out %d of %d training images of %s as the test split (fraction %g, seed %d)",
                    len(tst), len(train) + len(tst), source, test_split, test_split_seed)
    entries = train + tst
    refs = [files.pop(rel) for rel, _ in entries]
    size = image_size or _default_size(refs[:len(train)])
    n = len(entries)
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    logger.info("decoding %d images from %s at %dx%d", n, source, size, size)

    def run(idx: range) -> tuple[int, list[tuple[int, str]]]:
        bads = []
        for i, result in zip(idx, decode_images([refs[i] for i in idx], size)):
            if isinstance(result, str):
                bads.append((i, result))
            else:
                images[i] = result
        return len(idx), bads

    bad: list[tuple[int, str]] = []
    bar = None
    if progress:
        bar = tqdm(total=n, unit="img", desc=f"decoding {source.name}")
    try:
        with ThreadPoolExecutor(max(1, workers or os.cpu_count() or 1)) as pool:
            for count, bads in pool.map(run, [range(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]):
                bad.extend(bads)
                if bar is not None:
                    bar.update(count)
    finally:
        if bar is not None:
            bar.close()
    refs.clear()  # the encoded bytes are no longer needed
    labels = torch.tensor([label for _, label in entries], dtype=torch.int64)
    skipped = [_name(source, entries[i][0]) for i, _ in bad]
    for path, (_, reason) in zip(skipped, bad):
        logger.warning("bad image %s: %s", path, reason)
    keep = torch.ones(n, dtype=torch.bool)
    if bad:
        if not skip_bad_images:
            first = "; ".join(f"{p} ({r})" for p, (_, r) in list(zip(skipped, bad))[:3])
            more = "; ..." if len(bad) > 3 else ""
            raise UserError(f"{len(bad)} image file(s) in {source} cannot be read ({first}{more}); fix or remove "
                            f"them, or pass <<skip_bad_images=True>> to skip them.")
        logger.warning("skipped %d unreadable image files from %s", len(bad), source)
        keep[[i for i, _ in bad]] = False
    cut = len(train)
    if not bad:
        return Splits(classes, images[:cut], labels[:cut], images[cut:], labels[cut:], [])
    return Splits(classes, images[:cut][keep[:cut]], labels[:cut][keep[:cut]],
                  images[cut:][keep[cut:]], labels[cut:][keep[cut:]], skipped)
