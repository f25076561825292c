"""Image-folder trees and their archives: modes, resizing, archives, bad files, tree errors."""

from __future__ import annotations

import io
import logging
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetkit.data import folder
from resnetkit.data import images as image_decoding
from resnetkit.data.prepare import prepare_data
from resnetkit.errors import UserError


def solid(mode: str, value: object, size: tuple[int, int] = (8, 8)) -> Image.Image:
    return Image.new(mode, size, value)  # type: ignore[arg-type]


def save(img: Image.Image, path: Path, fmt: str | None = None, **kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **kw)
    return path


def rgb_noise(seed: int, size: tuple[int, int] = (8, 8)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def simple_tree(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per: int = 3, test: str = "test") -> Path:
    """JPEGs and PNGs in train/ and test/ (or val/), every image different."""
    k = 0
    for split, n in (("train", per), (test, 2)):
        for c in classes:
            for i in range(n):
                ext = "jpg" if i % 2 == 0 else "png"
                save(rgb_noise(k), root / split / c / f"{i:03d}.{ext}")
                k += 1
    return root


def palette_image() -> Image.Image:
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    return img


def palette_transparent() -> Image.Image:
    img = palette_image()
    img.info["transparency"] = 1
    return img


# name -> (image factory, file extension, expected RGB, tolerance)
MODES = {
    "a_rgb": (lambda: solid("RGB", (200, 100, 50)), "png", (200, 100, 50), 0),
    "b_l": (lambda: solid("L", 100), "png", (100, 100, 100), 0),
    "c_p": (palette_image, "png", (10, 200, 30), 0),
    "d_ptrans": (palette_transparent, "png", (10, 200, 30), 0),
    "e_rgba": (lambda: solid("RGBA", (50, 60, 70, 128)), "png", (50, 60, 70), 0),
    "f_la": (lambda: solid("LA", (90, 0)), "png", (90, 90, 90), 0),
    "g_i16_full": (lambda: solid("I;16", 65535), "png", (255, 255, 255), 0),
    "h_i16_77": (lambda: solid("I;16", 77 * 257), "png", (77, 77, 77), 0),  # clipping would give 255
    "i_i16_low": (lambda: solid("I;16", 300), "tif", (1, 1, 1), 0),  # clipping would give 255
    "j_i32": (lambda: solid("I", 51 * 257), "tif", (51, 51, 51), 0),
    "k_cmyk": (lambda: solid("CMYK", (255, 0, 0, 0)), "tif", (0, 255, 255), 0),
    "l_cmyk_jpeg": (lambda: solid("CMYK", (0, 255, 0, 0)), "jpg", (255, 0, 255), 3),
    "m_grey_jpeg": (lambda: solid("L", 140), "jpg", (140, 140, 140), 2),
    "n_rgb_jpeg": (lambda: solid("RGB", (20, 120, 220)), "jpg", (20, 120, 220), 3),
    "o_bilevel": (lambda: solid("1", 1), "png", (255, 255, 255), 0),
    "p_webp": (lambda: solid("RGB", (5, 250, 128)), "webp", (5, 250, 128), 4),
}


@pytest.mark.filterwarnings("error::UserWarning")  # decoding must not warn (Pillow does for some modes)
def test_every_mode_becomes_8bit_rgb(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for name, (make, ext, _, _) in MODES.items():
            save(make(), tmp_path / split / name / f"x.{ext}")
    data = prepare_data(tmp_path, workers=2)
    assert data.classes == sorted(MODES) and data.image_size == 8
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape == (len(MODES), 3, 8, 8)
    for images, labels in ((data.train_images, data.train_labels), (data.test_images, data.test_labels)):
        for img, label in zip(images, labels):
            name = data.classes[label]
            _, _, rgb, tol = MODES[name]
            diff = (img.int() - torch.tensor(rgb).view(3, 1, 1)).abs().max().item()
            assert diff <= tol, (name, img[:, 0, 0].tolist(), rgb)


def test_jpeg_fast_path_matches_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    simple_tree(tmp_path, per=4)
    data = prepare_data(tmp_path)
    jpg = tmp_path / "train" / "cat" / "000.jpg"
    ref = torch.from_numpy(np.array(Image.open(jpg).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(data.train_images[0], ref)
    monkeypatch.setattr(image_decoding, "_jpeg_op", lambda: None)  # torchvision's decoder gone: Pillow does all
    without = prepare_data(tmp_path, cache_dir=tmp_path / "c2")
    assert (without.train_images.int() - data.train_images.int()).abs().max() <= 1


def test_one_thumbnail_first_does_not_set_the_size_of_the_dataset(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for i in range(6):
            side = 5 if (split, i) == ("train", 0) else 20 + i  # train/c/000.png, the first file, is a thumbnail
            save(Image.fromarray(rng.integers(0, 255, (side, side + 3, 3), dtype=np.uint8)),
                 tmp_path / split / "c" / f"{i:03d}.png")
    data = prepare_data(tmp_path)
    assert data.image_size == 22  # the lower median of 5, 21, 22, 23, 24, 25 (was 5: the first image's)


def test_resize_shorter_side_then_center_crop(tmp_path: Path) -> None:
    # 24 wide x 16 high: red | green | blue thirds, 8 px each.
    arr = np.zeros((16, 24, 3), np.uint8)
    arr[:, :8, 0] = 255
    arr[:, 8:16, 1] = 255
    arr[:, 16:, 2] = 255
    for split in ("train", "test"):
        save(Image.fromarray(arr), tmp_path / split / "c" / "wide.png")
    native = prepare_data(tmp_path)
    assert native.image_size == 16  # default S: the images' (median) shorter side
    data = prepare_data(tmp_path, image_size=8)
    img = data.train_images[0]
    assert img.shape == (3, 8, 8)
    # Resized to 12x8, then columns 2..10 kept: red, red, green x4, blue, blue (edges blended).
    assert img[:, 4, 3].tolist() == [0, 255, 0] and img[:, 4, 4].tolist() == [0, 255, 0]
    assert img[0, 4, 0] > 200 and img[1, 4, 0] < 60 and img[2, 4, 7] > 200 and img[1, 4, 7] < 60
    ref = np.array(Image.fromarray(arr).resize((12, 8), Image.BILINEAR))[:, 2:10]
    assert (img.permute(1, 2, 0).int() - torch.from_numpy(ref).int()).abs().max() <= 1


def test_default_size_is_capped_at_224(tmp_path: Path) -> None:
    for split in ("train", "test"):
        save(rgb_noise(1, (300, 250)), tmp_path / split / "c" / "big.png")
    assert prepare_data(tmp_path).train_images.shape == (1, 3, 224, 224)


def build_archive(tree: Path, out: Path, top: str | None) -> Path:
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    name = lambda p: (f"{top}/" if top else "") + p.relative_to(tree).as_posix()  # noqa: E731
    if out.suffix == ".zip":
        with zipfile.ZipFile(out, "w") as zf:
            for p in files:
                zf.write(p, name(p))
    else:
        mode = "w:gz" if out.name.endswith((".tar.gz", ".tgz")) else "w"
        with tarfile.open(out, mode) as tf:
            for p in reversed(files):  # archive order must not matter
                tf.add(p, name(p))
    return out


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz", ".zip"])
@pytest.mark.parametrize("top", [None, "mydata"])
def test_archives_equal_the_folder(tmp_path: Path, suffix: str, top: str | None) -> None:
    tree = simple_tree(tmp_path / "tree")
    (tree / "train" / "cat" / ".DS_Store").write_bytes(b"\0junk")
    ref = prepare_data(tree)
    data = prepare_data(build_archive(tree, tmp_path / f"a{suffix}", top))
    assert data.classes == ref.classes == ["cat", "dog"]
    assert data.name == "a"
    assert torch.equal(data.train_images, ref.train_images) and torch.equal(data.test_images, ref.test_images)
    assert torch.equal(data.train_labels, ref.train_labels) and data.train_labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_tarfile_fallback_reads_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = build_archive(simple_tree(tmp_path / "tree"), tmp_path / "a.tar.gz", "top")
    fast = sorted((n, d) for n, d in folder._tar_fast(archive))
    slow = sorted((n, d) for n, d in folder._tar_slow(archive))
    assert fast == slow and len([d for _, d in fast if d is not None]) == 10

    def broken(path: Path):  # noqa: ANN202
        raise ValueError("unusual tar")
        yield  # pragma: no cover

    ref = prepare_data(archive)
    monkeypatch.setattr(folder, "_tar_fast", broken)
    assert torch.equal(prepare_data(archive, cache_dir=tmp_path / "c2").train_images, ref.train_images)


def write_bad_files(root: Path) -> list[Path]:
    good = io.BytesIO()
    rgb_noise(5, (16, 16)).save(good, "JPEG")
    bad = [root / "train" / "cat" / "empty.jpg", root / "train" / "dog" / "garbage.jpg",
           root / "train" / "dog" / "truncated.jpg", root / "test" / "cat" / "text.png"]
    bad[0].write_bytes(b"")
    bad[1].write_bytes(os.urandom(300))
    bad[2].write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    bad[3].write_text("this is not an image\n")
    return bad


def test_bad_files_fail_together_or_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    simple_tree(tmp_path)
    bad = write_bad_files(tmp_path)
    (tmp_path / "train" / "cat" / "Thumbs.db").write_bytes(b"junk")
    (tmp_path / "train" / "cat" / ".hidden.jpg").write_bytes(b"junk")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING, logger="resnetkit.data.folder"), pytest.raises(UserError) as info:
        prepare_data(tmp_path)
    msg = str(info.value)
    assert msg.startswith("4 image file(s)") and str(bad[0]) in msg and "skip_bad_images=True" in msg
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert all(str(p) in logged for p in bad) and "Thumbs.db" not in logged and ".hidden" not in logged
    data = prepare_data(tmp_path, skip_bad_images=True)
    assert sorted(data.skipped) == sorted(str(p) for p in bad)
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1] and data.test_labels.tolist() == [0, 0, 1, 1]


def test_bad_files_in_an_archive_are_named_inside_it(tmp_path: Path) -> None:
    simple_tree(tmp_path / "tree")
    write_bad_files(tmp_path / "tree")
    archive = build_archive(tmp_path / "tree", tmp_path / "b.zip", "top")
    data = prepare_data(archive, skip_bad_images=True)
    assert f"{archive}:top/train/cat/empty.jpg" in data.skipped and len(data.skipped) == 4


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bombs_are_bad_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    simple_tree(tmp_path)
    save(rgb_noise(0, (40, 40)), tmp_path / "train" / "cat" / "warn.png")  # 1600 px: over the limit
    save(rgb_noise(0, (50, 50)), tmp_path / "train" / "dog" / "error.jpg")  # 2500 px: over twice the limit
    save(rgb_noise(0, (60, 60)), tmp_path / "test" / "dog" / "error.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = prepare_data(tmp_path, skip_bad_images=True, image_size=8)
    assert sorted(Path(p).name for p in data.skipped) == ["error.jpg", "error.png", "warn.png"]
    assert len(data.train_labels) == 6
    with pytest.raises(UserError, match="3 image file"):
        prepare_data(tmp_path, image_size=8)


def test_a_flat_tree_of_class_folders_trains_with_a_carved_test_split(tmp_path: Path) -> None:
    tree = simple_tree(tmp_path / "t", classes=("cat", "dog", "owl"), per=10)
    flat = tree / "train"  # cat/, dog/, owl/ directly: torchvision's ImageFolder layout
    data = prepare_data(flat, test_split=0.2)
    assert data.classes == ["cat", "dog", "owl"]
    assert len(data.train_labels) == 24 and len(data.test_labels) == 6  # 2 of each class's 10 held out
    assert sorted(data.test_labels.tolist()) == [0, 0, 1, 1, 2, 2]
    with zipfile.ZipFile(tmp_path / "flat.zip", "w") as z:  # an archive of the folder, with its top folder
        for f in sorted(p for p in flat.rglob("*") if p.is_file()):
            z.write(f, "photos/" + f.relative_to(flat).as_posix())
    zipped = prepare_data(tmp_path / "flat.zip", test_split=0.2)
    assert zipped.classes == data.classes and torch.equal(zipped.test_labels, data.test_labels)


def test_tree_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        prepare_data(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="neither a folder nor"):
        prepare_data(tmp_path / "file.txt")

    no_test = simple_tree(tmp_path / "a")
    for p in sorted((no_test / "test").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (no_test / "test").rmdir()
    with pytest.raises(UserError, match="No test/ or val/ split"):
        prepare_data(no_test)
    with pytest.raises(UserError, match="holds class folders without a test split; pass test_split=0.1"):
        prepare_data(simple_tree(tmp_path / "b") / "test")  # a flat tree of class folders
    save(rgb_noise(0), tmp_path / "deep" / "cat" / "more" / "x.png")
    save(rgb_noise(1), tmp_path / "deep" / "dog" / "y.png")
    with pytest.raises(UserError, match="No train/ split"):  # neither train/ nor only class folders of images
        prepare_data(tmp_path / "deep", test_split=0.5)

    empty = simple_tree(tmp_path / "c")
    (empty / "train" / "zebra").mkdir()
    (empty / "test" / "zebra").mkdir()
    save(rgb_noise(1), empty / "test" / "zebra" / "z.png")
    with pytest.raises(UserError, match=r"class folder .*train/zebra has no images"):
        prepare_data(empty)
    with pytest.raises(UserError, match=r"class folder .*:top/train/zebra has no images"):
        prepare_data(build_archive_with_dirs(empty, tmp_path / "c.tar"))

    mismatch = simple_tree(tmp_path / "d")
    save(rgb_noise(1), mismatch / "train" / "bird" / "b.png")
    save(rgb_noise(1), mismatch / "test" / "fish" / "f.png")
    with pytest.raises(UserError, match=r"only in train: \['bird'\]; only in test: \['fish'\]"):
        prepare_data(mismatch)


def build_archive_with_dirs(tree: Path, out: Path) -> Path:
    with tarfile.open(out, "w") as tf:
        tf.add(tree, "top")  # recursive: folder entries included, so empty folders survive
    return out


def test_val_split_is_accepted(tmp_path: Path) -> None:
    data = prepare_data(simple_tree(tmp_path, test="val"))
    assert data.test_images.shape == (4, 3, 8, 8) and data.classes == ["cat", "dog"]


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_damaged_archive_is_a_clear_error(tmp_path: Path, suffix: str) -> None:
    archive = build_archive(simple_tree(tmp_path / "tree"), tmp_path / f"a{suffix}", "top")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(UserError, match=r"(damaged or incomplete|neither a folder nor)"):
        prepare_data(archive)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_fast_tar_reader_handles_long_names_in_every_format(tmp_path: Path, fmt: int) -> None:
    deep = "d" * 60 + "/" + "e" * 60  # > 100 characters: prefix field, GNU 'L' or pax 'x' records
    tree = simple_tree(tmp_path / "tree", classes=("cat", deep if fmt != tarfile.USTAR_FORMAT else "e" * 90))
    out = tmp_path / "a.tar"
    with tarfile.open(out, "w", format=fmt) as tf:
        tf.add(tree, "top" + "/x" * 30)
    fast = sorted(folder._tar_fast(out), key=lambda e: e[0])
    assert fast == sorted(folder._tar_slow(out), key=lambda e: e[0])
    assert max(len(name) for name, _ in fast) > 100
