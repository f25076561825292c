"""Grad-CAM: the default layer of every family, maps that point at the object, the CLI, the extra."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnetkit
from resnetkit.cli import main
from resnetkit.data.augment import normalize
from resnetkit.data.synthetic import make_synthetic
from resnetkit.errors import UserError
from resnetkit.gradcam import default_layer, explain_images, grad_cam, write_explanations
from resnetkit.models import create_model

# one model per registered family (at a quarter width: the module tree is the same, the test cheap),
# and the stage Grad-CAM should use by default
FAMILIES = {"resnet18": "layer4", "resnet18_cifar": "layer4", "plain18": "layer4", "plain18_cifar": "layer4",
            "plain20": "layer3", "resnext50_32x4d": "layer4", "wide_resnet50_2": "layer4", "resnet20": "layer3",
            "preact_resnet18": "layer4", "wrn16_4": "layer3", "resnet9": "layer3",
            "resnet_cpu": "layers"}  # its stages sit in one Sequential: the map is at the last stage's output


def _as_checkpoint_model(name: str, size: int) -> torch.nn.Module:
    narrow = {} if name == "resnet_cpu" else {"width_mult": 0.25}  # resnet_cpu has fixed widths (and is small)
    model = create_model(name, num_classes=10, **narrow).eval()
    model.classes, model.mean, model.std, model.image_size = [f"c{i}" for i in range(10)], (0.5,) * 3, (0.25,) * 3, size
    return model


def test_every_family_registered_is_covered() -> None:
    from resnetkit.models.registry import model_info

    families = {model_info(n).family for n in resnetkit.list_models()}
    assert families == {model_info(n).family for n in FAMILIES}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_default_layer_and_batched_maps_for_every_family(name: str) -> None:
    size = 64 if create_model(name).default_input_size[-1] == 224 else 32
    model = _as_checkpoint_model(name, size)
    assert default_layer(model) == FAMILIES[name]
    imgs = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8)
    out = explain_images(model, imgs, batch_size=2)  # two batches: 2 + 1
    assert len(out) == 3
    for e in out:
        assert e.cam.shape == (size, size) and e.cam.dtype == np.float32
        assert 0.0 <= e.cam.min() and e.cam.max() <= 1.0 + 1e-6
        assert e.target == e.index and 0.0 < e.prob <= 1.0


@pytest.fixture(scope="module")
def cam_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ResNet-20 (half width, 16x16 images) trained briefly on the synthetic shapes: a coloured shape at a
    random place over a random background."""
    out = tmp_path_factory.mktemp("cam") / "run"
    r = resnetkit.train("resnet20", "synthetic:3000", epochs=4, batch_size=32, lr=0.05, warmup_epochs=0.5,
                        image_size=16, model_kwargs={"width_mult": 0.5}, eval_every=0, device="cpu",
                        precision="fp32", out=str(out))
    assert r.test_top1 > 0.6  # it has learned the shapes (chance: 0.1)
    return out


CORNERS = ((0, 0), (0, 16), (16, 0), (16, 16))  # top-left, top-right, bottom-left, bottom-right


def _recognised_objects(model: torch.nn.Module, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Unseen 16x16 synthetic images that the model classifies correctly, and their labels."""
    s = make_synthetic(10, num_test=80, seed=5, image_size=16)
    with torch.no_grad():
        ok = model(normalize(s.test_images, model.mean, model.std)).argmax(1) == s.test_labels
    assert int(ok.sum()) >= n
    return s.test_images[ok][:n], s.test_labels[ok][:n]


def _canvas(objects: torch.Tensor, corner: int) -> torch.Tensor:
    """Each object pasted into one corner of a blank (mid-grey) 32x32 canvas, at its own scale."""
    r, c = CORNERS[corner]
    canvas = torch.full((len(objects), 3, 32, 32), 128, dtype=torch.uint8)
    canvas[:, :, r:r + 16, c:c + 16] = objects
    return canvas


def test_map_mass_sits_on_the_object_in_its_corner(cam_run: Path) -> None:
    model = resnetkit.load_checkpoint(cam_run / "last.pt")
    layer = model.get_submodule(default_layer(model))
    objects, labels = _recognised_objects(model)
    shares, hits = [], []
    for corner in range(4):
        cam = grad_cam(model, normalize(_canvas(objects, corner), model.mean, model.std), labels, layer).numpy()
        quarters = np.stack([cam[:, r:r + 16, c:c + 16].sum((1, 2)) for r, c in CORNERS], axis=1)
        shares += list(quarters[:, corner] / quarters.sum(1))
        hits += list(quarters.argmax(1) == corner)
    # the object's quarter is a quarter of the canvas: a map that ignored the object would give 0.25
    assert np.median(shares) > 0.5, np.round(shares, 2)
    # chance is 0.25; measured 0.73 with 2 threads and 0.95-1.0 with 1 (the briefly trained model differs)
    assert np.mean(hits) >= 0.6, hits


def test_maps_for_two_target_classes_differ(cam_run: Path) -> None:
    model = resnetkit.load_checkpoint(cam_run / "last.pt")
    objects, _ = _recognised_objects(model, 4)
    model.image_size = 32  # explain the canvases as they are (the network is fully convolutional)
    a = explain_images(model, list(_canvas(objects, 0)), target_class="disk")
    b = explain_images(model, list(_canvas(objects, 0)), target_class=3)
    assert all(x.target_label == "disk" and y.target_label == "cross" for x, y in zip(a, b))
    assert all(x.cam.shape == (32, 32) for x in a)
    diff = [float(np.abs(x.cam - y.cam).mean()) for x, y in zip(a, b)]
    assert min(diff) > 0.02, diff
    assert all(x.prob == pytest.approx(y.prob) for x, y in zip(a, b))  # the prediction does not depend on it


def test_cli_writes_png_and_npy_per_image(cam_run: Path, tmp_path: Path, capsys) -> None:
    model = resnetkit.load_checkpoint(cam_run / "last.pt")
    files = []
    for i, x in enumerate(_canvas(_recognised_objects(model, 2)[0], 3)):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(x.permute(1, 2, 0).numpy()).save(files[-1])
    out = tmp_path / "cam"
    assert main(["explain", str(cam_run / "last.pt"), *map(str, files), "--target-class", "ring",
                 "--layer", "layer2", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["000-img0.npy", "000-img0.png", "001-img1.npy", "001-img1.png"]
    cam = np.load(out / "000-img0.npy")
    assert cam.shape == (16, 16) and cam.max() == pytest.approx(1.0)  # at the model's input size
    with Image.open(out / "000-img0.png") as im:
        assert im.size[0] > 200
    assert "img0.png:" in capsys.readouterr().out
    assert main(["explain", str(cam_run / "last.pt"), str(files[0]), "--layer", "nope", "--out", str(out)]) == 2
    assert "has no layer 'nope'" in capsys.readouterr().err


def test_missing_extra_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    model = _as_checkpoint_model("resnet20", 32)
    with pytest.raises(UserError, match=r'pip install "resnetkit\[explain\]"'):
        explain_images(model, torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    monkeypatch.setitem(sys.modules, "jinja2", None)
    from resnetkit.reporting import render_report

    with pytest.raises(UserError, match=r'pip install "resnetkit\[explain\]"'):
        render_report([{}], "x.html")


@pytest.mark.parametrize("layer, got", [("fc", "shape (1, 10)"), ("avgpool", "shape (1, 16, 1, 1)")])
def test_a_layer_without_a_spatial_map_is_one_sentence(layer: str, got: str) -> None:
    model = _as_checkpoint_model("resnet20", 32)  # quarter width: 16 channels at the end
    imgs = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(UserError, match=rf"layer '{layer}' outputs {re.escape(got)}, not a spatial map.*'layer3'"):
        explain_images(model, imgs, layer=layer)  # was a traceback from captum (fc) or a blank 1x1 map (avgpool)


def test_images_given_as_tensors_get_plain_file_names(cam_run: Path, tmp_path: Path) -> None:
    model = resnetkit.load_checkpoint(cam_run / "last.pt")
    objects, _ = _recognised_objects(model, 2)
    written = write_explanations(explain_images(model, objects), tmp_path / "cam")
    assert [p.name for p in written] == ["000-tensor_0.png", "001-tensor_1.png"]  # not "000-tensor[0].png"


def test_an_unreadable_file_is_reported_and_the_rest_explained(cam_run: Path, tmp_path: Path, capsys) -> None:
    model = resnetkit.load_checkpoint(cam_run / "last.pt")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, x in enumerate(_canvas(_recognised_objects(model, 2)[0], 0)):
        Image.fromarray(x.permute(1, 2, 0).numpy()).save(folder / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "cam"
    assert main(["explain", str(cam_run / "last.pt"), str(folder), str(tmp_path / "gone.png"),
                 "--out", str(out)]) == 1  # as predict: the others are explained, the failures named, exit 1
    assert sorted(p.name for p in out.glob("*.png")) == ["000-img0.png", "001-img1.png"]
    captured = capsys.readouterr()
    assert "wrote 2 heat map(s)" in captured.out
    err = captured.err.splitlines()
    assert any(ln.startswith("resnetkit explain: cannot read") and "broken.png" in ln for ln in err), err
    assert any("gone.png: does not exist" in ln for ln in err), err
    assert err[-1] == "resnetkit explain: 2 of 4 file(s) could not be read"
    with pytest.raises(UserError, match="cannot read image .*broken.png"):  # the API fails unless asked to skip
        resnetkit.explain(cam_run / "last.pt", [folder / "broken.png"])
    assert main(["explain", str(cam_run / "last.pt"), str(folder / "broken.png"), "--out", str(out)]) == 2
    assert "none of the 1 image file(s) can be read" in capsys.readouterr().err
