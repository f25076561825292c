"""One ResNet builder for the whole family: stem, residual stages, pooled linear head.

``stem="imagenet"`` is the 7x7 stride-2 convolution + 3x3 max-pool of He et al. 2015 (Table 1);
``stem="cifar"`` is the 3x3 stride-1 convolution without pooling of section 4.2. Depth comes
from ``layers``, width from ``widths``/``width_mult``, ResNeXt and Wide ResNet-50 from
``groups``/``width_per_group`` exactly as in torchvision, pre-activation from the block type,
and the plain twins from ``plain=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import ClassifierAPI
from .blocks import (
    BasicBlock,
    Bottleneck,
    NormLayer,
    PreActBasicBlock,
    PreActBottleneck,
    make_shortcut,
)

BLOCKS: dict[str, type[nn.Module]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "preact_basic": PreActBasicBlock,
    "preact_bottleneck": PreActBottleneck,
}


class ResNet(ClassifierAPI):
    """A residual network (or its plain twin) built from one block type.

    Args:
        block: ``"basic"``, ``"bottleneck"``, ``"preact_basic"`` or ``"preact_bottleneck"``.
        layers: number of blocks per stage (stage ``i > 0`` halves the resolution).
        num_classes: classifier outputs; ``0`` gives a feature extractor (``fc`` is identity).
        in_channels: input image channels.
        stem: ``"imagenet"`` or ``"cifar"``.
        widths: base width of each stage (multiplied by the block's ``expansion``).
        stem_width: output channels of the stem (default: ``widths[0]``).
        width_mult: multiplies every width (Wide ResNets for CIFAR use 4, 8, 10).
        groups, width_per_group: ResNeXt cardinality and width per group (torchvision semantics).
        shortcut: ``"B"`` projection or ``"A"`` zero-padded identity when the shape changes.
        plain: drop every shortcut (the paper's plain networks).
        zero_init_residual: zero the last norm (or conv, pre-activation) of each residual branch
            so every block starts as the identity (Goyal et al. 2017).
        drop_rate: dropout before the classifier.
        block_dropout: dropout between the convolutions of each block (Wide ResNets use 0.3).
        norm_layer: normalisation constructor (default ``nn.BatchNorm2d``).
    """

    def __init__(
        self,
        block: str,
        layers: Sequence[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        stem: str = "imagenet",
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_width: int | None = None,
        width_mult: float = 1.0,
        groups: int = 1,
        width_per_group: int = 64,
        shortcut: str = "B",
        plain: bool = False,
        zero_init_residual: bool = False,
        drop_rate: float = 0.0,
        block_dropout: float = 0.0,
        norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
        if len(layers) != len(widths):
            raise ValueError(f"layers {list(layers)} and widths {list(widths)} differ in length")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        if num_classes < 0 or in_channels < 1:
            raise ValueError("num_classes must be >= 0 and in_channels >= 1")
        block_cls = BLOCKS[block]
        norm_layer = norm_layer or nn.BatchNorm2d
        widths = [max(1, int(round(w * width_mult))) for w in widths]
        stem_width = int(round((stem_width or widths[0]) * (width_mult if stem_width else 1.0)))
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.preact = block_cls.preact
        self.groups = groups
        self.base_width = width_per_group
        self._norm_layer = norm_layer

        # Stem. Pre-activation nets leave BN+ReLU to the first block and add a final BN+ReLU.
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, stem_width, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.Identity() if self.preact else norm_layer(stem_width)
        self.relu = nn.Identity() if self.preact else nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()

        self.inplanes = stem_width
        self.stage_names: list[str] = []
        for i, (n, w) in enumerate(zip(layers, widths)):
            stage = self._make_layer(block_cls, w, n, 1 if i == 0 else 2, shortcut, plain, block_dropout)
            self.add_module(f"layer{i + 1}", stage)
            self.stage_names.append(f"layer{i + 1}")
        self.num_features = self.inplanes
        self.final_norm = norm_layer(self.num_features) if self.preact else nn.Identity()
        self.final_act = nn.ReLU(inplace=True) if self.preact else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.drop_rate = drop_rate
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc: nn.Module = self._new_classifier(num_classes)
        # a plain net has no identity path: zeroing its branches would zero every feature
        self._init_weights(zero_init_residual and not plain)

    def _make_layer(
        self, block_cls: type[nn.Module], planes: int, blocks: int, stride: int,
        shortcut: str, plain: bool, dropout: float,
    ) -> nn.Sequential:
        out_planes = planes * block_cls.expansion
        downsample = None
        if not plain:
            norm = None if block_cls.preact else self._norm_layer
            downsample = make_shortcut(shortcut, self.inplanes, out_planes, stride, norm)
        elif stride != 1 or self.inplanes != out_planes:
            downsample = None  # plain twins: no shortcut at all, shapes change inside F only
        layers = []
        for i in range(blocks):
            layers.append(
                block_cls(
                    self.inplanes, planes, stride if i == 0 else 1, downsample if i == 0 else None,
                    groups=self.groups, base_width=self.base_width, norm_layer=self._norm_layer,
                    plain=plain, dropout=dropout,
                )
            )
            self.inplanes = out_planes
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """He (kaiming) normal init, fan-out, for convolutions (He et al. 2015b); BN to identity."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if hasattr(m, "residual_norms"):
                    for last in m.residual_norms():
                        nn.init.zeros_(last.weight)

    # -- model API (forward, get_classifier, reset_classifier: ClassifierAPI) ---------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and residual stages: the last feature map, ``(N, num_features, h, w)``."""
        self._check_input(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.final_act(self.final_norm(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling, dropout and the linear classifier."""
        x = torch.flatten(self.avgpool(x), 1)
        x = self.dropout(x)
        return x if pre_logits else self.fc(x)
