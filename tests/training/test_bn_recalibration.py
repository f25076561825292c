"""Precise BatchNorm after the last step: what it computes, what it leaves alone, and how a run uses it."""

import pytest
import torch
from torch import nn

from resnetkit import api
from resnetkit.checkpoint import peek
from resnetkit.errors import UserError
from resnetkit.models.resnet_cpu import ResNetCPU
from resnetkit.training.config import resolve_config
from resnetkit.training.loop import recalibrate_batchnorm
from resnetkit.training.setup import recalibration_pick

CPU = torch.device("cpu")


def _batches(n: int, size: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=g) * (1 + k) + k, torch.zeros(size, dtype=torch.long))
            for k in range(n)]


def test_the_statistics_become_the_equal_average_of_the_batches_and_the_momentum_comes_back():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4, momentum=0.4)
    model = nn.Sequential(conv, bn).train()
    model(torch.randn(8, 3, 8, 8) * 5)  # running statistics from some earlier batch
    batches = _batches(3)
    assert recalibrate_batchnorm(model, batches, device=CPU, precision="fp32") == 1
    with torch.no_grad():
        outs = [conv(x) for x, _ in batches]
    means = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    variances = torch.stack([o.var((0, 2, 3), unbiased=True) for o in outs]).mean(0)
    torch.testing.assert_close(bn.running_mean, means, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, variances, rtol=1e-5, atol=1e-6)
    assert bn.momentum == 0.4 and model.training and int(bn.num_batches_tracked) == 1 + 3
    assert conv.weight.grad is None  # no gradient was taken


def test_a_model_in_eval_mode_is_recalibrated_in_trainings_modes_and_left_in_eval_mode():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    model = nn.Sequential(nn.Conv2d(3, 3, 1), bn).eval()  # as an EMA copy is kept
    assert recalibrate_batchnorm(model, _batches(2), device=CPU, precision="fp32") == 1
    assert not torch.equal(bn.running_mean, torch.zeros(3)) and not model.training and not bn.training


def test_layers_in_eval_mode_and_a_folded_frozen_stem_keep_their_statistics():
    torch.manual_seed(0)
    frozen, live = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
    frozen.running_mean.fill_(0.5)
    frozen.requires_grad_(False)  # as --freeze-backbone leaves it
    model = nn.Sequential(frozen.eval(), live.train())
    assert recalibrate_batchnorm(model, _batches(2), device=CPU, precision="fp32") == 1
    assert torch.equal(frozen.running_mean, torch.full((3,), 0.5)) and int(frozen.num_batches_tracked) == 0
    assert not torch.equal(live.running_mean, torch.zeros(3))

    net = ResNetCPU(whiten=True, stem_stride=1)
    net.init_from_data(torch.randn(64, 3, 32, 32))
    net.train()
    net(torch.randn(16, 3, 32, 32))
    net.freeze_stem()  # from now on the stem runs as one convolution on its running statistics
    stem = net.stem[1]
    kept = stem.running_mean.clone(), stem.running_var.clone()
    first = net.layers[0][0][2]
    before = first.running_mean.clone()
    batches = [(torch.randn(16, 3, 32, 32), torch.zeros(16, dtype=torch.long)) for _ in range(2)]
    assert recalibrate_batchnorm(net, batches, device=CPU, precision="fp32") == len(
        [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]) - 1
    assert torch.equal(stem.running_mean, kept[0]) and torch.equal(stem.running_var, kept[1])
    assert not torch.equal(first.running_mean, before)


def test_bn_recalibration_takes_a_number_of_images():
    with pytest.raises(UserError, match="bn_recalibration"):
        resolve_config(data="synthetic:8", bn_recalibration=-1)
    with pytest.raises(UserError, match="bn_recalibration"):
        resolve_config(data="synthetic:8", bn_recalibration=0.5)
    assert resolve_config("cpu-fast").bn_recalibration == 10240
    assert resolve_config("default").bn_recalibration == 0


def test_a_run_recalibrates_after_its_last_step_and_nothing_else_changes(tmp_path):
    opts = dict(data="synthetic:128", model="resnet20", epochs=1, batch_size=32, precision="fp32", report=False,
                progress=False)
    plain = api.train(out=tmp_path / "plain", **opts)
    recal = api.train(out=tmp_path / "recal", bn_recalibration=64, **opts)
    a, b = peek(tmp_path / "plain" / "last.pt")["model"], peek(tmp_path / "recal" / "last.pt")["model"]
    stats = [k for k in a if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(a[k], b[k]) for k in a if k not in stats and not k.endswith("num_batches_tracked"))
    assert all(not torch.equal(a[k], b[k]) for k in stats)  # every layer's statistics were set again
    # the recalibrated statistics are what the same images give the plain run's weights
    model = api.load_checkpoint(tmp_path / "plain" / "last.pt", "cpu", "raw").train()
    from resnetkit.data.prepare import prepare_data
    from resnetkit.runtime.loaders import eval_loader

    ds = prepare_data("synthetic:128")
    tx = ds.train_images
    pick = recalibration_pick(len(tx), 64, seed=0)
    loader = eval_loader(tx[pick], ds.train_labels[pick], batch_size=32, precision="fp32", device=CPU, mean=ds.mean,
                         std=ds.std)
    recalibrate_batchnorm(model, loader, device=CPU, precision="fp32")
    mine = model.state_dict()
    for k in stats:
        torch.testing.assert_close(mine[k], b[k], rtol=1e-4, atol=1e-5)
    assert recal.test["top1"] != plain.test["top1"] or recal.test["loss"] != plain.test["loss"]


def test_a_time_budget_keeps_time_for_the_recalibration():
    from types import SimpleNamespace

    from resnetkit.training.loop import RECALIBRATION_SPEEDUP
    from resnetkit.training.trainer import Trainer

    def budget(images: int, steps: int, spent: float) -> float:
        run = SimpleNamespace(budget=300.0, recalibration_images=images, cfg=SimpleNamespace(batch_size=256),
                              state=SimpleNamespace(global_step=steps))
        return Trainer.step_budget(run, spent)

    # 100 steps of 256 images in 20 s: 1,280 img/s of training, so 5,120 images take 5120 / (2.5 * 1280) s
    assert budget(5120, 100, 20.0) == pytest.approx(300 - 5120 / (RECALIBRATION_SPEEDUP * 1280))
    assert budget(0, 100, 20.0) == 300 and budget(5120, 0, 0.0) == 300  # off, or nothing measured yet
    assert budget(10 ** 9, 100, 20.0) == pytest.approx(270)  # never more than a tenth of the budget


def test_a_run_on_a_time_budget_recalibrates_on_its_clock(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="resnetkit.training.trainer"):
        res = api.train(out=tmp_path / "run", data="synthetic:256", model="resnet20", batch_size=32, precision="fp32",
                        time_budget=3, bn_recalibration=128, report=False, progress=False)
    assert "BatchNorm statistics of 19 layers set from 128 training images" in caplog.text
    assert 2 < res.train_seconds <= 3 + 1.0  # the pass ran inside the clock, which the steps left time for
