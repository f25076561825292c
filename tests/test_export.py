"""resnetkit.export and ``resnetkit export``: each format round-trips within 1e-4 and carries metadata."""

from __future__ import annotations

import json
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import resnetkit
from resnetkit import export as export_mod
from resnetkit.checkpoint import FORMAT, FORMAT_VERSION, atomic_save, encode_metadata
from resnetkit.cli import main
from resnetkit.export import ExportError, export_checkpoint, read_export_metadata
from resnetkit.models import create_model

CLASSES = ["airplane", "bird", "cat", "dog", "frog"]
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def make_checkpoint(path: Path, model_name: str = "resnet20", image_size: int = 32, seed: int = 0,
                    **model_kwargs: object) -> Path:
    """A resnetkit checkpoint with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=len(CLASSES), **model_kwargs)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # the export must use these (eval mode)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    atomic_save({"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.state_dict(),
                 "model_name": model_name, "model_kwargs": dict(model.spec["kwargs"]), "optimizer": {},
                 "epoch": 1, "step_in_epoch": 0, "global_step": 1, "rng": {}, "best": {}, "history": [],
                 "config": {"model": model_name}, "classes": CLASSES, "mean": list(MEAN), "std": list(STD),
                 "image_size": image_size, "in_channels": 3, "data_fingerprint": "", "world_size": 1,
                 "versions": {}}, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("export") / "best.pt")


@pytest.fixture(scope="module")
def model(ckpt: Path) -> torch.nn.Module:
    return resnetkit.load_checkpoint(ckpt)


@pytest.fixture(scope="module")
def onnx_file(ckpt: Path) -> Path:
    """One ONNX export through the command line (the exporter takes seconds; share it)."""
    assert main(["export", str(ckpt), "--format", "onnx"]) == 0
    return ckpt.with_suffix(".onnx")


def _inputs(batch: int, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(100 + batch))


def _check_metadata(meta: dict, model_name: str = "resnet20", image_size: int = 32) -> None:
    assert meta["format"] == "resnetkit-export"
    assert meta["model_name"] == model_name
    assert meta["classes"] == CLASSES
    assert meta["mean"] == pytest.approx(MEAN) and meta["std"] == pytest.approx(STD)
    assert meta["image_size"] == image_size and meta["in_channels"] == 3
    assert meta["model_kwargs"]["num_classes"] == len(CLASSES)


def test_onnx_round_trip_with_dynamic_batch_and_metadata(onnx_file: Path, model: torch.nn.Module) -> None:
    import onnx
    import onnxruntime as ort

    assert sorted(p.name for p in onnx_file.parent.iterdir()) == ["best.onnx", "best.pt"]  # one file, no temp left
    proto = onnx.load(str(onnx_file))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["classes"]) == CLASSES and json.loads(props["image_size"]) == 32
    assert json.loads(props["mean"]) == pytest.approx(MEAN) and props["model_name"] == "resnet20"
    _check_metadata(read_export_metadata(onnx_file))
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")  # symbolic batch size
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "input" and session.get_outputs()[0].name == "logits"
    for batch in (1, 3, 5):
        x = _inputs(batch)
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == (batch, len(CLASSES))
        assert np.abs(got - want).max() < 1e-4


def test_torchscript_round_trip_and_metadata(ckpt: Path, model: torch.nn.Module, tmp_path: Path) -> None:
    result = export_checkpoint(ckpt, "torchscript", tmp_path / "m.torchscript")
    assert result.path == tmp_path / "m.torchscript" and result.max_abs_diff < 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["m.torchscript"]
    extra = {"resnetkit.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(result.path), map_location="cpu", _extra_files=extra)
    _check_metadata(json.loads(extra["resnetkit.json"]))
    _check_metadata(read_export_metadata(result.path))
    for batch in (1, 3):
        x = _inputs(batch)
        with torch.no_grad():
            assert (loaded(x) - model(x)).abs().max() < 1e-4


def test_safetensors_round_trip_through_load_checkpoint(ckpt: Path, model: torch.nn.Module, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    from safetensors import safe_open

    out = tmp_path / "weights.safetensors"
    assert main(["export", str(ckpt), "--format", "safetensors", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with safe_open(str(out), framework="pt") as f:
        raw = f.metadata()
    assert raw["model_name"] == "resnet20" and json.loads(raw["classes"]) == CLASSES
    assert json.loads(raw["model_kwargs"]) == {"num_classes": len(CLASSES)}
    back = resnetkit.load_checkpoint(out)
    assert (back.classes, back.mean, back.std, back.image_size) == (CLASSES, MEAN, STD, 32)
    own = model.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in back.state_dict().items()) and back.state_dict().keys() == own.keys()
    for batch in (1, 3):
        x = _inputs(batch)
        with torch.no_grad():
            assert torch.equal(back(x), model(x))
    img = torch.randint(0, 256, (2, 3, 40, 36), dtype=torch.uint8)
    assert [p.topk for p in back.predict(img)] == [p.topk for p in model.predict(img)]


def test_imagenet_stem_model_exports(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "r18.pt", "resnet18", image_size=64, seed=1)
    result = export_checkpoint(ckpt, "torchscript")
    assert result.path == tmp_path / "r18.torchscript" and result.max_abs_diff < 1e-4
    _check_metadata(read_export_metadata(result.path), "resnet18", 64)


def test_the_cpu_recipes_gelu_network_exports_and_reloads_with_gelu(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "cpu.pt", "resnet_cpu_fullres", seed=2, activation="gelu", whiten=True)
    onnx = export_checkpoint(ckpt, "onnx")  # verified against the eager model, or it raises
    assert onnx.max_abs_diff < 1e-3
    back = resnetkit.load_checkpoint(export_checkpoint(ckpt, "safetensors").path)
    assert sum(isinstance(m, torch.nn.GELU) for m in back.modules()) == 6
    assert not any(isinstance(m, torch.nn.ReLU) for m in back.modules())
    x = _inputs(2)
    with torch.no_grad():
        assert torch.equal(back(x), resnetkit.load_checkpoint(ckpt)(x))


def test_a_failed_verification_keeps_nothing(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"an older export")
    real = export_mod._RUNNERS["safetensors"]

    def off_by_a_bit(path: Path):
        run = real(path)
        return lambda x: run(x) + 1e-2  # 1e-2 absolute is >= 1e-2 / max(1, |logits|) relative

    monkeypatch.setitem(export_mod._RUNNERS, "safetensors", off_by_a_bit)
    with pytest.raises(ExportError, match=r"differ from the model.s by \S+ relative.*tolerance 0.0001.*not written"):
        export_checkpoint(ckpt, "safetensors", out, overwrite=True)  # reaches verification
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left behind
    assert out.read_bytes() == b"an older export"  # and the old file is intact


def test_an_exporter_crash_is_one_sentence(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(model, path, meta):
        path.write_bytes(b"half a file")
        raise RuntimeError("unsupported operator aten::foo\nlong internal trace")

    monkeypatch.setitem(export_mod._WRITERS, "torchscript", crash)
    with pytest.raises(ExportError) as info:
        export_checkpoint(ckpt, "torchscript", tmp_path / "m.torchscript")
    assert str(info.value) == (f"could not export resnet20 to torchscript (RuntimeError: unsupported operator "
                               f"aten::foo), so {tmp_path / 'm.torchscript'} was not written")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt,module", [("onnx", "onnxruntime"), ("onnx", "onnx"), ("safetensors", "safetensors")])
def test_missing_optional_package(fmt: str, module: str, ckpt: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes "import module" raise ImportError
    monkeypatch.setitem(sys.modules, f"{module}.torch", None)
    assert main(["export", str(ckpt), "--format", fmt, "--out", str(tmp_path / f"m.{fmt}")]) == 2
    err = capsys.readouterr().err
    assert f"'{module}' package" in err and "pip install 'resnetkit[export]'" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_garbage_and_tampered_exports_are_refused(ckpt: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    for suffix in (".onnx", ".safetensors", ".torchscript"):
        bad = tmp_path / f"garbage{suffix}"
        bad.write_bytes(b"\x08\x01garbage" * 50)
        with pytest.raises(ExportError, match=str(bad)):
            read_export_metadata(bad)
    with pytest.raises(resnetkit.UserError, match="garbage.safetensors is not a readable safetensors file"):
        resnetkit.load_checkpoint(tmp_path / "garbage.safetensors")

    good = export_checkpoint(ckpt, "safetensors", tmp_path / "good.safetensors").path
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(resnetkit.UserError, match="not a readable safetensors file"):
        resnetkit.load_checkpoint(truncated)
    state = load_file(str(good))
    bare = tmp_path / "bare.safetensors"
    save_file(state, str(bare))  # weights without resnetkit metadata
    with pytest.raises(resnetkit.UserError, match="no resnetkit metadata.*--pretrained"):
        resnetkit.load_checkpoint(bare)
    meta = encode_metadata(read_export_metadata(good))
    damaged = tmp_path / "damaged.safetensors"
    save_file(state, str(damaged), metadata={**meta, "classes": "[not json"})
    with pytest.raises(resnetkit.UserError, match="damaged resnetkit metadata"):
        resnetkit.load_checkpoint(damaged)
    wrong = tmp_path / "wrong.safetensors"
    save_file({**state, "fc.weight": torch.zeros(7, 64)}, str(wrong), metadata=meta)
    with pytest.raises(resnetkit.UserError, match=r"fc.weight.*\(7, 64\)"):
        resnetkit.load_checkpoint(wrong)

    ts = export_checkpoint(ckpt, "torchscript", tmp_path / "m.torchscript").path
    stripped = tmp_path / "stripped.torchscript"
    with zipfile.ZipFile(ts) as zin, zipfile.ZipFile(stripped, "w") as zout:
        for item in zin.infolist():
            if not item.filename.endswith("resnetkit.json"):
                zout.writestr(item, zin.read(item))
    with pytest.raises(ExportError, match="without resnetkit metadata"):
        read_export_metadata(stripped)


def test_export_command_errors(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cases = [
        (["export", str(tmp_path / "missing.pt"), "--format", "torchscript"], "missing.pt does not exist"),
        (["export", str(ckpt), "--format", "torchscript", "--out", str(tmp_path / "no" / "m.ts")], "does not exist"),
        (["export", str(ckpt), "--format", "torchscript", "--out", str(ckpt)], "is the checkpoint itself"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_checkpoint(ckpt, "tflite")


def test_export_takes_the_ema_weights_by_default_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw_ckpt = make_checkpoint(tmp_path / "raw.pt", seed=1)
    payload = torch.load(raw_ckpt, weights_only=True)
    average = torch.load(make_checkpoint(tmp_path / "other.pt", seed=2), weights_only=True)["model"]
    payload["ema"] = {"weights": average, "updates": 7, "decay": 0.999}
    ckpt = tmp_path / "ema.pt"
    torch.save(payload, ckpt)
    out = tmp_path / "ema.safetensors"
    assert main(["export", str(ckpt), "--format", "safetensors", "--out", str(out)]) == 0
    assert "EMA weights, --weights raw for the others" in capsys.readouterr().out
    back = resnetkit.load_checkpoint(out)
    assert back.weights == "ema" and read_export_metadata(out)["weights"] == "ema"
    assert all(torch.equal(v, average[k]) for k, v in back.state_dict().items())
    assert not torch.equal(average["fc.weight"], payload["model"]["fc.weight"])

    raw_out = tmp_path / "raw.safetensors"
    assert main(["export", str(ckpt), "--format", "safetensors", "--out", str(raw_out), "--weights", "raw"]) == 0
    assert "EMA" not in capsys.readouterr().out
    raw = resnetkit.load_checkpoint(raw_out)
    assert raw.weights == "raw" and all(torch.equal(v, payload["model"][k]) for k, v in raw.state_dict().items())
    assert export_checkpoint(raw_ckpt, "safetensors", tmp_path / "plain.safetensors").weights == "raw"
    assert main(["export", str(raw_ckpt), "--format", "safetensors", "--out", str(tmp_path / "x.safetensors"),
                 "--weights", "ema"]) == 2
    assert "holds no EMA weights" in capsys.readouterr().err
