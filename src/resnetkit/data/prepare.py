"""``prepare_data``: any supported source -> ``ImageData``, decoded once and cached as uint8 tensors.

Sources: CIFAR-10/100 in the official python format (folder or archive, optionally downloaded),
image-folder trees and their archives, and ``"synthetic"``/``"synthetic:N"``. The kind is detected
from the source unless ``dataset`` names it. Everything except synthetic data goes through the
cache in ``cache.py``; mean and std are computed once from the training split.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError
from . import cache, cifar, folder, synthetic
from .dataset import ImageData
from .holdout import check_fraction

logger = logging.getLogger(__name__)

KINDS = ("cifar10", "cifar100", "folder", "synthetic")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip")


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, float, float],
                                                                    tuple[float, float, float]]:
    """Per-channel mean and std (population) of uint8 ``(N, 3, H, W)`` images in [0, 1] units.

    Exact: per-channel histograms of the 256 byte values, accumulated in chunks, then float64 sums.
    """
    counts = torch.zeros(3, 256, dtype=torch.float64)
    for part in images.split(chunk):
        for c in range(3):
            counts[c] += torch.bincount(part[:, c].reshape(-1), minlength=256).to(torch.float64)
    total = counts.sum(1)
    if not bool((total > 0).all()):
        raise UserError("The training split has no images left to compute statistics from; add readable images.")
    values = torch.arange(256, dtype=torch.float64) / 255.0
    mean = (counts * values).sum(1) / total
    var = ((counts * values.square()).sum(1) / total - mean.square()).clamp_min(0)
    m, s = mean.tolist(), var.sqrt().tolist()
    return (m[0], m[1], m[2]), (s[0], s[1], s[2])


def resize_square(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """Resize square uint8 images to ``size`` (bilinear with antialias, as Pillow's BILINEAR)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return torch.cat([F.interpolate(p, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                      for p in images.split(chunk)]) if len(images) else images.new_empty((0, 3, size, size))


def _guess_cifar(path: Path) -> str:
    name = path.name.lower().replace("-", "").replace("_", "")
    return "cifar100" if "cifar100" in name else "cifar10"


def _resolve(source: str | Path, dataset: str | None, download: bool, progress: bool) -> tuple[str, Path | int]:
    """``(kind, location)``: a path for files, the training-set size for synthetic data."""
    if dataset is not None and dataset not in KINDS:
        raise UserError(f"Unknown dataset kind {dataset!r}; use one of {', '.join(KINDS)}.")
    if dataset == "synthetic" or (dataset is None and isinstance(source, str)):
        n = synthetic.parse_synthetic(str(source))
        if n is not None:
            return "synthetic", n
        if dataset == "synthetic":
            raise UserError(f"Synthetic source {source!r} is malformed; write 'synthetic' or 'synthetic:N'.")
    path = Path(source).expanduser()
    found = cifar.find_cifar(path) if path.exists() else None
    if dataset in ("cifar10", "cifar100"):
        if found is not None and found[0] != dataset:
            raise UserError(f"{path} holds {cifar.SPECS[found[0]].title}, not {cifar.SPECS[dataset].title}; "
                            f"pass <<dataset={found[0]}>> or point at the other data.")
        if found is not None:
            return found
        if download:
            return dataset, _download(dataset, path, progress)
        spec = cifar.SPECS[dataset]
        raise UserError(f"No {spec.title} data found at {path}; pass <<download=True>> to fetch it, or put "
                        f"{spec.archive} or its {spec.folder}/ folder there.")
    if dataset is None and found is not None:
        return found
    if dataset is None and download and not _holds_tree(path):
        kind = _guess_cifar(path)
        logger.info("no data at %s: downloading %s there", path, cifar.SPECS[kind].title)
        return kind, _download(kind, path, progress)
    if not path.exists():
        raise UserError(f"Data source {path} does not exist; check the path, use 'synthetic' for generated data, "
                        f"or pass <<download=True>> to fetch CIFAR-10/100 there.")
    return "folder", path


def _download(kind: str, path: Path, progress: bool) -> Path:
    """Fetch CIFAR into ``path``, never over an existing file (nothing the user has is lost)."""
    target = cifar.download_target(kind, path)
    if target.exists():
        raise UserError(f"{target} exists but is not {cifar.SPECS[kind].title} data, so it was not overwritten; "
                        f"move it away or choose another data path.")
    return cifar.download_cifar(kind, target, progress=progress)


def _holds_tree(path: Path) -> bool:
    """Whether ``path`` could be an image-folder source (an archive, or train/ at most one level down)."""
    if path.is_file():
        return True
    if not path.is_dir():
        return False
    return (path / "train").is_dir() or any((child / "train").is_dir() for child in path.iterdir())


def _name(kind: str, path: Path) -> str:
    if kind != "folder":
        return kind
    name = path.name
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _assemble(name: str, splits: cache.Splits, fp: str) -> ImageData:
    mean, std = channel_stats(splits.train_images)
    return ImageData(name=name, classes=list(splits.classes), train_images=splits.train_images,
                     train_labels=splits.train_labels, test_images=splits.test_images,
                     test_labels=splits.test_labels, mean=mean, std=std, fingerprint=fp,
                     skipped=list(splits.skipped))


def prepare_data(source: str | Path, *, dataset: str | None = None, image_size: int | None = None,
                 cache_dir: str | Path | None = None, skip_bad_images: bool = False,
                 download: bool = False, workers: int | None = None, progress: bool = False,
                 test_split: float | None = None, test_split_seed: int = 0) -> ImageData:
    """Turn ``source`` into ``ImageData`` (uint8 tensors + labels + mean/std), via the cache.

    ``dataset`` forces the kind (one of ``KINDS``); ``image_size`` resizes to S x S (default: 32 for
    CIFAR and synthetic, the training images' median shorter side capped at 224 for folders); ``workers`` is
    the number of decoding threads (default ``os.cpu_count()``). With ``download=True``, missing
    CIFAR data is fetched into ``source`` (a folder, or the archive path itself); the kind is
    ``dataset``, else CIFAR-100 if the path's name says so, else CIFAR-10. ``test_split`` (a
    fraction, image folders with only ``train/``) carves a seeded, stratified test split from the
    training images with ``test_split_seed``; the cached result is the same for the same values.
    """
    if image_size is not None and not 1 <= image_size <= 4096:
        raise UserError(f"image_size {image_size} is out of range; use a size between 1 and 4096 pixels.")
    if workers is not None and workers < 1:
        raise UserError(f"workers={workers} is invalid; use 1 or more decoding workers.")
    if test_split is not None:
        check_fraction(test_split)
    kind, location = _resolve(source, dataset, download, progress)
    if test_split is not None and kind != "folder":
        raise UserError(f"{source} is {kind} data with its own test split; <<test_split>> is for image folders "
                        f"that have only train/, so drop it.")
    if isinstance(location, int):
        size = image_size or 32
        splits = synthetic.make_synthetic(location, image_size=size)
        return _assemble("synthetic", splits, f"synthetic-v{cache.FORMAT_VERSION}-{location}-{size}-seed0")
    options: dict = {"image_size": image_size, "skip_bad_images": skip_bad_images if kind == "folder" else False}
    if test_split is not None:  # only then, so the caches of trees with a test/ split keep their keys
        options.update(test_split=test_split, test_split_seed=test_split_seed)
    name = _name(kind, location)
    key = cache.cache_key(kind, location, options)
    fp = cache.fingerprint(kind, location, options)
    path = cache.cache_file(cache.cache_root(cache_dir), kind, name, key)
    cached = cache.load_cached(path, fp)
    if cached is not None:
        return cached
    start = time.perf_counter()
    if kind == "folder":
        splits = folder.load_folder(location, image_size=image_size, skip_bad_images=skip_bad_images,
                                    workers=workers, progress=progress, test_split=test_split,
                                    test_split_seed=test_split_seed)
    else:
        splits = cifar.load_cifar(kind, location)
        if image_size is not None:
            splits = splits._replace(train_images=resize_square(splits.train_images, image_size),
                                     test_images=resize_square(splits.test_images, image_size))
    data = _assemble(name, splits, fp)
    logger.info("prepared %s from %s in %.1fs: %d train, %d test images, %d classes", name, location,
                time.perf_counter() - start, len(data.train_labels), len(data.test_labels), data.num_classes)
    cache.save_cached(path, data)
    return data
