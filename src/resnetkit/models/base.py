"""The model API every resnetkit network shares (timm's convention): input checks,
``forward = forward_head(forward_features(x))``, and a replaceable classifier ``fc``."""

from __future__ import annotations

import torch
from torch import nn


class ClassifierAPI(nn.Module):
    """Mixin for networks with ``in_channels``, ``num_features`` and a linear head ``fc``."""

    in_channels: int
    num_features: int
    num_classes: int
    fc_bias: bool = True

    min_input_size = 1  # the smallest height and width the network takes (pooling layers set it)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(f"{type(self).__name__} takes images of at least {self.min_input_size}x"
                             f"{self.min_input_size} pixels, got {x.shape[-2]}x{x.shape[-1]}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def _new_classifier(self, num_classes: int, like: torch.Tensor | None = None) -> nn.Module:
        if not num_classes:
            return nn.Identity()
        kw = {} if like is None else {"device": like.device, "dtype": like.dtype}
        return nn.Linear(self.num_features, num_classes, bias=self.fc_bias, **kw)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one (same device and dtype)."""
        self.num_classes = num_classes
        self.fc = self._new_classifier(num_classes, next(self.parameters()))
