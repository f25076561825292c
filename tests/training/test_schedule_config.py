"""Learning-rate schedules, recipes and config validation."""

import math

import pytest
import torch

from resnetkit.errors import UserError
from resnetkit.models import create_model
from resnetkit.training.config import RECIPES, TrainConfig, resolve_config
from resnetkit.training.optim import build_sgd, param_groups
from resnetkit.training.schedule import lr_factor


def test_warmup_then_cosine_reaches_zero():
    total, warm = 100, 10
    f = [lr_factor(s, total, warm, "cosine") for s in range(total + 1)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0)
    assert f[55] == pytest.approx(0.5, abs=1e-9)  # halfway through the decay
    assert f[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_linear_and_constant():
    assert lr_factor(50, 100, 0, "linear") == pytest.approx(0.5)
    assert lr_factor(99, 100, 0, "constant") == 1.0
    with pytest.raises(ValueError):
        lr_factor(0, 10, 0, "exponential")


def test_step_schedule_is_the_papers():
    # He et al. 2015: lr / 10 at 32k and 48k of 64k iterations, after the warmup
    f = [lr_factor(s, 64, 4, "step") for s in range(64)]
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f[4:32] == [1.0] * 28 and f[32:48] == [0.1] * 16 and f[48:] == [0.01] * 16


def test_tutorial_recipe_is_the_tutorial():
    cfg = resolve_config("tutorial")
    assert (cfg.model, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.epochs) == (
        "resnet18_cifar", 0.1, 0.9, 5e-4, 128, 10)
    assert cfg.schedule == "constant" and not cfg.nesterov and cfg.crop_pad == 4 and cfg.flip == "random"
    assert cfg.label_smoothing == 0 and not cfg.no_decay_1d and cfg.precision == "fp32"


def test_flags_override_recipe_and_none_does_not():
    cfg = resolve_config("tutorial", lr=0.05, epochs=None)
    assert cfg.lr == 0.05 and cfg.epochs == 10


@pytest.mark.parametrize("bad", [dict(lr=0), dict(lr=-1), dict(epochs=0), dict(batch_size=0),
                                 dict(batch_size=-4), dict(label_smoothing=1.0), dict(schedule="exponential")])
def test_bad_values_are_user_errors(bad):
    with pytest.raises(UserError):
        resolve_config("default", **bad)


def test_unknown_recipe_lists_choices():
    with pytest.raises(UserError, match="tutorial"):
        resolve_config("nope")


def test_every_recipe_documents_itself():
    for r in RECIPES.values():
        assert len(r.doc) > 40
        TrainConfig(**r.values)


def test_no_weight_decay_on_norm_and_bias():
    model = create_model("resnet20")
    groups = param_groups(model, 5e-4)
    decayed = sum(p.numel() for g in groups if g["weight_decay"] > 0 for p in g["params"])
    free = [p for g in groups if g["weight_decay"] == 0 for p in g["params"]]
    assert all(p.ndim < 2 for p in free)
    bn = sum(m.weight.numel() + m.bias.numel() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert sum(p.numel() for p in free) == bn + model.fc.bias.numel()
    assert decayed + sum(p.numel() for p in free) == sum(p.numel() for p in model.parameters())
    opt = build_sgd(model, 0.1, 0.9, 5e-4, nesterov=True, backbone_lr_mult=0.1)
    lrs = sorted({g["initial_lr"] for g in opt.param_groups})
    assert lrs == [pytest.approx(0.01), pytest.approx(0.1)]
    assert math.isclose(sum(len(g["params"]) for g in opt.param_groups), len(list(model.parameters())))


def test_progressive_sizes_split_the_run_in_equal_parts_and_are_validated():
    from resnetkit.training.trainer import progressive_size

    # 11 epochs over four sizes: parts of 3, 3, 3 and 2 epochs, full size last
    sizes = [progressive_size([20, 24, 28, 32], e, 11) for e in range(11)]
    assert sizes == [20] * 3 + [24] * 3 + [28] * 3 + [32] * 2
    assert [progressive_size([24, 32], e, 4) for e in range(4)] == [24, 24, 32, 32]
    assert progressive_size(None, 3, 10) is None and progressive_size([], 0, 1) is None
    assert resolve_config(progressive_sizes=[24, 32]).progressive_sizes == [24, 32]
    for bad in ([], [4, 32], [24.5]):
        with pytest.raises(UserError, match="progressive_sizes"):  # the Python spelling (str of the error)
            resolve_config(progressive_sizes=bad)
