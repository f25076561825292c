"""Weight EMA: the warm-up rule, the exact update, BatchNorm buffers, and an exact state round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnetkit.errors import UserError
from resnetkit.training.ema import ModelEma


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


def test_decay_warms_up_like_tensorflow_num_updates() -> None:
    ema = ModelEma(_net(), 0.999)
    assert ema.decay_at(0) == pytest.approx(0.1)
    assert ema.decay_at(8) == pytest.approx(0.5)
    assert ema.decay_at(10**6) == 0.999  # capped at the asked decay
    assert ModelEma(_net(), 0.9).decay_at(80) == 0.9  # (1+80)/(90) = 0.9 from there on


def test_update_is_the_exact_lerp_and_buffers_are_averaged_counts_copied() -> None:
    net = _net()
    ema = ModelEma(net, 0.99)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net[1].running_mean.fill_(2.0)
    net[1].num_batches_tracked.fill_(7)
    ema.update(net)  # first update: decay 0.1
    w = ema.module.state_dict()
    assert torch.equal(w["0.weight"], start["0.weight"].lerp(net[0].weight, 0.9))
    assert torch.allclose(w["1.running_mean"], torch.full((4,), 0.1 * 0.0 + 0.9 * 2.0))
    assert int(w["1.num_batches_tracked"]) == 7
    assert ema.updates == 1
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_state_dict_round_trip_continues_bitwise() -> None:
    net = _net()
    a = ModelEma(net, 0.95, every=2)
    for _ in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(1.01)
        a.update(net)
    b = ModelEma(_net(), 0.95, every=2)
    b.load_state_dict(a.state_dict())
    for e in (a, b):
        e.update(net)
    assert b.updates == a.updates == 4
    sa, sb = a.module.state_dict(), b.module.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.due(4) and not a.due(5)


def test_bad_decay_is_one_sentence() -> None:
    with pytest.raises(UserError, match="--ema takes a decay between 0 and 1"):
        ModelEma(_net(), 1.0)
