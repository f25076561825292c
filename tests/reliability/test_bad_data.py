"""Bad data at the training level: every broken input is named in one clear error before training
starts, with no run file written; odd but valid images train; CIFAR files with a wrong md5 warn,
truncated ones fail naming the file."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import resnetkit
from resnetkit.checkpoint import peek
from resnetkit.cli import main
from resnetkit.errors import UserError

from ._helpers import BASE, error_lines, run_files

SMALL = {**BASE, "image_size": 8, "batch_size": 8, "epochs": 1}


def noise(seed: int, size: tuple[int, int] = (8, 8)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def tree(root: Path, per_class: int = 8) -> Path:
    """train/{cat,dog}: ``per_class`` good PNGs each; test/{cat,dog}: 2 each."""
    k = 0
    for split, n in (("train", per_class), ("test", 2)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noise(k).save(root / split / c / f"{i:02d}.png")
                k += 1
    return root


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    noise(99, (32, 32)).save(buf, "JPEG")
    return buf.getvalue()


def _write(rel: str, data: bytes | Image.Image) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, Image.Image):
            data.save(path)
        else:
            path.write_bytes(data)
        return path
    return make


def _bomb(root: Path) -> Path:
    path = root / "train" / "dog" / "bomb.png"
    noise(5, (60, 60)).save(path)  # 3600 pixels: over twice the limit the test sets
    return path


def _empty_class(root: Path) -> Path:
    (root / "train" / "zebra").mkdir()
    (root / "test" / "zebra").mkdir()
    noise(1).save(root / "test" / "zebra" / "z.png")
    return root / "train" / "zebra"


BROKEN = {  # name -> (make it in a good tree, returning what the error must name; words of the error)
    "zero-byte file": (_write("train/cat/empty.jpg", b""), "cannot be read"),
    "garbage bytes": (_write("train/dog/noise.png", os.urandom(500)), "cannot be read"),
    "truncated JPEG": (_write("test/cat/cut.jpg", jpeg_bytes()[:300]), "cannot be read"),
    "text named .jpg": (_write("train/cat/notes.jpg", b"these are not pixels\n"), "cannot be read"),
    "decompression bomb": (_bomb, "decompression bomb"),
    "empty class folder": (_empty_class, "has no images"),
    "class only in train": (_write("train/bird/b.png", noise(3)), "only in train: ['bird']"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_data_fails_before_training_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              case: str) -> None:
    root = tree(tmp_path / "data")
    make, words = BROKEN[case]
    named = make(root)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 60x60 image is a "bomb"; 8x8 ones are fine
    out = tmp_path / "run"
    with pytest.raises(UserError) as info:
        resnetkit.train(**{**SMALL, "data": str(root)}, out=str(out))
    msg = str(info.value)
    assert words in msg and (str(named) in msg or case == "class only in train"), msg
    assert run_files(out) == []  # no config.json, no checkpoint, no metrics


def test_the_cli_names_the_bad_file_and_the_same_out_works_once_it_is_fixed(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tree(tmp_path / "data")
    bad = _write("train/cat/empty.jpg", b"")(root)
    out = tmp_path / "run"
    args = ["train", "--data", str(root), "--image-size", "8", "--batch-size", "8", "--epochs", "1", "--width-mult",
            "0.5", "--device", "cpu", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and str(bad) in err and "--skip-bad-images" in err and "Traceback" not in err
    assert run_files(out) == []
    bad.unlink()
    assert main(args) == 0  # nothing was recorded as a run, so no --overwrite is needed
    assert peek(out / "last.pt")["global_step"] == 2


def test_skip_bad_images_trains_on_the_rest_and_reports_them(tmp_path: Path) -> None:
    root = tree(tmp_path / "data")
    for case in ("zero-byte file", "garbage bytes", "text named .jpg"):
        BROKEN[case][0](root)
    out = tmp_path / "run"
    resnetkit.train(**{**SMALL, "data": str(root)}, skip_bad_images=True, out=str(out))
    assert json.loads((out / "config.json").read_text())["skipped_images"] == 3
    assert peek(out / "last.pt")["global_step"] == 2  # the 16 good images: 2 batches of 8


def odd_images() -> dict[str, Image.Image]:
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    return {"one_pixel.png": noise(1, (1, 1)), "grey.png": Image.new("L", (8, 8), 100),
            "rgba.png": Image.new("RGBA", (8, 8), (50, 60, 70, 128)), "palette.png": palette,
            "deep16.png": Image.new("I;16", (8, 8), 77 * 257), "large.png": noise(2, (300, 200))}


def test_odd_but_valid_images_train(tmp_path: Path) -> None:
    root = tree(tmp_path / "data", per_class=5)
    for i, (name, img) in enumerate(odd_images().items()):
        img.save(root / "train" / ("cat", "dog")[i % 2] / name)
    buf = io.BytesIO()
    noise(7).save(buf, "PNG")
    (root / "train" / "dog" / "png_named.jpg").write_bytes(buf.getvalue())  # wrong extension, good image
    (root / "train" / "dog" / "readme.txt").write_text("not an image extension: ignored")
    out = tmp_path / "run"
    resnetkit.train(**{**SMALL, "data": str(root), "batch_size": 17}, out=str(out))  # needs all 17 images
    assert json.loads((out / "config.json").read_text())["skipped_images"] == 0
    assert peek(out / "last.pt")["global_step"] == 1  # 10 plain + 6 odd + 1 misnamed = one batch of 17
    assert peek(out / "last.pt")["classes"] == ["cat", "dog"]


# ------------------------------------------------------------------ CIFAR batch files

def write_cifar10(root: Path, n: int = 8) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        entry = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n)], b"batch_label": name.encode()}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_cases_per_batch": n}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def test_cifar_with_a_wrong_md5_warns_and_trains(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = write_cifar10(tmp_path / "data")
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="resnetkit.data.cifar"):
        resnetkit.train(**{**SMALL, "data": str(folder)}, out=str(out))
    warned = [r.getMessage() for r in caplog.records if "does not match the official md5" in r.getMessage()]
    assert len(warned) == 7 and any(str(folder / "data_batch_3") in w for w in warned)
    assert peek(out / "last.pt")["global_step"] == 5  # 5 batches x 8 images = 40, batch 8


def test_a_truncated_cifar_batch_fails_naming_it(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path / "data")
    bad = folder / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:1000])
    out = tmp_path / "run"
    with pytest.raises(UserError) as info:
        resnetkit.train(**{**SMALL, "data": str(folder)}, out=str(out))
    assert str(info.value).startswith(f"Could not read {bad} (") and "truncated" in str(info.value)
    assert run_files(out) == []
