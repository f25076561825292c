"""CIFAR-10/100 official python format: layout, channel order, safe unpickling, md5, download."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import logging
import os
import pickle
import socket
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from resnetkit.data import cifar
from resnetkit.data.prepare import prepare_data
from resnetkit.errors import UserError


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes what Python 2's cPickle wrote for the official files: str/bytes as BINSTRING."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_str(self, obj: str | bytes) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = _save_str
    dispatch[bytes] = _save_str


def dumps(obj: object, style: str) -> bytes:
    if style == "py2":
        buf = io.BytesIO()
        Py2Pickler(buf, protocol=2).dump(obj)
        py3_name, py2_name = b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n"
        out = buf.getvalue().replace(py3_name, py2_name)
        assert py3_name not in out and b"_codecs" not in out  # really the Python 2 form
        return out
    return pickle.dumps(obj, protocol=int(style))


def make_data(n: int, seed: int, num_classes: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    data[0, 0 * 1024 + 0 * 32 + 1] = 10  # image 0, row 0, column 1: R=10, G=20, B=30
    data[0, 1 * 1024 + 0 * 32 + 1] = 20
    data[0, 2 * 1024 + 0 * 32 + 1] = 30
    data[0, 0 * 1024 + 2 * 32 + 5] = 7  # row 2, column 5: R=7
    return data, [int(v) for v in rng.integers(0, num_classes, size=n)]


CLASSES10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: Path, style: str = "py2", n: int = 6) -> dict[str, tuple[np.ndarray, list[int]]]:
    """The cifar-10-batches-py layout with n images per batch; returns what was written."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data, labels = make_data(n, i, 10)
        entry = {b"batch_label": f"batch {i}".encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img_{j}.png".encode() for j in range(n)]}
        (folder / name).write_bytes(dumps(entry, style))
        written[name] = (data, labels)
    meta = {b"num_cases_per_batch": n, b"label_names": [c.encode() for c in CLASSES10], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(dumps(meta, style))
    return written


def write_cifar100(root: Path, style: str = "py2") -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for i, (name, n) in enumerate((("train", 8), ("test", 4))):
        data, labels = make_data(n, 10 + i, 100)
        entry = {b"filenames": [b"x.png"] * n, b"batch_label": b"b", b"fine_labels": labels,
                 b"coarse_labels": [v // 5 for v in labels], b"data": data}
        (folder / name).write_bytes(dumps(entry, style))
        written[name] = (data, labels)
    meta = {b"fine_label_names": [f"fine{k:02d}".encode() for k in range(100)],
            b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)]}
    (folder / "meta").write_bytes(dumps(meta, style))
    return written


def tar_gz(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return archive


def expected(written: dict, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.concatenate([written[n][0] for n in names])
    labels = sum((written[n][1] for n in names), [])
    return torch.from_numpy(data.reshape(-1, 3, 32, 32)), torch.tensor(labels)


TRAIN10 = [f"data_batch_{k}" for k in range(1, 6)]


@pytest.mark.parametrize("style", ["py2", "2", "4", "5"])
def test_cifar10_folder_pixels_labels_and_channel_order(tmp_path: Path, style: str) -> None:
    written = write_cifar10(tmp_path, style)
    data = prepare_data(tmp_path)
    assert data.name == "cifar10" and data.classes == CLASSES10
    assert data.train_images.shape == (30, 3, 32, 32) and data.test_images.shape == (6, 3, 32, 32)
    assert data.train_images[0, :, 0, 1].tolist() == [10, 20, 30]
    assert data.train_images[0, 0, 2, 5].item() == 7
    xtr, ytr = expected(written, TRAIN10)
    assert torch.equal(data.train_images, xtr) and torch.equal(data.train_labels, ytr)
    xte, yte = expected(written, ["test_batch"])
    assert torch.equal(data.test_images, xte) and torch.equal(data.test_labels, yte)
    assert data.train_labels.dtype == torch.int64


def test_cifar10_batches_folder_itself_and_archive_match(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "d")
    from_dir = prepare_data(tmp_path / "d")
    from_batches = prepare_data(tmp_path / "d" / "cifar-10-batches-py")
    archive = tar_gz(tmp_path / "d" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    from_tar = prepare_data(archive)
    renamed = archive.rename(tmp_path / "download.tgz")  # detected by content, not name
    from_renamed = prepare_data(renamed)
    for other in (from_batches, from_tar, from_renamed):
        assert other.classes == from_dir.classes
        assert torch.equal(other.train_images, from_dir.train_images)
        assert torch.equal(other.test_labels, from_dir.test_labels)


def test_cifar100_folder_and_archive(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path / "d")
    data = prepare_data(tmp_path / "d")
    assert data.name == "cifar100" and len(data.classes) == 100 and data.classes[7] == "fine07"
    xtr, ytr = expected(written, ["train"])
    assert torch.equal(data.train_images, xtr) and torch.equal(data.train_labels, ytr)
    assert data.train_images[0, :, 0, 1].tolist() == [10, 20, 30]
    archive = tar_gz(tmp_path / "d" / "cifar-100-python", tmp_path / "cifar-100-python.tar.gz")
    from_tar = prepare_data(archive, dataset="cifar100")
    assert torch.equal(from_tar.test_images, data.test_images)
    with pytest.raises(UserError, match="holds CIFAR-100, not CIFAR-10"):
        prepare_data(archive, dataset="cifar10")


def test_md5_mismatch_warns_and_official_md5_does_not(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10(tmp_path)
    with caplog.at_level(logging.WARNING, logger="resnetkit.data.cifar"):
        prepare_data(tmp_path)
    warned = [r.getMessage() for r in caplog.records if "md5" in r.getMessage()]
    assert len(warned) == 7 and any("data_batch_3" in m for m in warned)
    caplog.clear()
    folder = tmp_path / "cifar-10-batches-py"
    spec = cifar.SPECS["cifar10"]
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    fixed = dataclasses.replace(spec, train=tuple((n, md5[n]) for n, _ in spec.train),
                                test=(("test_batch", md5["test_batch"]),), meta=("batches.meta", md5["batches.meta"]))
    monkeypatch.setitem(cifar.SPECS, "cifar10", fixed)
    with caplog.at_level(logging.WARNING, logger="resnetkit.data.cifar"):
        prepare_data(tmp_path, cache_dir=tmp_path / "other-cache")
    assert not [r for r in caplog.records if "md5" in r.getMessage()]


class Evil:
    """Unpickling this runs ``func(*args)``: what a malicious batch file would do."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self):  # noqa: ANN204
        return (self.func, self.args)


@pytest.mark.parametrize("how", ["open", "system"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, how: str) -> None:
    def payload(marker: Path) -> Evil:
        return Evil(open, str(marker), "w") if how == "open" else Evil(os.system, f"touch '{marker}'")

    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(payload(proof), protocol=2))  # the payload is real: plain pickle runs it
    assert proof.exists()
    write_cifar10(tmp_path / "d")
    marker = tmp_path / "pwned"
    target = tmp_path / "d" / "cifar-10-batches-py" / "data_batch_2"
    target.write_bytes(pickle.dumps({b"data": payload(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(UserError, match=r"Refusing to load .*data_batch_2: it references (io\.open|posix\.system)"):
        prepare_data(tmp_path / "d")
    assert not marker.exists()


def test_truncated_and_misshapen_batches_name_the_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "a")
    batch = tmp_path / "a" / "cifar-10-batches-py" / "data_batch_4"
    batch.write_bytes(batch.read_bytes()[:5000])
    with pytest.raises(UserError, match=r"Could not read .*data_batch_4.*truncated"):
        prepare_data(tmp_path / "a")
    write_cifar10(tmp_path / "b")
    bad = {b"data": np.zeros((6, 3000), np.uint8), b"labels": [0] * 6}
    (tmp_path / "b" / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(UserError, match=r"test_batch holds data of shape \(6, 3000\)"):
        prepare_data(tmp_path / "b")


def test_missing_cifar_without_download_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="No CIFAR-10 data found .*download=True"):
        prepare_data(tmp_path, dataset="cifar10")


# -- download against a loopback server --------------------------------------------------------

@pytest.fixture()
def served(tmp_path: Path):  # noqa: ANN201
    """An http.server on 127.0.0.1 serving a fixture cifar-10-python.tar.gz; yields (url, md5)."""
    write_cifar10(tmp_path / "src")
    archive = tar_gz(tmp_path / "src" / "cifar-10-batches-py", tmp_path / "src" / "cifar-10-python.tar.gz")
    payload = archive.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz", hashlib.md5(payload).hexdigest()
    server.shutdown()
    server.server_close()


def test_download_via_env_then_load(tmp_path: Path, served: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    url, md5 = served
    monkeypatch.setenv("RESNETKIT_CIFAR10_URL", url)
    monkeypatch.setenv("RESNETKIT_CIFAR10_MD5", md5)
    target = tmp_path / "data"
    target.mkdir()
    (target / "README").write_text("not a dataset")  # a folder without train/ still gets the download
    data = prepare_data(target, download=True, progress=True)
    assert data.name == "cifar10" and data.train_images.shape == (30, 3, 32, 32)
    assert sorted(p.name for p in target.iterdir()) == ["README", "cifar-10-python.tar.gz"]
    assert hashlib.md5((target / "cifar-10-python.tar.gz").read_bytes()).hexdigest() == md5


def test_download_with_wrong_md5_leaves_nothing(tmp_path: Path, served: tuple[str, str]) -> None:
    url, _ = served
    dest = tmp_path / "dl" / "cifar-10-python.tar.gz"
    with pytest.raises(UserError, match="has md5 .* instead of 0+, so it was discarded"):
        cifar.download_cifar("cifar10", dest, url=url, md5="0" * 32)
    assert list((tmp_path / "dl").iterdir()) == []


def test_refused_connection_is_one_clear_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar-100-python.tar.gz"
    monkeypatch.setenv("RESNETKIT_CIFAR100_URL", url)
    with pytest.raises(UserError) as info:
        prepare_data(tmp_path / "c100", dataset="cifar100", download=True)
    msg = str(info.value)
    assert "network is unreachable" in msg and url in msg
    assert str(tmp_path / "c100" / "cifar-100-python.tar.gz") in msg
    assert ". " not in msg and msg.endswith(".")
    assert list((tmp_path / "c100").iterdir()) == []


def test_truncated_official_archive_is_a_clear_error(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "d")
    archive = tar_gz(tmp_path / "d" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(UserError, match=r"cifar-10-python\.tar\.gz .*(damaged or incomplete|incomplete)"):
        prepare_data(archive)


def test_download_never_overwrites_an_existing_file(tmp_path: Path) -> None:
    other = tmp_path / "mine.tar.gz"
    other.write_bytes(b"my own archive")
    with pytest.raises(UserError, match="exists but is not CIFAR-10 data, so it was not overwritten"):
        prepare_data(other, dataset="cifar10", download=True)
    assert other.read_bytes() == b"my own archive"
