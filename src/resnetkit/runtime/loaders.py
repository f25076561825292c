"""The evaluation loader: (images, labels) in uint8 -> normalised batches on the device.

Every evaluation in the package (training's validation and test passes, ``eval``, the studies,
benchmarks) builds its loader here, so the batch dtype follows the precision in one place.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.loader import DeviceLoader


def batch_dtype(precision: str) -> torch.dtype:
    """The dtype batches are served in: bf16 under bf16 autocast, else fp32."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def eval_loader(images: torch.Tensor, labels: torch.Tensor, *, device: torch.device, precision: str,
                mean: Sequence[float], std: Sequence[float], batch_size: int = 256, channels_last: bool = False,
                seed: int = 0, rank: int = 0, world_size: int = 1) -> DeviceLoader:
    """An un-augmented loader over every image once (sharded without padding across ``world_size``)."""
    return DeviceLoader(images, labels, batch_size=batch_size, device=device, train=False, mean=mean, std=std,
                        seed=seed, dtype=batch_dtype(precision), channels_last=channels_last, rank=rank,
                        world_size=world_size)
