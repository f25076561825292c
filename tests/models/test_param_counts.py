"""Exact parameter counts of every named model, against the papers and torchvision.

ImageNet-sized models are built on the meta device (parameter shapes are all a count needs, and
up to 127M weights are neither allocated nor initialised); CIFAR-sized ones on the CPU, which is
quicker for them (on meta, initialisation runs through Python reference kernels, slow for the
thousands of small layers of resnet1202).
"""

from __future__ import annotations

import pytest
import torch
from torchvision.models import get_model_weights

from resnetkit.models import create_model, list_models, model_info


def n_params(name: str, **kwargs) -> int:
    with torch.device("meta" if model_info(name).input_size[1] > 64 else "cpu"):
        model = create_model(name, **kwargs)
    return sum(p.numel() for p in model.parameters())


# torchvision's documented counts (ImageNet, 1000 classes) and the CIFAR forms (10 classes).
EXACT = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnet18_cifar": 11_173_962,
    "resnet34_cifar": 21_282_122,
    "resnet50_cifar": 23_520_842,
    # He et al. 2015, section 4.2 (option A): 0.27M, 0.46M, 0.66M, 0.85M, 1.7M, 19.4M
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet1202": 19_421_274,
    # Page 2018 ("How to train your ResNet"): 64-128-256-512 widths, 6.57M
    "resnet9": 6_573_120,
}

TORCHVISION_NAMED = [
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
]


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_count(name: str) -> None:
    assert n_params(name) == EXACT[name]


@pytest.mark.parametrize("name", TORCHVISION_NAMED)
def test_count_matches_torchvision_metadata(name: str) -> None:
    # the weights enum's metadata needs no download
    expected = get_model_weights(name).DEFAULT.meta["num_params"]
    assert n_params(name) == expected


def test_torchvision_metadata_agrees_with_the_documented_counts() -> None:
    for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        assert get_model_weights(name).DEFAULT.meta["num_params"] == EXACT[name]


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_plain_twin_has_the_same_count(depth: int) -> None:
    # option-A shortcuts add no parameters, so ResNet-n and plain-n are the same size
    assert n_params(f"plain{depth}") == n_params(f"resnet{depth}") == EXACT[f"resnet{depth}"]


@pytest.mark.parametrize("name,paper", [("wrn16_8", 11.0e6), ("wrn28_10", 36.5e6)])
def test_wide_resnet_counts_match_the_paper(name: str, paper: float) -> None:
    # Zagoruyko and Komodakis 2016, Table 1 gives 11.0M and 36.5M
    assert abs(n_params(name) - paper) / paper < 0.005


def test_num_classes_changes_only_the_classifier() -> None:
    # fc: 512 * 10 + 10 for 10 classes vs 512 * 100 + 100
    assert n_params("resnet18_cifar", num_classes=100) - EXACT["resnet18_cifar"] == 512 * 90 + 90


def test_in_channels_changes_only_the_first_conv() -> None:
    # resnet20's first conv is 3x3, 3 -> 16 channels: 432 weights; with one channel, 144
    assert n_params("resnet20", in_channels=1) == EXACT["resnet20"] - 288


def test_the_registry_holds_every_counted_model() -> None:
    names = list_models()
    assert len(names) >= 38
    assert set(EXACT) | set(TORCHVISION_NAMED) <= set(names)
