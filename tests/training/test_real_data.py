"""Learning on real data: a small ResNet on a subset of the JPEG CIFAR-10 must beat chance by far.

The bar was calibrated from real runs on this machine (see the module constant); a broken loss,
optimiser, augmentation or label pipeline lands near 10%.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from resnetkit.data.prepare import prepare_data
from resnetkit.training.config import resolve_config
from resnetkit.training.trainer import fit

# Calibrated on this CPU: resnet8 (resnet20 with one block per stage), 6,000 training images,
# 3 epochs -> 46.4% test top-1 over 2,000 test images (chance: 10%), 36 s.
MIN_TOP1 = 0.35


def _subset(data, n_train: int, n_test: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tr = torch.randperm(len(data.train_labels), generator=g)[:n_train].sort().values
    te = torch.randperm(len(data.test_labels), generator=g)[:n_test].sort().values
    return dataclasses.replace(data, name=f"{data.name}-subset", train_images=data.train_images[tr],
                               train_labels=data.train_labels[tr], test_images=data.test_images[te],
                               test_labels=data.test_labels[te])


@pytest.mark.slow  # about 75 s on 2 cores: run by CI with -m slow, not by the default run
def test_small_resnet_learns_jpeg_cifar10_subset(cifar_jpeg, session_cache, tmp_path):
    data = _subset(prepare_data(cifar_jpeg, cache_dir=session_cache), 6000, 2000)
    assert torch.bincount(data.train_labels, minlength=10).min() > 450  # roughly balanced subset
    cfg = resolve_config("default", model="resnet20", model_kwargs={"layers": (1, 1, 1)}, epochs=3,
                         batch_size=128, lr=0.2, eval_every=0, out=str(tmp_path / "run"), precision="fp32")
    result = fit(cfg, data=data)
    print(f"real-data subset: test top-1 {result.test_top1:.4f}")
    assert result.test["count"] == 2000
    assert result.test_top1 >= MIN_TOP1, f"test top-1 {result.test_top1:.3f} below the calibrated {MIN_TOP1}"
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
