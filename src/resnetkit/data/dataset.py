"""The one in-memory form every data source is turned into: uint8 image tensors and labels."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageData:
    """A prepared dataset: both splits as uint8 ``(N, 3, H, W)`` tensors on the CPU.

    ``mean``/``std`` are per-channel statistics of the training images in [0, 1] units, used
    for normalisation in training and stored in checkpoints so prediction normalises the same.
    ``fingerprint`` identifies the source (path, size, mtime, options) for cache validation.
    """

    name: str
    classes: list[str]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fingerprint: str = ""
    skipped: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])
