"""The registry and the model API: names, errors, overrides, input checks, classifier reset."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnetkit.errors import UserError
from resnetkit.models import UnknownModelError, create_model, list_models, model_info, register


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(UnknownModelError) as exc:
        create_model("resnet5")
    err = exc.value
    assert isinstance(err, UserError) and isinstance(err, KeyError)
    msg = str(err)
    assert "'resnet5'" in msg and "resnet50" in msg and "resnet56" in msg
    assert "\n" not in msg and not msg.startswith('"')  # one sentence, not a KeyError repr


def test_unknown_model_without_close_names_points_to_the_list() -> None:
    with pytest.raises(UnknownModelError, match="resnetkit models"):
        model_info("vgg16")


def test_none_overrides_are_ignored() -> None:
    model = create_model("resnet20", num_classes=None, shortcut=None, foo=None, in_channels=None)
    assert model.fc.out_features == 10 and model.in_channels == 3
    assert model.spec == {"name": "resnet20", "kwargs": {}}
    assert model.default_input_size == (3, 32, 32)


def test_overrides_apply_and_are_recorded() -> None:
    model = create_model("resnet20", num_classes=100, shortcut="B")
    assert model.fc.out_features == 100
    assert isinstance(model.layer2[0].downsample, nn.Sequential)
    assert model.spec == {"name": "resnet20", "kwargs": {"shortcut": "B", "num_classes": 100}}


def test_unknown_option_is_a_user_error() -> None:
    with pytest.raises(UserError, match="bad option for model 'resnet20'"):
        create_model("resnet20", foo=1)


def test_register_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register("resnet20", "resnet-paper", (3, 32, 32), block="basic", layers=(3, 3, 3))


def test_list_models_shell_pattern() -> None:
    names = list_models("resnet*")
    assert names == sorted(names)
    assert names == [n for n in list_models() if n.startswith("resnet")]
    assert {"resnet18", "resnet152", "resnet20", "resnet1202", "resnet18_cifar"} <= set(names)
    assert "preact_resnet18" not in names and "plain20" not in names


def test_list_models_substring() -> None:
    assert list_models("cifar") == [
        "plain18_cifar", "plain34_cifar", "resnet101_cifar", "resnet152_cifar",
        "resnet18_cifar", "resnet34_cifar", "resnet50_cifar",
    ]
    assert list_models("wrn??_*") == ["wrn16_4", "wrn16_8", "wrn28_10", "wrn40_4"]
    assert list_models("nothing-like-this") == []


def test_model_info() -> None:
    info = model_info("resnet50")
    assert (info.name, info.family, info.input_size) == ("resnet50", "resnet", (3, 224, 224))
    assert info.defaults["block"] == "bottleneck" and tuple(info.defaults["layers"]) == (3, 4, 6, 3)
    assert model_info("wrn28_10").input_size == (3, 32, 32)


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 1, 32, 32), (2, 4, 32, 32), (2, 3, 32)])
def test_wrong_input_shape_is_a_clear_value_error(shape: tuple[int, ...]) -> None:
    model = create_model("resnet20")
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\), got"):
        model(torch.randn(*shape))


def test_in_channels_one() -> None:
    model = create_model("resnet20", in_channels=1).eval()
    assert model.conv1.in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model(torch.randn(2, 3, 28, 28))


def test_reset_classifier() -> None:
    model = create_model("resnet18_cifar").eval()
    model.reset_classifier(7)
    assert model.fc.out_features == 7 and model.fc.in_features == 512 and model.num_classes == 7
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
        model.reset_classifier(0)  # feature extractor
        assert isinstance(model.fc, nn.Identity)
        assert model(x).shape == (2, 512)
    assert model.get_classifier() is model.fc


def test_num_classes_zero_builds_a_feature_extractor() -> None:
    model = create_model("resnet50", num_classes=0).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2048)
