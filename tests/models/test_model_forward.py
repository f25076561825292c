"""Every registered model: forward shape, a backward pass with finite gradients everywhere.

Two small images exercise every layer and keep the whole registry quick on two cores: 16x16
for CIFAR-stem nets (2x2 after the last of four stages), 32x32 for ImageNet-stem nets (1x1 after
layer4). Smaller ImageNet inputs leave several stages at 1x1, where training-mode BatchNorm over
two values per channel can amplify gradients past float range in the 101-layer nets.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resnetkit.models import create_model, list_models, model_info


@pytest.mark.parametrize("name", list_models())
def test_forward_shape_and_backward(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7).train()
    side = 32 if model_info(name).input_size[1] >= 224 else 16
    x = torch.randn(2, 3, side, side)
    y = torch.tensor([1, 5])
    logits = model(x)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, y).backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"no gradient reached {missing[:5]}"
    bad = [n for n, p in params if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad[:5]}"
    assert torch.stack([p.grad.norm() for _, p in params]).sum() > 0
    assert model.fc.weight.grad.abs().sum() > 0  # the loss really depends on the classifier


@pytest.mark.parametrize("name", ["resnet20", "resnet18_cifar", "preact_resnet18", "wrn16_4"])
def test_forward_features_and_head(name: str) -> None:
    model = create_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
        full = model(x)
    assert feats.shape == (2, model.num_features, 32 // 2 ** (len(model.stage_names) - 1),
                           32 // 2 ** (len(model.stage_names) - 1))
    assert pooled.shape == (2, model.num_features)
    assert torch.equal(logits, full)
    assert torch.allclose(pooled, feats.mean(dim=(2, 3)), atol=1e-6)


def test_stage_names_and_shapes_of_resnet18_cifar() -> None:
    model = create_model("resnet18_cifar").eval()
    assert model.stage_names == ["layer1", "layer2", "layer3", "layer4"]
    x = torch.randn(1, 3, 32, 32)
    shapes = []
    with torch.no_grad():
        x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        for name in model.stage_names:
            x = getattr(model, name)(x)
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]
