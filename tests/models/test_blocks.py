"""Blocks and their switches: option-A shortcuts, plain twins, zero-init residuals, pre-activation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnetkit.models import (
    BasicBlock,
    Bottleneck,
    PreActBasicBlock,
    PreActBottleneck,
    ShortcutA,
    create_model,
)


def blocks_of(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck))]


# -- option-A shortcut -------------------------------------------------------------------------

def test_shortcut_a_is_strided_identity_with_zero_padded_channels() -> None:
    x = torch.randn(2, 16, 8, 8)
    sc = ShortcutA(16, 32, stride=2)
    out = sc(x)
    assert out.shape == (2, 32, 4, 4)
    # 16 extra channels, split 8 before and 8 after the original ones
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, :8]) == 0
    assert torch.count_nonzero(out[:, 24:]) == 0
    assert sum(p.numel() for p in sc.parameters()) == 0
    assert list(sc.buffers()) == []


def test_shortcut_a_odd_padding_and_stride_one() -> None:
    x = torch.randn(1, 3, 5, 5)
    out = ShortcutA(3, 8, stride=1)(x)  # 5 extra channels: 2 before, 3 after
    assert out.shape == (1, 8, 5, 5)
    assert torch.equal(out[:, 2:5], x)
    assert torch.count_nonzero(out[:, :2]) == 0 and torch.count_nonzero(out[:, 5:]) == 0


def test_shortcut_a_cannot_reduce_channels() -> None:
    with pytest.raises(ValueError, match="cannot reduce"):
        ShortcutA(32, 16, stride=1)


def test_paper_nets_use_option_a_and_no_projection() -> None:
    model = create_model("resnet20")
    shortcuts = [m for m in model.modules() if isinstance(m, ShortcutA)]
    assert [(s.stride, s.extra) for s in shortcuts] == [(2, 16), (2, 32)]  # 16->32, 32->64
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules())


def test_default_shortcut_is_a_projection_with_batchnorm() -> None:
    model = create_model("resnet18_cifar")
    ds = model.layer2[0].downsample
    assert isinstance(ds, nn.Sequential) and isinstance(ds[0], nn.Conv2d) and isinstance(ds[1], nn.BatchNorm2d)
    assert ds[0].kernel_size == (1, 1) and ds[0].stride == (2, 2)
    assert model.layer1[0].downsample is None  # 64 -> 64, stride 1: identity


# -- plain twins -------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck])
def test_plain_block_has_no_shortcut(cls: type[nn.Module]) -> None:
    """With the residual branch zeroed, a residual block passes x on; a plain block outputs 0."""
    planes = 4 if cls.expansion == 4 else 16
    torch.manual_seed(0)
    x = torch.randn(2, 16, 6, 6)
    outs = {}
    for plain in (False, True):
        block = cls(16, planes, plain=plain).eval()
        for last in block.residual_norms():
            nn.init.zeros_(last.weight)
            if getattr(last, "bias", None) is not None:
                nn.init.zeros_(last.bias)
        with torch.no_grad():
            outs[plain] = block(x)
    if cls.preact:
        assert torch.equal(outs[False], x)  # x + 0
    else:
        assert torch.equal(outs[False], torch.relu(x))  # relu(0 + x)
    assert torch.count_nonzero(outs[True]) == 0  # relu(0) = 0, or just 0 for pre-activation


@pytest.mark.parametrize("name", ["plain20", "plain110", "plain18", "plain34_cifar"])
def test_plain_models_have_no_shortcuts_at_all(name: str) -> None:
    model = create_model(name)
    assert all(b.plain and b.downsample is None for b in blocks_of(model))
    assert not any(isinstance(m, ShortcutA) for m in model.modules())


def test_plain_network_output_depends_on_branches_only() -> None:
    """Zeroing one block's branch kills a plain net's signal but not a residual net's."""
    x = torch.randn(2, 3, 32, 32)
    for name, expect_zero in (("plain20", True), ("resnet20", False)):
        torch.manual_seed(0)
        model = create_model(name).eval()
        nn.init.zeros_(model.layer2[1].bn2.weight)
        nn.init.zeros_(model.layer2[1].bn2.bias)
        with torch.no_grad():
            feats = model.layer2(model.layer1(model.relu(model.bn1(model.conv1(x)))))
        assert (torch.count_nonzero(feats) == 0) == expect_zero


# -- zero-init residual -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet20", "resnext50_32x4d"])
def test_zero_init_residual_post_activation_blocks_start_as_relu_of_shortcut(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, zero_init_residual=True).train()  # holds in both modes
    blocks = blocks_of(model)
    for block in blocks:
        (last,) = block.residual_norms()
        assert torch.count_nonzero(last.weight) == 0
    # the first block of every stage, whatever its shortcut (identity, option A, projection)
    checked = 0
    for stage in model.stage_names:
        block = getattr(model, stage)[0]
        x = torch.randn(2, block.conv1.in_channels, 8, 8)
        with torch.no_grad():
            shortcut = x if block.downsample is None else block.downsample(x)
            assert torch.equal(block(x), torch.relu(shortcut))
        checked += 1
    assert checked == len(model.stage_names)


@pytest.mark.parametrize("name", ["preact_resnet18", "preact_resnet164", "wrn16_4"])
def test_zero_init_residual_pre_activation_blocks_start_as_identity(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, zero_init_residual=True).train()
    for stage in model.stage_names:
        seq = getattr(model, stage)
        for block in (seq[0], seq[-1]):
            x = torch.randn(2, block.bn1.num_features, 8, 8)
            with torch.no_grad():
                if block.downsample is None:
                    assert torch.equal(block(x), x)
                else:  # projection of the pre-activated input
                    expected = block.downsample(torch.relu(block.bn1(x)))
                    assert torch.allclose(block(x), expected, atol=1e-6)


def test_zero_init_paper_net_is_the_shortcut_path() -> None:
    """resnet20 with zero-init: every block is relu(shortcut), so layer3 = A(A(stem(x)))."""
    torch.manual_seed(0)
    model = create_model("resnet20", zero_init_residual=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stem = model.relu(model.bn1(model.conv1(x)))
        out = model.layer3(model.layer2(model.layer1(stem)))
        expected = ShortcutA(32, 64, 2)(ShortcutA(16, 32, 2)(stem))
    assert torch.equal(out, expected)


def test_without_zero_init_blocks_are_not_identity() -> None:
    torch.manual_seed(0)
    block = create_model("resnet20").layer1[0].eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert (block(x) - torch.relu(x)).abs().max() > 0.1


# -- pre-activation structure --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["preact_resnet18", "preact_resnet34", "preact_resnet110",
                                  "preact_resnet164", "wrn16_4", "wrn28_10"])
def test_pre_activation_nets_have_final_norm_and_no_stem_norm(name: str) -> None:
    model = create_model(name)
    assert model.preact
    assert isinstance(model.final_norm, nn.BatchNorm2d)
    assert model.final_norm.num_features == model.num_features
    assert isinstance(model.final_act, nn.ReLU)
    assert isinstance(model.bn1, nn.Identity) and isinstance(model.relu, nn.Identity)
    assert all(b.preact for b in blocks_of(model))


@pytest.mark.parametrize("name", ["resnet18", "resnet20", "resnet50_cifar", "plain20"])
def test_post_activation_nets_have_no_final_norm(name: str) -> None:
    model = create_model(name)
    assert not model.preact
    assert isinstance(model.final_norm, nn.Identity)
    assert isinstance(model.bn1, nn.BatchNorm2d)


def test_wide_resnet_widths() -> None:
    model = create_model("wrn28_10")  # Zagoruyko and Komodakis 2016: 16, 160, 320, 640
    assert model.conv1.out_channels == 16
    assert [getattr(model, s)[-1].conv2.out_channels for s in model.stage_names] == [160, 320, 640]
    assert [len(getattr(model, s)) for s in model.stage_names] == [4, 4, 4]


def test_resnext_grouped_width() -> None:
    model = create_model("resnext50_32x4d")  # 32 groups of 4 channels in the first stage
    conv = model.layer1[0].conv2
    assert conv.groups == 32 and conv.in_channels == 128 and conv.out_channels == 128
    assert create_model("wide_resnet50_2").layer1[0].conv2.in_channels == 128  # 2 x 64


def test_block_dropout_is_inside_the_branch() -> None:
    model = create_model("wrn16_4", block_dropout=0.3)
    drops = [b.drop for b in blocks_of(model)]
    assert drops and all(isinstance(d, nn.Dropout) and d.p == 0.3 for d in drops)
