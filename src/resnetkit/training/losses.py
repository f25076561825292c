"""Cross entropy against soft targets, for mixup/cutmix with optional label smoothing.

A mixed image ``lam * a + (1 - lam) * b`` is trained towards ``lam * t(a) + (1 - lam) * t(b)``,
where ``t`` is the (label-smoothed) one-hot target; cross entropy is linear in the target, so
this equals ``lam * CE(a) + (1 - lam) * CE(b)`` (Zhang et al. 2018, mixup; Yun et al. 2019,
CutMix). Label smoothing puts ``1 - s + s/K`` on the label and ``s/K`` elsewhere, as PyTorch's
``F.cross_entropy(label_smoothing=s)`` (Szegedy et al. 2016).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def smoothed_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(N, K)`` targets: ``1 - s + s/K`` at each label, ``s/K`` elsewhere."""
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, dtype=dtype, device=labels.device)
    return out.scatter_(1, labels[:, None], 1.0 - smoothing + off)


def mixed_targets(labels_a: torch.Tensor, labels_b: torch.Tensor, lam: float, num_classes: int,
                  smoothing: float = 0.0) -> torch.Tensor:
    """Soft targets of images mixed with weight ``lam`` on ``labels_a``."""
    a = smoothed_one_hot(labels_a, num_classes, smoothing)
    b = smoothed_one_hot(labels_b, num_classes, smoothing)
    return a.mul_(lam).add_(b, alpha=1.0 - lam)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_k targets_k * log softmax(logits)_k`` (float32)."""
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(1).mean()
