"""resnet_cpu: shapes at several sizes, a training step, the parameter count and its cost."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from resnetkit.models import create_model, list_models
from resnetkit.models.resnet_cpu import ResNetCPU


def test_registered_with_parameter_count():
    assert "resnet_cpu" in list_models("resnet_cpu")
    m = create_model("resnet_cpu")
    # stem 3*24*4 + BN; convs 24->64, 64->128, 2x 128->128, 128->256 (3x3, no bias) + BNs; fc 256*10, no bias
    assert sum(p.numel() for p in m.parameters()) == 681_680
    assert sum(p.numel() for p in create_model("resnet_cpu", num_classes=100).parameters()) == 681_680 + 256 * 90


def _madds(name: str) -> float:
    """Multiply-adds of one 32x32 image through the registered network ``name``."""
    with FlopCounterMode(display=False) as f:
        create_model(name)(torch.randn(1, 3, 32, 32))
    return f.get_total_flops() / 2


def test_multiply_adds_are_well_below_resnet20():
    cpu, r20 = _madds("resnet_cpu"), _madds("resnet20")
    assert 17.5e6 < cpu < 18.1e6 and cpu < 0.45 * r20


@pytest.mark.parametrize("size", [16, 24, 28, 32])
def test_forward_backward_at_progressive_sizes(size):
    torch.manual_seed(0)
    m = create_model("resnet_cpu", num_classes=7).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, size, size).contiguous(memory_format=torch.channels_last)
    out = m(x)
    assert out.shape == (4, 7) and torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert m.stem[0].weight.grad.abs().sum() > 0


def test_residual_pair_is_identity_plus_branch():
    m = create_model("resnet_cpu", stem_width=16, widths=(32, 32), residual=(True, False)).eval()
    pair = m.layers[0][1]
    x = torch.randn(2, 32, 8, 8)
    torch.testing.assert_close(pair(x), x + pair.branch(x))
    assert m.num_features == 32 and m.layers[0][0][2].momentum == pytest.approx(0.4)


def test_stem_stride_1_keeps_the_first_stage_at_full_resolution():
    torch.manual_seed(0)
    half, full = create_model("resnet_cpu"), create_model("resnet_cpu", stem_stride=1, whiten=True)
    x = torch.randn(2, 3, 32, 32)
    assert half.stem(x).shape[-1] == 16 and full.stem(x).shape[-1] == 31
    assert full.forward_features(x).shape[-2:] == (3, 3) and full(x).shape == (2, 10)
    # the same parameters; the whitening filters come from the same patch statistics
    assert sum(p.numel() for p in full.parameters()) == sum(p.numel() for p in half.parameters())
    full.init_from_data(x)
    assert full.stem[0].weight.abs().sum() > 0 and not full.stem[0].weight.requires_grad
    named = create_model("resnet_cpu_fullres")  # the registered name for it
    assert named.stem[0].stride == (1, 1) and named.stem(x).shape[-1] == 31


def test_the_narrow_full_resolution_net_halves_only_the_first_stage():
    narrow = create_model("resnet_cpu_fullres_narrow")
    assert narrow.stem[0].stride == (1, 1) and narrow.stem(torch.randn(1, 3, 32, 32)).shape[-1] == 31
    assert [s[0][0].out_channels for s in narrow.layers] == [32, 128, 256]
    # 24->32 and 32->128 convs (3x3) instead of 24->64 and 64->128, and a 32-channel BatchNorm instead of 64
    assert sum(p.numel() for p in narrow.parameters()) == 681_680 - 24 * 32 * 9 - 32 * 128 * 9 - 64 == 637_840
    # half the multiply-adds of the first two convolutions: 0.75x those of the full-width network
    assert 43.5e6 < _madds("resnet_cpu_fullres_narrow") < 44.5e6 and 58.5e6 < _madds("resnet_cpu_fullres") < 59.5e6


def test_the_deep_full_resolution_net_adds_a_residual_pair_after_the_first_and_last_stages():
    deep = create_model("resnet_cpu_fullres_deep")
    assert deep.stem[0].stride == (1, 1) and deep.stem(torch.randn(1, 3, 32, 32)).shape[-1] == 31
    assert [type(s[-1]).__name__ for s in deep.layers] == ["ResidualPair"] * 3
    # two 64-channel and two 256-channel 3x3 convs, each with a BatchNorm (scale and shift)
    pairs = 2 * (64 * 64 * 9 + 2 * 64) + 2 * (256 * 256 * 9 + 2 * 256)
    assert sum(p.numel() for p in deep.parameters()) == 681_680 + pairs == 1_936_336
    # at 15x15 and 3x3: 16.6M + 10.6M multiply-adds on top of the 59.1M
    assert 85.5e6 < _madds("resnet_cpu_fullres_deep") < 87.0e6


def test_bad_options_are_user_errors():
    from resnetkit.errors import UserError

    with pytest.raises(UserError, match="same, non-zero length"):
        create_model("resnet_cpu", widths=(32, 64), residual=(True,))
    with pytest.raises(UserError, match="bn_momentum"):
        create_model("resnet_cpu", bn_momentum=0.0)
    with pytest.raises(UserError, match="stem_stride must be 1 or 2"):
        create_model("resnet_cpu", stem_stride=4)
    with pytest.raises(UserError, match="activation must be one of relu, gelu, got 'swish'"):
        create_model("resnet_cpu", activation="swish")


def test_gelu_replaces_every_relu_and_changes_nothing_else():
    torch.manual_seed(0)
    relu = create_model("resnet_cpu_fullres")
    torch.manual_seed(0)
    gelu = create_model("resnet_cpu_fullres", activation="gelu")
    kinds = [(type(a).__name__, type(b).__name__) for a, b in zip(relu.modules(), gelu.modules()) if type(a) is not type(b)]
    assert kinds == [("ReLU", "GELU")] * 6  # the stem's, one per stage, two in the residual pair
    for (na, pa), (nb, pb) in zip(relu.state_dict().items(), gelu.state_dict().items()):  # same weights
        assert na == nb and torch.equal(pa, pb)
    x = torch.randn(2, 3, 32, 32)
    relu.eval(), gelu.eval()
    assert not torch.allclose(relu(x), gelu(x))  # and the activation really runs
    unit = gelu.layers[1][1].branch[0][-1]
    torch.testing.assert_close(unit(torch.tensor([-1.0, 0.0, 2.0])), F.gelu(torch.tensor([-1.0, 0.0, 2.0])))


@pytest.mark.parametrize("whiten", [True, False])
def test_a_frozen_stem_gets_no_gradient_and_the_first_stage_still_learns(whiten):
    torch.manual_seed(0)
    model = ResNetCPU(whiten=whiten, stem_stride=1)
    assert all(p.requires_grad for p in model.stem[1].parameters())
    assert model.stem[0].weight.requires_grad is not whiten  # a whitened stem's filters are frozen from the start
    assert model.freeze_stem() is True
    assert model.freeze_stem() is False  # nothing left to freeze
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.stem.parameters())
    first = model.layers[0][0][0].weight
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_a_frozen_stem_trains_as_one_convolution_normalised_by_its_running_statistics():
    torch.manual_seed(0)
    model = ResNetCPU(whiten=True, stem_stride=1)
    model.init_from_data(torch.randn(64, 3, 32, 32))
    model.train()
    model(torch.randn(8, 3, 32, 32) * 2 + 1)  # running statistics away from 0 and 1
    bn = model.stem[1]
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(8, 3, 32, 32)
    assert model._frozen_stem(x) is None  # the BatchNorm still trains: batch statistics, the module as it is
    model.freeze_stem()
    stats = bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked)
    folded = model._frozen_stem(x)
    model.stem.eval()
    torch.testing.assert_close(folded, model.stem(x), rtol=1e-4, atol=1e-5)  # = BatchNorm on running statistics
    model.stem.train()
    model(x).sum().backward()
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])  # frozen means frozen
    assert int(bn.num_batches_tracked) == stats[2]
    assert model.layers[0][0][0].weight.grad.abs().sum() > 0
    model.eval()
    assert model._frozen_stem(x) is None  # evaluation runs the modules (their hooks see the stem)
    fresh = ResNetCPU(stem_stride=1)
    fresh.freeze_stem()  # frozen before any batch: running statistics of 0 and 1 would normalise nothing
    assert fresh._frozen_stem(x) is None
