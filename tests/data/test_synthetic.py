"""Synthetic data: deterministic bytes, balanced classes, learnable but not trivial."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from resnetkit.data.prepare import prepare_data
from resnetkit.data.synthetic import CLASSES, make_synthetic
from resnetkit.errors import UserError


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    a, b = make_synthetic(500), make_synthetic(500)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    c = make_synthetic(500, seed=1)
    assert not torch.equal(a.train_images, c.train_images)
    assert not torch.equal(a.train_images[:100], a.test_images[:100])  # test split is its own draw


def test_shapes_and_balance() -> None:
    s = make_synthetic(1000, image_size=24)
    assert s.train_images.shape == (1000, 3, 24, 24) and s.test_images.shape == (200, 3, 24, 24)
    assert s.train_images.dtype == torch.uint8 and s.train_labels.dtype == torch.int64
    assert s.train_labels.bincount().tolist() == [100] * 10 and s.test_labels.bincount().tolist() == [20] * 10
    assert len(CLASSES) == 10 and len(set(CLASSES)) == 10


def test_learnable_by_a_linear_model_but_not_trivial() -> None:
    s = make_synthetic(2000, 1000)

    def features(x: torch.Tensor) -> torch.Tensor:  # 8x8 grid of mean colours, plus a bias column
        f = F.avg_pool2d(x.double().div(255), 4).flatten(1)
        return torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype)], 1)

    a, b = features(s.train_images), features(s.test_images)
    w = torch.linalg.solve(a.T @ a + torch.eye(a.shape[1], dtype=a.dtype), a.T @ F.one_hot(s.train_labels, 10).double())
    acc = ((b @ w).argmax(1) == s.test_labels).double().mean().item()
    assert 0.35 < acc < 0.9, acc  # ridge classifier: well above chance (0.1), yet far from solved
    # Images of one class differ a lot: per-pixel spread within a class, and no duplicates.
    cls0 = s.train_images[s.train_labels == 0].float().div(255)
    assert cls0.std(0).mean().item() > 0.15
    assert len({bytes(img.numpy()) for img in s.train_images}) == 2000


def test_prepare_data_synthetic_sources(tmp_path: Path) -> None:
    data = prepare_data("synthetic:300", image_size=16)
    assert data.name == "synthetic" and data.classes == CLASSES
    assert data.train_images.shape == (300, 3, 16, 16) and data.test_images.shape == (60, 3, 16, 16)
    assert all(0.2 < m < 0.7 for m in data.mean) and all(0.1 < s < 0.5 for s in data.std)
    assert data.fingerprint == prepare_data("synthetic:300", image_size=16).fingerprint
    default = prepare_data("synthetic")
    assert default.train_images.shape == (10000, 3, 32, 32) and default.test_images.shape == (2000, 3, 32, 32)
    assert os.listdir(os.environ["RESNETKIT_CACHE"]) == []  # generated, not cached
    with pytest.raises(UserError, match="malformed"):
        prepare_data("synthetic:lots")
    with pytest.raises(UserError, match="no images"):
        prepare_data("synthetic:0")
    with pytest.raises(UserError, match="does not exist"):  # a Path is always a path, never the keyword
        prepare_data(Path("synthetic"))
