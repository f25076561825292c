"""torchvision's ResNets load into ours unchanged (strict) and compute the same function.

torchvision's BatchNorm layers get random affine parameters and running statistics collected
on a random batch, so a misplaced or missing normalisation changes the output.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from resnetkit.models import create_model

TORCHVISION_NAMED = [
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2",
]


def _randomised_torchvision(name: str) -> nn.Module:
    torch.manual_seed(0)
    tv = torchvision.models.get_model(name, weights=None)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.momentum = 1.0  # running stats become those of the calibration batch
        tv.train()
        tv(torch.randn(4, 3, 64, 64))
    return tv.eval()


@pytest.mark.parametrize("name", TORCHVISION_NAMED)
def test_torchvision_weights_load_and_outputs_match(name: str) -> None:
    tv = _randomised_torchvision(name)
    with torch.device("meta"):
        ours = create_model(name)
    # assign=True takes torchvision's tensors as they are; names and shapes are still checked
    result = ours.load_state_dict(tv.state_dict(), strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    ours.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = tv(x)
        out = ours(x)
    assert out.shape == ref.shape == (1, 1000)
    assert ref.abs().max() > 0.1  # a meaningful signal, not a vanishing one
    assert (out - ref).abs().max().item() <= 1e-5


def test_state_dict_keys_are_torchvision_keys() -> None:
    with torch.device("meta"):
        tv = torchvision.models.resnet50(weights=None)
        ours = create_model("resnet50")
    assert list(ours.state_dict()) == list(tv.state_dict())


def test_a_shape_mismatch_is_refused() -> None:
    # the parity test would be vacuous if loading ignored shapes: 10 classes cannot take 1000
    with torch.device("meta"):
        tv = torchvision.models.resnet18(weights=None)
        ours = create_model("resnet18", num_classes=10)
    with pytest.raises(RuntimeError, match="size mismatch for fc.weight"):
        ours.load_state_dict(tv.state_dict(), strict=True, assign=True)
