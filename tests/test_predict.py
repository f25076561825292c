"""resnetkit.predict and ``resnetkit predict``: every input kind, agreement with evaluation, bad files."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnetkit
from resnetkit.checkpoint import FORMAT, FORMAT_VERSION, atomic_save
from resnetkit.cli import main
from resnetkit.data.loader import DeviceLoader
from resnetkit.models import create_model
from resnetkit.predict import Prediction, draw_grid, expand_inputs, predict, predict_paths
from resnetkit.training.config import resolve_config

CLASSES = [f"c{i}" for i in range(10)]
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def make_checkpoint(path: Path, model_name: str = "resnet20", seed: int = 0) -> Path:
    """A resnetkit checkpoint with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=len(CLASSES))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # eval mode must use these, not batch statistics
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    cfg = resolve_config(None, model=model_name, data="synthetic:64").to_dict()
    atomic_save({"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.state_dict(),
                 "model_name": model_name, "model_kwargs": dict(model.spec["kwargs"]), "optimizer": {},
                 "epoch": 1, "step_in_epoch": 0, "global_step": 1, "rng": {}, "best": {}, "history": [],
                 "config": cfg, "classes": CLASSES, "mean": list(MEAN), "std": list(STD), "image_size": 32,
                 "in_channels": 3, "data_fingerprint": "", "world_size": 1, "versions": {}}, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def model(ckpt: Path) -> torch.nn.Module:
    return resnetkit.load_checkpoint(ckpt)


def _rgb(seed: int, h: int = 40, w: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _probs(preds: list[Prediction]) -> torch.Tensor:
    """(N, C) probabilities in class order, from predictions made with top_k = all classes."""
    out = torch.zeros(len(preds), len(CLASSES))
    for i, p in enumerate(preds):
        for label, q in p.topk:
            out[i, CLASSES.index(label)] = q
    return out


def _mode_images(seed: int = 1) -> dict[str, tuple[Image.Image, np.ndarray]]:
    """One image per Pillow mode, with the 8-bit RGB array it stands for."""
    rgb = _rgb(seed)
    grey = rgb[..., 0]
    alpha = np.random.default_rng(seed + 1).integers(0, 256, grey.shape, dtype=np.uint8)
    pal = Image.fromarray(rgb).quantize(16)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    return {
        "RGB": (Image.fromarray(rgb), rgb),
        "L": (Image.fromarray(grey), np.repeat(grey[..., None], 3, 2)),
        "P": (pal, np.array(pal.convert("RGB"))),
        "RGBA": (Image.fromarray(np.dstack([rgb, alpha])), rgb),  # alpha dropped, as in training
        "LA": (Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)]), np.repeat(grey[..., None], 3, 2)),
        "I;16": (Image.fromarray(grey.astype(np.uint16) * 257), np.repeat(grey[..., None], 3, 2)),
        "CMYK": (cmyk, np.array(cmyk.convert("RGB"))),
    }


def _expected(model: torch.nn.Module, arrays: list[np.ndarray]) -> torch.Tensor:
    x = [torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in arrays]
    return _probs(predict(model, x, top_k=10))


def test_every_pillow_mode_becomes_the_right_rgb(model: torch.nn.Module) -> None:
    images = _mode_images()
    assert {m: im.mode for m, (im, _) in images.items()} == {m: m for m in images}
    got = _probs(predict(model, [im for im, _ in images.values()], top_k=10))
    want = _expected(model, [a for _, a in images.values()])
    assert torch.equal(got, want)
    # 16-bit is scaled by 255/65535: clipping it to 255 would make a white image instead
    white = _expected(model, [np.full((40, 48, 3), 255, np.uint8)])
    assert not torch.allclose(got[list(images).index("I;16")], white[0])


def test_every_mode_from_files_and_a_corrupt_file_does_not_stop_the_rest(model: torch.nn.Module,
                                                                         tmp_path: Path) -> None:
    images = _mode_images(seed=3)
    paths, arrays = [], []
    for mode, (im, arr) in images.items():
        p = tmp_path / f"{mode.replace(';', '_')}.{'tif' if mode == 'CMYK' else 'png'}"
        im.save(p)
        paths.append(p)
        arrays.append(arr)
    Image.fromarray(_rgb(5)).save(tmp_path / "photo.jpg", quality=95)  # decoded by libjpeg as in training
    jpeg_pixels = np.array(Image.open(tmp_path / "photo.jpg").convert("RGB"))
    (tmp_path / "garbage.png").write_bytes(b"this is not an image" * 10)
    (tmp_path / "empty.jpg").write_bytes(b"")
    good_png = (tmp_path / "RGB.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    order = paths[:3] + [tmp_path / "garbage.png"] + paths[3:] + [tmp_path / "photo.jpg", tmp_path / "empty.jpg",
                                                                  tmp_path / "truncated.png"]
    preds, failures = predict_paths(model, order, top_k=10, batch_size=4)
    assert [p.source for p in preds] == [str(p) for p in paths + [tmp_path / "photo.jpg"]]
    assert sorted(Path(f).name for f, _ in failures) == ["empty.jpg", "garbage.png", "truncated.png"]
    assert all(reason for _, reason in failures)
    want = _expected(model, arrays + [jpeg_pixels])
    assert torch.allclose(_probs(preds), want, atol=1e-6)


def test_probabilities_are_a_sorted_distribution(model: torch.nn.Module) -> None:
    x = torch.from_numpy(np.stack([_rgb(s, 32, 32) for s in range(6)])).permute(0, 3, 1, 2)
    preds = predict(model, x, top_k=10)
    for p in preds:
        probs = [q for _, q in p.topk]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert probs == sorted(probs, reverse=True)
        assert (p.label, p.prob) == p.topk[0] and CLASSES[p.index] == p.label
    top3 = predict(model, x, top_k=3)
    assert [len(p.topk) for p in top3] == [3] * 6
    assert [p.topk for p in top3] == [p.topk[:3] for p in preds]
    assert len(predict(model, x, top_k=50)[0].topk) == 10  # clamped to the class count


def test_agrees_with_the_training_loader_and_eval_mode_model(model: torch.nn.Module) -> None:
    images = torch.from_numpy(np.stack([_rgb(s, 32, 32) for s in range(20)])).permute(0, 3, 1, 2).contiguous()
    loader = DeviceLoader(images, torch.zeros(20, dtype=torch.int64), batch_size=8, device=torch.device("cpu"),
                          train=False, mean=MEAN, std=STD)
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _ in loader])
    want = torch.softmax(logits, 1)
    got = _probs(predict(model, images, top_k=10, batch_size=7))
    assert torch.equal(got.argmax(1), want.argmax(1))
    assert (got - want).abs().max() < 1e-5
    # flip TTA averages the logits of the image and its mirror, as evaluation does
    with torch.no_grad():
        flipped = torch.cat([model(torch.flip(x, dims=[3])) for x, _ in loader])
    tta = _probs(predict(model, images, top_k=10, tta=True))
    assert (tta - torch.softmax(0.5 * (logits + flipped), 1)).abs().max() < 1e-5
    assert (tta - got).abs().max() > 1e-3


def test_agrees_with_resnetkit_evaluate_on_an_image_folder(ckpt: Path, model: torch.nn.Module,
                                                           tmp_path: Path) -> None:
    root = tmp_path / "folder"
    for split, n in (("train", 1), ("test", 4)):
        for ci, c in enumerate(CLASSES):
            (root / split / c).mkdir(parents=True)
            for j in range(n):  # other sizes than 32: resize + centre crop must match training's
                Image.fromarray(_rgb(100 * ci + j + 7 * n, 36 + j, 44)).save(root / split / c / f"{j}.png")
    metrics = resnetkit.evaluate(ckpt, data=str(root), device="cpu", precision="fp32")
    preds, failures = predict_paths(model, expand_inputs([root / "test"]))
    assert failures == [] and len(preds) == metrics["count"] == 40
    truth = [CLASSES.index(Path(p.source).parent.name) for p in preds]
    confusion = torch.zeros(10, 10, dtype=torch.int64)
    for t, p in zip(truth, preds):
        confusion[t, p.index] += 1
    assert confusion.tolist() == metrics["confusion"]
    assert sum(t == p.index for t, p in zip(truth, preds)) / 40 == pytest.approx(metrics["top1"])


def test_tensor_inputs(model: torch.nn.Module) -> None:
    u8 = torch.from_numpy(np.stack([_rgb(s, 48, 40) for s in range(3)])).permute(0, 3, 1, 2).contiguous()
    base = _probs(predict(model, u8, top_k=10))
    square = u8[..., 8:40, 4:36]  # at the model's size, a [0, 1] float image is the same image
    assert (_probs(predict(model, square.float() / 255, top_k=10)) - _probs(predict(model, square, top_k=10))
            ).abs().max() < 1e-5
    # resized in float (not rounded to uint8 in between): close, not equal
    assert (_probs(predict(model, u8.float() / 255, top_k=10)) - base).abs().max() < 1e-2
    assert (_probs(predict(model, u8[1], top_k=10))[0] - base[1]).abs().max() < 1e-6  # one (3, H, W) image
    assert [p.source for p in predict(model, u8)] == ["tensor[0]", "tensor[1]", "tensor[2]"]
    assert (_probs(predict(model, u8, top_k=10, batch_size=1)) - base).abs().max() < 1e-6
    with pytest.raises(resnetkit.UserError, match=r"\[0, 1\]"):
        predict(model, (u8.float() - 128) / 64)  # already normalised: refused, not silently wrong
    with pytest.raises(resnetkit.UserError, match="shape"):
        predict(model, torch.zeros(2, 4, 32, 32, dtype=torch.uint8))
    with pytest.raises(resnetkit.UserError, match="load_checkpoint"):
        predict(create_model("resnet20"), u8)


def test_predict_keeps_the_model_mode(model: torch.nn.Module) -> None:
    model.train()
    try:
        a = predict(model, torch.zeros(1, 3, 32, 32, dtype=torch.uint8), top_k=10)
        assert model.training
    finally:
        model.eval()
    b = predict(model, torch.zeros(1, 3, 32, 32, dtype=torch.uint8), top_k=10)
    assert (_probs(a) - _probs(b)).abs().max() < 1e-6


def test_expand_inputs(tmp_path: Path) -> None:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "a" / ".hidden").mkdir()
    for rel in ("a/1.png", "a/deep/2.JPG", "a/.hidden/3.png", "a/notes.txt", "b.jpeg", "c.png"):
        (tmp_path / rel).write_bytes(b"x")
    got = expand_inputs([tmp_path / "a", str(tmp_path / "*.png"), tmp_path / "a" / "notes.txt",
                         tmp_path / "a" / "1.png"])
    assert [p.relative_to(tmp_path).as_posix() for p in got] == ["a/1.png", "a/deep/2.JPG", "c.png", "a/notes.txt"]
    with pytest.raises(resnetkit.UserError, match="missing.png does not exist"):
        expand_inputs([tmp_path / "missing.png"])
    with pytest.raises(resnetkit.UserError, match="matches no files"):
        expand_inputs([str(tmp_path / "*.gif")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(resnetkit.UserError, match="contains no image files"):
        expand_inputs([tmp_path / "empty"])


def test_draw_grid(model: torch.nn.Module, tmp_path: Path) -> None:
    images = [Image.fromarray(_rgb(s)) for s in range(5)]
    preds = predict(model, images)
    out = draw_grid(preds, images, tmp_path / "sub" / "grid.png", size=32)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (5 * 180, 200)
        assert np.asarray(im.convert("L")).std() > 10  # images were drawn, not a blank page


# ------------------------------------------------------------------------------ command line
def _cli_files(tmp_path: Path) -> list[Path]:
    files = []
    for s in range(3):
        files.append(tmp_path / f"img{s}.png")
        Image.fromarray(_rgb(s)).save(files[-1])
    return files


def test_cli_formats(ckpt: Path, model: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    files = _cli_files(tmp_path)
    want = predict(model, files, top_k=3)
    assert main(["predict", str(ckpt), str(tmp_path / "*.png"), "--format", "json", "--top-k", "3",
                 "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["failures"] == []
    assert [(p["source"], p["label"], len(p["topk"])) for p in out["predictions"]] == [
        (str(f), w.label, 3) for f, w in zip(files, want)]
    assert [p["prob"] for p in out["predictions"]] == pytest.approx([w.prob for w in want], abs=1e-6)
    assert main(["predict", str(ckpt), str(tmp_path), "--format", "csv", "--top-k", "2",
                 "--grid", str(tmp_path / "g.png")]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0] == "path,label,index,prob,top1_label,top1_prob,top2_label,top2_prob"
    assert [r.split(",")[:2] for r in rows[1:]] == [[str(f), w.label] for f, w in zip(files, want)]
    assert (tmp_path / "g.png").stat().st_size > 1000
    assert main(["predict", str(ckpt), str(files[0])]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["path", "label", "prob"] and len(table) == 2
    assert table[1].split()[:3] == [str(files[0]), want[0].label, f"{want[0].prob:.3f}"]


def test_cli_reports_bad_files_and_exits_1(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    files = _cli_files(tmp_path)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(["predict", str(ckpt), str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert [line.split()[0] for line in captured.out.splitlines()[1:]] == [str(f) for f in files]
    assert f"cannot read {bad}:" in captured.err and "1 of 4 file(s)" in captured.err
    assert "Traceback" not in captured.err


def test_cli_reports_a_missing_file_and_still_classifies_the_rest(ckpt: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    files = _cli_files(tmp_path)
    gone = tmp_path / "gone.png"
    assert main(["predict", str(ckpt), str(gone), str(files[0])]) == 1  # was exit 2, nothing classified
    captured = capsys.readouterr()
    assert [line.split()[0] for line in captured.out.splitlines()[1:]] == [str(files[0])]
    assert f"cannot read {gone}: does not exist" in captured.err and "1 of 2 file(s)" in captured.err
    assert main(["predict", str(ckpt), str(gone), str(tmp_path / "also-gone.png")]) == 2  # nothing to classify
    assert f"{gone} does not exist" in capsys.readouterr().err


class _RunsCode:
    """Unpickling this object would create ``marker`` (the attack a weights-only load stops)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: D105
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("how", ["api", "cli"])
def test_a_checkpoint_whose_pickle_runs_code_is_refused(how: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "format_version": 1, "model": _RunsCode(marker)}, evil)
    (tmp_path / "x.png").write_bytes(b"")
    if how == "api":
        with pytest.raises(resnetkit.UserError, match="refusing to load"):
            resnetkit.load_checkpoint(evil)
    else:
        assert main(["predict", str(evil), str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert "refusing to load" in err and str(evil) in err and "Traceback" not in err
    assert not marker.exists()
    # the payload is live: an unrestricted unpickler would have run it
    with zipfile.ZipFile(evil) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    pickle.loads(data)
    assert marker.exists()


def test_cli_checkpoint_errors_exit_2(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    img = _cli_files(tmp_path)[0]
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:5000])
    for path in (tmp_path / "missing.pt", garbage, truncated):
        assert main(["predict", str(path), str(img)]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["predict", str(ckpt), str(tmp_path / "nothing-*.png")]) == 2
    assert "matches no files" in capsys.readouterr().err


def test_state_dict_bytes_are_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "bare.pt"
    buf = io.BytesIO()
    torch.save(create_model("resnet20").state_dict(), buf)
    path.write_bytes(buf.getvalue())
    with pytest.raises(resnetkit.UserError, match="not a resnetkit checkpoint"):
        resnetkit.load_checkpoint(path)
