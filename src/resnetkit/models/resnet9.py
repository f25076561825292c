"""ResNet-9: the small, fast residual network of the CIFAR-10 speed records.

Page 2018 ("How to train your ResNet", the DAWNBench-winning Myrtle net): a 3x3 prep conv, three
conv-BN-ReLU-maxpool stages with a residual pair of 3x3 convs after the first and the last, global
max pooling and a linear classifier whose logits are scaled by 1/8. It trades depth for width,
which suits GPUs; ``width_mult`` scales it down for CPUs.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import ClassifierAPI
from .blocks import NormLayer, conv3x3


def _cbr(c_in: int, c_out: int, norm: NormLayer, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [conv3x3(c_in, c_out), norm(c_out), nn.ReLU(inplace=True)]
    if pool:
        layers.insert(1, nn.MaxPool2d(2))  # pool before BN: 4x fewer pixels to normalise
    return nn.Sequential(*layers)


class ResidualPair(nn.Module):
    """``x + cbr(cbr(x))``: the residual unit of ResNet-9 (identity shortcut, post-ReLU branch)."""

    def __init__(self, channels: int, norm: NormLayer, plain: bool = False) -> None:
        super().__init__()
        self.branch = nn.Sequential(_cbr(channels, channels, norm), _cbr(channels, channels, norm))
        self.plain = plain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        return out if self.plain else x + out


class ResNet9(ClassifierAPI):
    """ResNet-9 for small images. ``widths`` = (prep, layer1, layer2, layer3)."""

    fc_bias = False
    min_input_size = 8  # three 2x2 max-pools

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths: tuple[int, ...] = (64, 128, 256, 512),
                 width_mult: float = 1.0, logit_scale: float = 0.125, plain: bool = False,
                 drop_rate: float = 0.0, norm_layer: NormLayer | None = None,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        norm = norm_layer or nn.BatchNorm2d
        w = [max(8, int(round(c * width_mult))) for c in widths]
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.stage_names = ["prep", "layer1", "layer2", "layer3"]
        self.prep = _cbr(in_channels, w[0], norm)
        self.layer1 = nn.Sequential(_cbr(w[0], w[1], norm, pool=True), ResidualPair(w[1], norm, plain))
        self.layer2 = _cbr(w[1], w[2], norm, pool=True)
        self.layer3 = nn.Sequential(_cbr(w[2], w[3], norm, pool=True), ResidualPair(w[3], norm, plain))
        self.num_features = w[3]
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.logit_scale = logit_scale
        self.fc: nn.Module = self._new_classifier(num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, ResidualPair):
                    nn.init.zeros_(m.branch[1][1].weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.layer3(self.layer2(self.layer1(self.prep(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.pool(x), 1))
        return x if pre_logits else self.fc(x) * self.logit_scale
