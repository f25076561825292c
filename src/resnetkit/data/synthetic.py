"""Offline, learnable, seed-deterministic data: ten shape classes drawn with torch ops.

Each class is a shape (disk, square, ring, ...) drawn at a random position, scale and small
rotation, in a colour pulled towards a class colour but jittered, over a random background, with
pixel noise. Shape and colour both carry the label, neither perfectly, so a linear model beats
chance clearly and a small CNN learns it well; it lets tests and demos train without downloads.
"""

from __future__ import annotations

import math
import re

import torch

from ..errors import UserError
from .cache import Splits

CLASSES = ["disk", "square", "ring", "cross", "triangle", "diamond", "hstripes", "vstripes", "checker", "xcross"]
DEFAULT_TRAIN = 10_000

# One base colour per class (RGB in [0, 1]); images mix 60 % of it with 40 % random colour.
_PALETTE = torch.tensor([
    [0.9, 0.2, 0.2], [0.2, 0.8, 0.2], [0.2, 0.3, 0.9], [0.9, 0.9, 0.2], [0.9, 0.3, 0.9],
    [0.2, 0.9, 0.9], [0.9, 0.6, 0.1], [0.5, 0.2, 0.8], [0.6, 0.6, 0.6], [0.1, 0.5, 0.4],
])


def parse_synthetic(source: str) -> int | None:
    """Training-set size for ``"synthetic"`` / ``"synthetic:N"``; ``None`` if ``source`` is not one."""
    m = re.fullmatch(r"synthetic(?::(\d+))?", source.strip())
    if m is None:
        if source.strip().startswith("synthetic:"):
            raise UserError(f"Synthetic source {source!r} is malformed; write 'synthetic' or 'synthetic:N' with N a "
                            f"positive number of training images.")
        return None
    n = int(m.group(1)) if m.group(1) else DEFAULT_TRAIN
    if n < 1:
        raise UserError(f"Synthetic source {source!r} asks for no images; use 'synthetic:N' with N >= 1.")
    return n


def _mask(cls: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Shape ``cls`` in unit coordinates (the shape's radius is 1)."""
    a, b = u.abs(), v.abs()
    box = (a <= 1) & (b <= 1)
    if cls == 0:
        return u * u + v * v <= 1
    if cls == 1:
        return (a <= 0.8) & (b <= 0.8)
    if cls == 2:
        r = (u * u + v * v).sqrt()
        return (r >= 0.55) & (r <= 1)
    if cls == 3:
        return ((a <= 0.28) | (b <= 0.28)) & box
    if cls == 4:
        return (v >= -0.9) & (v <= 0.8) & (a <= (v + 0.9) / 1.7)
    if cls == 5:
        return a + b <= 1
    if cls == 6:
        return box & (torch.sin(v * math.pi * 2.5) > 0)
    if cls == 7:
        return box & (torch.sin(u * math.pi * 2.5) > 0)
    if cls == 8:
        return box & (torch.sin(u * math.pi * 1.5) * torch.sin(v * math.pi * 1.5) > 0)
    return (((u - v).abs() <= 0.35) | ((u + v).abs() <= 0.35)) & box


def _draw(labels: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """uint8 ``(N, 3, size, size)`` images for ``labels``, every random draw from ``gen``."""
    n = labels.numel()

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen)

    cx, cy = 0.3 + 0.4 * rand(n), 0.3 + 0.4 * rand(n)
    radius = (0.2 + 0.15 * rand(n)) * size
    theta = (rand(n) - 0.5) * 0.7
    fg = (0.6 * _PALETTE[labels] + 0.4 * rand(n, 3)).clamp(0, 1)
    bg = rand(n, 3) * 0.8

    coords = torch.arange(size, dtype=torch.float32) + 0.5
    x = (coords[None, None, :] - (cx * size)[:, None, None]) / radius[:, None, None]
    y = (coords[None, :, None] - (cy * size)[:, None, None]) / radius[:, None, None]
    cos, sin = theta.cos()[:, None, None], theta.sin()[:, None, None]
    u, v = cos * x + sin * y, cos * y - sin * x
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    for cls in range(len(CLASSES)):
        idx = (labels == cls).nonzero().squeeze(1)
        if idx.numel():
            mask[idx] = _mask(cls, u[idx], v[idx])
    img = torch.where(mask[:, None], fg[:, :, None, None], bg[:, :, None, None])
    img += (rand(n, 1, size, size) - 0.5) * 0.2  # grey noise, uniform: std 0.058
    return img.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def _split(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced shuffled labels and their images, drawn in chunks to bound memory."""
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % len(CLASSES))[torch.randperm(n, generator=gen)]
    chunk = max(1, (1 << 22) // (size * size))
    images = torch.cat([_draw(labels[i:i + chunk], size, gen) for i in range(0, n, chunk)])
    return images, labels.to(torch.int64)


def make_synthetic(num_train: int = DEFAULT_TRAIN, num_test: int | None = None, *, image_size: int = 32,
                   seed: int = 0) -> Splits:
    """Balanced train/test splits; the same arguments give the same bytes on every call.

    ``num_test`` defaults to a fifth of ``num_train`` (2000 for the default 10000), at least 10.
    """
    if image_size < 8:
        raise UserError(f"image_size {image_size} is too small for synthetic data; use 8 or more.")
    if num_test is None:
        num_test = max(len(CLASSES), -(-num_train // 5))
    xtr, ytr = _split(num_train, image_size, seed)
    xte, yte = _split(num_test, image_size, seed + 1_000_003)
    return Splits(list(CLASSES), xtr, ytr, xte, yte, [])
