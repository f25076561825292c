"""Fine-tuning from torchvision ResNet weights (--pretrained a file, or a torchvision weights name)."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import pytest
import torch
import torchvision

import resnetkit
from resnetkit.checkpoint import peek
from resnetkit.models import create_model
from resnetkit.training.pretrained import IMAGENET_MEAN, IMAGENET_STD

setup_mod = importlib.import_module("resnetkit.training.setup")

TRAIN = dict(model="resnet18", data="synthetic:200", epochs=1, image_size=32, batch_size=50, precision="fp32",
             device="cpu")


def _torchvision_state(arch: str, seed: int) -> dict[str, torch.Tensor]:
    """A torchvision model's state dict, with BatchNorm statistics unlike a fresh initialisation."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(1000)
    return net.state_dict()


@pytest.fixture(scope="module")
def tv18(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], Path, Path]:
    from safetensors.torch import save_file

    state = _torchvision_state("resnet18", 0)
    folder = tmp_path_factory.mktemp("torchvision")
    torch.save(state, folder / "resnet18.pth")
    save_file(state, str(folder / "resnet18.safetensors"))
    return state, folder / "resnet18.pth", folder / "resnet18.safetensors"


@pytest.fixture()
def start(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Records the model's state right after the pretrained weights are applied (before step 1)."""
    seen: dict = {}
    real = setup_mod.apply_pretrained

    def spy(model, *args, **kwargs):
        out = real(model, *args, **kwargs)
        seen["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seen["trainable"] = sorted(n for n, p in model.named_parameters() if p.requires_grad)
        return out

    monkeypatch.setattr(setup_mod, "apply_pretrained", spy)
    return seen


def _backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def test_finetune_from_a_torchvision_pth(tv18, start: dict, tmp_path: Path) -> None:
    tv_state, pth, _ = tv18
    result = resnetkit.train(**TRAIN, pretrained=str(pth), max_steps=2, out=str(tmp_path / "run"))
    first = start["state"]
    assert first.keys() == tv_state.keys()
    mismatched = [k for k, v in _backbone(tv_state).items() if not torch.equal(first[k], v)]
    assert mismatched == []  # conv1.weight ... layer4.1.bn2.running_var all torchvision's
    assert tuple(first["fc.weight"].shape) == (10, 512) and tuple(first["fc.bias"].shape) == (10,)
    assert len(start["trainable"]) == len(list(create_model("resnet18").parameters()))
    ckpt = peek(result.out_dir / "last.pt")
    assert tuple(ckpt["model"]["fc.weight"].shape) == (10, 512) and ckpt["model_kwargs"]["num_classes"] == 10
    assert not torch.equal(ckpt["model"]["conv1.weight"], tv_state["conv1.weight"])  # it did train
    assert tuple(ckpt["mean"]) == IMAGENET_MEAN and tuple(ckpt["std"]) == IMAGENET_STD  # the weights' statistics
    assert ckpt["config"]["pretrained"] == str(pth)


def test_freeze_backbone_from_safetensors(tv18, start: dict, tmp_path: Path) -> None:
    tv_state, _, st = tv18
    result = resnetkit.train(**TRAIN, pretrained=str(st), freeze_backbone=True, max_steps=3, out=str(tmp_path / "run"))
    first = start["state"]
    assert [k for k, v in _backbone(tv_state).items() if not torch.equal(first[k], v)] == []
    assert start["trainable"] == ["fc.bias", "fc.weight"]
    final = peek(result.out_dir / "last.pt")["model"]
    params = [n for n, _ in create_model("resnet18", num_classes=10).named_parameters()]
    changed = [n for n in params if not torch.equal(final[n], first[n])]
    assert changed == ["fc.weight", "fc.bias"]  # every backbone parameter exactly as loaded


def test_a_frozen_fine_tune_resumes_with_its_backbone_still_frozen(tv18, tmp_path: Path) -> None:
    tv_state, _, st = tv18
    out = tmp_path / "run"
    # 200 images in batches of 50: 4 steps an epoch; stop after 2, then finish the epoch by resuming
    resnetkit.train(**TRAIN, pretrained=str(st), freeze_backbone=True, stop_after_steps=2, out=str(out))
    assert peek(out / "last.pt")["global_step"] == 2
    result = resnetkit.resume(out)  # refused before: the optimizer state held one group fewer than the model
    final = peek(result.out_dir / "last.pt")
    assert final["global_step"] == 4
    assert [k for k, v in _backbone(tv_state).items() if not torch.equal(final["model"][k], v)] == []


def test_freeze_backbone_without_pretrained_weights_is_refused(tmp_path: Path) -> None:
    with pytest.raises(resnetkit.UserError, match="freeze_backbone.*needs.*pretrained"):
        resnetkit.train(**TRAIN, freeze_backbone=True, max_steps=1, out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_wrong_architecture_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(_torchvision_state("resnet34", 1), path)
    with pytest.raises(resnetkit.UserError) as info:
        resnetkit.train(**TRAIN, pretrained=str(path), max_steps=1, out=str(tmp_path / "run"))
    message = str(info.value)
    assert str(path) in message and "does not fit this model" in message
    assert "unexpected tensor(s)" in message and "layer1.2." in message  # resnet34 has 3 blocks in layer1
    assert not (tmp_path / "run" / "last.pt").exists()


def test_missing_pretrained_file(tmp_path: Path) -> None:
    missing = tmp_path / "weights" / "resnet18.pth"
    with pytest.raises(resnetkit.UserError, match=f"--pretrained file {missing} does not exist"):
        resnetkit.train(**TRAIN, pretrained=str(missing), max_steps=1, out=str(tmp_path / "run"))


def test_torchvision_weights_name_offline_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached download to find
    for var in ("https_proxy", "HTTPS_PROXY"):  # a closed local port: offline even where a network exists
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(resnetkit.UserError) as info:
        resnetkit.train(**TRAIN, pretrained="IMAGENET1K_V1", max_steps=1, out=str(tmp_path / "run"))
    assert time.perf_counter() - t0 < 120
    message = str(info.value)
    assert "could not download https://download.pytorch.org/models/resnet18-" in message
    assert "--pretrained PATH" in message
    with pytest.raises(resnetkit.UserError, match="unknown weights for resnet18"):
        resnetkit.train(**TRAIN, pretrained="IMAGENET1K_V9", max_steps=1, out=str(tmp_path / "run2"))
