"""Mixup/cutmix: a plan that depends only on (seed, epoch), exact batch formulas, the soft-target loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resnetkit.data.mix import MixConfig, Mixer, cutmix_box, mix_batch, plan_epoch
from resnetkit.training.losses import mixed_targets, soft_target_cross_entropy


def test_plan_is_a_function_of_seed_and_epoch() -> None:
    cfg = MixConfig(mixup=0.2, cutmix=1.0)
    a, b = plan_epoch(cfg, 3, 5, 40), plan_epoch(cfg, 3, 5, 40)
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("mode", "lam", "cy", "cx"))
    c = plan_epoch(cfg, 3, 6, 40)
    assert not np.array_equal(a.lam, c.lam)
    # both kinds are used, about half each (switch_prob 0.5), never "none" with prob 1
    assert set(a.mode.tolist()) == {1, 2}
    # the box centres are drawn whatever the settings: switching mixup off keeps them
    d = plan_epoch(MixConfig(cutmix=1.0), 3, 5, 40)
    assert np.array_equal(a.cx, d.cx) and set(d.mode.tolist()) == {2}
    assert set(plan_epoch(MixConfig(cutmix=1.0, prob=0.0), 3, 5, 40).mode.tolist()) == {0}


def test_mixup_batch_is_the_convex_combination_with_the_reversed_batch() -> None:
    x = torch.randn(6, 3, 8, 8)
    plan = plan_epoch(MixConfig(mixup=0.4), 0, 0, 4)
    out, lam = mix_batch(x.clone(), plan, 2)
    assert lam == pytest.approx(float(plan.lam[2])) and 0 < lam < 1
    assert torch.allclose(out, lam * x + (1 - lam) * x.flip(0), atol=1e-6)


def test_cutmix_pastes_a_box_whose_area_gives_lam() -> None:
    x = torch.arange(4 * 1 * 10 * 10, dtype=torch.float32).view(4, 1, 10, 10).contiguous(
        memory_format=torch.channels_last)
    plan = plan_epoch(MixConfig(cutmix=1.0), 1, 0, 8)
    for k in range(8):
        out, lam = mix_batch(x, plan, k)
        assert out.is_contiguous(memory_format=torch.channels_last)
        from_partner = (out != x).float().mean().item()  # every pasted pixel differs (distinct values)
        assert lam == pytest.approx(1 - from_partner)
    assert cutmix_box(32, 32, 0.75, 0.5, 0.5)[:4] == (8, 24, 8, 24)  # side sqrt(0.25) = half, centred


def test_mixer_returns_partner_labels() -> None:
    m = Mixer(MixConfig(mixup=1.0), seed=0)
    m.set_epoch(0, 3)
    y = torch.tensor([0, 1, 2, 3])
    _, yb, lam = m(torch.zeros(4, 3, 4, 4), y, 1)
    assert yb.tolist() == [3, 2, 1, 0] and 0 < lam < 1


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_soft_target_cross_entropy_matches_pytorch_and_is_linear_in_lam(smoothing: float) -> None:
    torch.manual_seed(0)
    logits = torch.randn(8, 10)
    ya, yb = torch.randint(0, 10, (8,)), torch.randint(0, 10, (8,))
    one = soft_target_cross_entropy(logits, mixed_targets(ya, ya, 0.3, 10, smoothing))
    assert one.item() == pytest.approx(F.cross_entropy(logits, ya, label_smoothing=smoothing).item(), rel=1e-6)
    mixed = soft_target_cross_entropy(logits, mixed_targets(ya, yb, 0.3, 10, smoothing))
    expect = (0.3 * F.cross_entropy(logits, ya, label_smoothing=smoothing)
              + 0.7 * F.cross_entropy(logits, yb, label_smoothing=smoothing))
    assert mixed.item() == pytest.approx(expect.item(), rel=1e-6)
