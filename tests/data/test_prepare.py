"""prepare_data: statistics, the uint8 cache (reuse, invalidation, corruption), dispatch, real data."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetkit.data import cache, cifar, folder
from resnetkit.data.prepare import channel_stats, prepare_data
from resnetkit.errors import UserError


def tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def mini_cifar10(root: Path) -> Path:
    folder_ = root / "cifar-10-batches-py"
    folder_.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        entry = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        (folder_ / name).write_bytes(pickle.dumps(entry, protocol=2))
    (folder_ / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return root


def forbid(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{name} was called although the cache should have been used")

    monkeypatch.setattr(module, name, boom)


def count_calls(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(module, name)

    def wrapped(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return calls


def cache_files() -> list[Path]:
    return sorted(Path(os.environ["RESNETKIT_CACHE"]).iterdir())


def test_channel_stats_are_exact() -> None:
    x = torch.randint(0, 256, (300, 3, 7, 5), dtype=torch.uint8)
    x[:, 2] = 255  # constant channel: std exactly 0
    mean, std = channel_stats(x, chunk=64)
    f = x.double() / 255
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), f.mean((0, 2, 3)), atol=1e-12)
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), f.std((0, 2, 3), unbiased=False), atol=1e-12)
    assert mean[2] == 1.0 and std[2] == 0.0


def test_second_call_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    caplog: pytest.LogCaptureFixture) -> None:
    src = tree(tmp_path / "t")
    first = prepare_data(src)
    assert len(cache_files()) == 1 and not any(p.name.startswith(".") for p in cache_files())
    forbid(monkeypatch, folder, "load_folder")
    with caplog.at_level(logging.INFO, logger="resnetkit.data.cache"):
        second = prepare_data(src)
    assert any("using cache" in r.getMessage() for r in caplog.records)
    assert torch.equal(first.train_images, second.train_images) and first.classes == second.classes
    assert first.mean == second.mean and first.fingerprint == second.fingerprint
    raw = torch.load(cache_files()[0], map_location="cpu", weights_only=True)  # a plain, safe payload
    assert torch.equal(raw["test_labels"], first.test_labels)


def test_cache_is_rebuilt_when_the_source_or_options_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tree(tmp_path / "t")
    calls = count_calls(monkeypatch, folder, "load_folder")
    prepare_data(src)
    prepare_data(src)
    assert len(calls) == 1
    img = src / "train" / "a" / "0.png"
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched
    prepare_data(src)
    assert len(calls) == 2
    Image.new("RGB", (12, 12), (1, 2, 3)).save(src / "train" / "a" / "new.png")  # added
    assert prepare_data(src).train_images.shape[0] == 7 and len(calls) == 3
    Image.new("RGB", (12, 12), (9, 9, 9)).save(img)  # modified
    assert prepare_data(src).train_images[0, :, 0, 0].tolist() == [9, 9, 9] and len(calls) == 4
    assert prepare_data(src, image_size=6).image_size == 6 and len(calls) == 5
    assert prepare_data(src).image_size == 12 and len(calls) == 5  # the 12 px cache is still there


def test_corrupt_cache_is_rebuilt_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    src = tree(tmp_path / "t")
    ref = prepare_data(src)
    (path,) = cache_files()
    path.write_bytes(path.read_bytes()[:1000])
    calls = count_calls(monkeypatch, folder, "load_folder")
    with caplog.at_level(logging.WARNING, logger="resnetkit.data.cache"):
        again = prepare_data(src)
    assert len(calls) == 1 and torch.equal(again.train_images, ref.train_images)
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    torch.save({"version": 999}, path)  # a cache from another version is rebuilt too
    prepare_data(src)
    assert len(calls) == 2
    assert torch.load(path, weights_only=True)["version"] == cache.FORMAT_VERSION


def test_cache_dir_argument_and_failed_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    src = tree(tmp_path / "t")
    prepare_data(src, cache_dir=tmp_path / "mine")
    assert len(list((tmp_path / "mine").glob("folder-t-*.pt"))) == 1 and cache_files() == []
    monkeypatch.delenv("RESNETKIT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root() == tmp_path / "home" / ".cache" / "resnetkit"

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.torch, "save", full_disk)
    with caplog.at_level(logging.WARNING, logger="resnetkit.data.cache"):
        data = prepare_data(src, cache_dir=tmp_path / "full")
    assert data.train_images.shape == (6, 3, 12, 12)  # the run goes on without a cache
    assert list((tmp_path / "full").iterdir()) == []  # and no temporary file is left behind
    assert any("could not write cache" in r.getMessage() for r in caplog.records)


def test_cifar_is_cached_and_resized_on_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = mini_cifar10(tmp_path / "c")
    first = prepare_data(src)
    assert first.classes[3] == "c3" and first.train_images.shape == (20, 3, 32, 32)
    with monkeypatch.context() as m:
        forbid(m, cifar, "load_cifar")
        assert torch.equal(prepare_data(src).train_images, first.train_images)
    big = prepare_data(src, image_size=40)
    assert big.train_images.shape == (20, 3, 40, 40) and big.test_images.shape == (4, 3, 40, 40)
    assert abs(big.mean[0] - first.mean[0]) < 0.01  # resizing keeps the colour statistics


def test_dispatch_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="Unknown dataset kind 'imagenet'"):
        prepare_data(tmp_path, dataset="imagenet")
    with pytest.raises(UserError, match="image_size 0 is out of range"):
        prepare_data("synthetic", image_size=0)
    with pytest.raises(UserError, match="workers=0"):
        prepare_data("synthetic", workers=0)
    with pytest.raises(UserError, match="No train/ split"):
        prepare_data(mini_cifar10(tmp_path / "c"), dataset="folder")  # forced kind wins over detection


def test_real_cifar10_jpeg_archive(cifar_jpeg: Path, session_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = prepare_data(cifar_jpeg, cache_dir=session_cache)
    assert data.train_images.shape == (50000, 3, 32, 32) and data.test_images.shape == (10000, 3, 32, 32)
    assert data.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert data.train_labels.bincount().tolist() == [5000] * 10
    assert data.test_labels.bincount().tolist() == [1000] * 10
    assert data.skipped == [] and data.name == "cifar10-jpeg"
    for got, want in zip(data.mean, (0.4914, 0.4822, 0.4465)):  # CIFAR-10's published training mean
        assert abs(got - want) < 0.02
    # Labels belong to their images: nearest class mean on 8x8 thumbnails beats chance (0.1) clearly.
    thumbs = lambda x: torch.nn.functional.avg_pool2d(x.float(), 4).flatten(1)  # noqa: E731
    means = torch.stack([thumbs(data.train_images[data.train_labels == c][:1000]).mean(0) for c in range(10)])
    acc = (torch.cdist(thumbs(data.test_images), means).argmin(1) == data.test_labels).float().mean().item()
    assert acc > 0.2, acc
    forbid(monkeypatch, folder, "load_folder")
    again = prepare_data(cifar_jpeg, cache_dir=session_cache)
    assert torch.equal(again.test_images, data.test_images)
