"""ResNet-CPU: a small residual network sized by measured cost per image on CPUs.

On a CPU the time of a training step follows the multiply-adds at each resolution, and small
layers run far below peak: ResNet-20 (41M multiply-adds per image, 16-64 channels at full
resolution) trains at about 290 img/s in fp32 on 2 AVX2 cores, ResNet-9 (Page 2018) at about 40.
This network therefore

- downsamples first: a 2x2 stride-2 "patchify" stem (the patch embedding of ViT, Dosovitskiy et
  al. 2021, and ConvNeXt, Liu et al. 2022; a 2x2 first layer as in airbench, Jordan 2024), so no
  3x3 convolution ever runs at 32x32;
- then follows ResNet-9's layout (Page 2018): per stage a 3x3 conv, a 2x2 max-pool, BatchNorm
  and ReLU, with an identity residual pair of 3x3 convs after chosen stages;
- uses channel widths that are multiples of 16 (oneDNN's AVX2 / AVX-512 / AMX blocks);
- ends with global max pooling and a linear head whose logits are scaled by 1/8 (Page 2018);
- takes the weight gradient of its 3x3 convolutions on maps of at most 16 pixels from one GEMM
  when it trains in bf16 on a CPU (:mod:`.small_conv`: the deep network's last pair trains 2x
  faster on an AMX Xeon).

With ``whiten=True`` the stem's 2x2 filters are not learned: :meth:`ResNetCPU.init_from_data`
sets them once, before training, to the whitening transform of the training set's 2x2 patches
(the eigenvectors of the patch covariance scaled by the inverse square root of their eigenvalues,
each with its negative so the ReLU keeps both signs: patch whitening as in Coates and Ng 2011,
used as a first-layer initialisation by tysam-code's hlb-CIFAR10 2023 and Jordan 2024), and they
stay frozen. The first layer
then sees decorrelated, unit-variance inputs from the first step, which speeds up the first epochs.

BatchNorm uses a fast-moving average (PyTorch ``momentum`` 0.4, i.e. 0.6 of the old value kept)
so its running statistics track weights that change quickly in a run of a few epochs (airbench
keeps 0.4 of the old value; Jordan 2024). Nothing here is CPU-specific: it runs unchanged on GPUs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import ClassifierAPI
from .small_conv import Conv3x3

ACTIVATIONS = ("relu", "gelu")


def _activation(name: str) -> nn.Module:
    return nn.GELU() if name == "gelu" else nn.ReLU(inplace=True)


def _conv_pool_bn_act(c_in: int, c_out: int, pool: bool, bn_momentum: float, activation: str = "relu"
                       ) -> nn.Sequential:
    layers: list[nn.Module] = [Conv3x3(c_in, c_out)]
    if pool:
        layers.append(nn.MaxPool2d(2))  # pool before BN: 4x fewer pixels to normalise (Page 2018)
    layers += [nn.BatchNorm2d(c_out, momentum=bn_momentum), _activation(activation)]
    return nn.Sequential(*layers)


class ResidualPair(nn.Module):
    """``x + f(f(x))`` with ``f`` = conv3x3-BN-ReLU (or GELU): ResNet-9's residual unit (identity shortcut)."""

    def __init__(self, channels: int, bn_momentum: float, activation: str = "relu") -> None:
        super().__init__()
        self.branch = nn.Sequential(_conv_pool_bn_act(channels, channels, False, bn_momentum, activation),
                                    _conv_pool_bn_act(channels, channels, False, bn_momentum, activation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class ResNetCPU(ClassifierAPI):
    """Patchify stem, then ``len(widths)`` conv-pool stages; ``residual[i]`` adds a pair after stage i.

    ``stem_width`` channels come out of the 2x2 stride-2 stem; stage ``i`` maps to ``widths[i]``
    channels and halves the resolution, so a 32x32 image is 16x16 after the stem and
    ``16 / 2**len(widths)`` at the end (global max pooling makes any size work).
    ``stem_stride=1`` keeps the first stage at full resolution (31x31 after the 2x2 stem, as in
    airbench, Jordan 2024): about 2.3x the cost per image, for more accuracy per epoch.
    ``activation="gelu"`` uses GELU (Hendrycks and Gimpel 2016, as airbench does) instead of ReLU.
    """

    fc_bias = False

    def __init__(self, num_classes: int = 10, in_channels: int = 3, stem_width: int = 24,
                 widths: tuple[int, ...] = (64, 128, 256), residual: tuple[bool, ...] = (False, True, False),
                 bn_momentum: float = 0.4, logit_scale: float = 0.125, whiten: bool = False,
                 stem_stride: int = 2, activation: str = "relu") -> None:
        super().__init__()
        widths, residual = tuple(int(w) for w in widths), tuple(bool(r) for r in residual)
        if len(widths) != len(residual) or not widths:
            raise ValueError(f"widths {widths} and residual {residual} need the same, non-zero length")
        if not 0 < bn_momentum <= 1:
            raise ValueError(f"bn_momentum must be in (0, 1], got {bn_momentum}")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.whiten = whiten
        # the 2x2 stem leaves (H - 2) // stride + 1 pixels, and each stage's max-pool halves them
        self.min_input_size = stem_stride * (2 ** len(widths) - 1) + 2
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_width, 2, stride=stem_stride, bias=False),
                                  nn.BatchNorm2d(stem_width, momentum=bn_momentum), _activation(activation))
        stages = []
        c = stem_width
        for w, res in zip(widths, residual):
            parts: list[nn.Module] = [_conv_pool_bn_act(c, w, True, bn_momentum, activation)]
            if res:
                parts.append(ResidualPair(w, bn_momentum, activation))
            stages.append(nn.Sequential(*parts))
            c = w
        self.layers = nn.Sequential(*stages)
        self.stage_names = ["stem"] + [f"layers.{i}" for i in range(len(widths))]
        self.num_features = c
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.logit_scale = logit_scale
        self.fc: nn.Module = self._new_classifier(num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if whiten:
            self.stem[0].weight.requires_grad_(False)  # set by init_from_data, then frozen
        self._fold_stem = False  # set by freeze_stem

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the frozen stem to the whitening transform of ``images``' 2x2 patches (no-op unless ``whiten``).

        ``images`` are normalised training images ``(N, C, H, W)``; a few thousand are plenty.
        """
        if not self.whiten:
            return
        conv = self.stem[0]
        x = images.to(conv.weight.device, torch.float32)
        patches = x.unfold(2, 2, 2).unfold(3, 2, 2)  # N, C, H/2, W/2, 2, 2
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, conv.in_channels * 4)
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        eigval, eigvec = torch.linalg.eigh(cov.double())  # ascending
        # the k directions of largest variance, each with its negative; a stem wider than the 2 * 4C
        # filters that exist (grayscale input: 8) repeats them
        k = max(1, min(conv.out_channels // 2, conv.in_channels * 4))
        eigval, eigvec = eigval.flip(0)[:k], eigvec.flip(1)[:, :k]
        filters = (eigvec / (eigval + eps).sqrt()).T.float().reshape(k, conv.in_channels, 2, 2)
        filters = torch.cat([filters, -filters])
        reps = -(-conv.out_channels // len(filters))
        conv.weight.copy_(filters.repeat(reps, 1, 1, 1)[:conv.out_channels])

    def freeze_stem(self) -> bool:
        """Stop training the stem (its BatchNorm's scale and shift; the filters too unless whitened, where they are
        frozen already). True if anything was still training.

        Nothing before the first stage then needs a gradient, so the backward pass skips the first stage's input
        gradient and the stem's own: a step of ``resnet_cpu_fullres`` ran 1.14x faster on a Zen 4 EPYC
        (docs/speed-cpu.md). In training the frozen stem then runs as one convolution (:meth:`_frozen_stem`).
        """
        trainable = [p for p in self.stem.parameters() if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)
        bn = self.stem[1]
        # running statistics that never saw a batch (a stem frozen from the start) are no normalisation
        self._fold_stem = isinstance(bn, nn.BatchNorm2d) and bool(bn.num_batches_tracked)
        return bool(trainable)

    def _frozen_stem(self, x: torch.Tensor) -> torch.Tensor | None:
        """The stem as one convolution with a bias while it trains frozen, else None.

        A frozen stem normalises with its BatchNorm's running statistics (as detection codebases' frozen
        BatchNorm does) instead of each batch's: its input and filters no longer change, so those statistics
        are what the batches would give, and the 24-channel BatchNorm pass over the full-resolution map (5 ms
        of a 210 ms ``resnet_cpu_fullres_deep`` step on an AMX Xeon) folds into the convolution.
        """
        conv, bn = self.stem[0], self.stem[1]
        if (not self.training or not self._fold_stem or any(p.requires_grad for p in self.stem.parameters())
                or torch.jit.is_tracing() or torch.jit.is_scripting()):
            return None
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
        bias = bn.bias - bn.running_mean * scale
        return self.stem[2](F.conv2d(x, conv.weight * scale.view(-1, 1, 1, 1), bias, conv.stride, conv.padding))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        stem = self._frozen_stem(x)
        return self.layers(self.stem(x) if stem is None else stem)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.pool(x), 1)
        return x if pre_logits else self.fc(x) * self.logit_scale
