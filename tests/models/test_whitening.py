"""resnet_cpu's patch-whitening stem: set from data, frozen, and set by the trainer on fresh runs only."""

from __future__ import annotations

import pytest
import torch

from resnetkit.models import create_model


def _correlated_images(n: int = 400, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(n, 1, size, size, generator=g)
    smooth = torch.nn.functional.avg_pool2d(base, 3, 1, 1)  # neighbouring pixels correlate
    return torch.cat([smooth, 0.5 * smooth + 0.1 * torch.randn(n, 1, size, size, generator=g),
                      torch.randn(n, 1, size, size, generator=g)], 1)


def test_stem_outputs_are_white_after_init():
    x = _correlated_images()
    m = create_model("resnet_cpu", whiten=True)
    m.init_from_data(x)
    y = m.stem[0](x)  # N, 24, 8, 8
    feats = y.permute(1, 0, 2, 3).reshape(24, -1)
    cov = torch.cov(feats[:12])
    # decorrelated, unit variance (eps keeps the smallest directions a little under 1)
    assert (cov - torch.diag(torch.diagonal(cov))).abs().max() < 1e-3
    assert torch.diagonal(cov).min() > 0.9 and torch.diagonal(cov).max() < 1.01
    torch.testing.assert_close(m.stem[0].weight[12:], -m.stem[0].weight[:12])
    # before init the input patches are far from white
    raw = x.unfold(2, 2, 2).unfold(3, 2, 2).permute(1, 4, 5, 0, 2, 3).reshape(12, -1)
    assert torch.cov(raw).diagonal().max() / torch.cov(raw).diagonal().min() > 10


def test_whitened_stem_is_frozen_and_plain_stem_is_not():
    assert create_model("resnet_cpu", whiten=True).stem[0].weight.requires_grad is False
    plain = create_model("resnet_cpu", whiten=False)
    before = plain.stem[0].weight.clone()
    plain.init_from_data(_correlated_images(20))  # a no-op without whiten
    assert plain.stem[0].weight.requires_grad and torch.equal(before, plain.stem[0].weight)


@pytest.mark.parametrize(("in_channels", "stem_width"), [(1, 24), (3, 23), (3, 32), (1, 5)])
def test_any_stem_width_and_channel_count_get_whitening_filters(in_channels, stem_width):
    x = _correlated_images(50)[:, :in_channels]
    m = create_model("resnet_cpu", whiten=True, in_channels=in_channels, stem_width=stem_width)
    m.init_from_data(x)
    w = m.stem[0].weight
    assert w.shape[0] == stem_width and torch.isfinite(w).all()
    k = min(stem_width // 2, 4 * in_channels)
    torch.testing.assert_close(w[k:2 * k], -w[:k])
    if stem_width > 2 * k:  # more channels than filters: the filters repeat
        torch.testing.assert_close(w[2 * k:], w[:stem_width - 2 * k])


def test_trainer_whitens_fresh_runs_and_keeps_the_stem_frozen(tmp_path):
    import resnetkit

    r = resnetkit.train("resnet_cpu", dataset="synthetic", epochs=1, max_steps=3, batch_size=16, out=str(tmp_path / "run"),
                        model_kwargs={"whiten": True}, eval_every=0, progress=False, precision="fp32",
                        report=False)
    ckpt = torch.load(r.out_dir / "last.pt", weights_only=True)
    w = ckpt["model"]["stem.0.weight"]
    torch.testing.assert_close(w[12:], -w[:12])  # the whitening filters, untouched by the optimizer
    fresh = create_model("resnet_cpu", whiten=True).stem[0].weight
    assert not torch.allclose(w, fresh)
