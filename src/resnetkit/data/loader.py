"""Device-resident batched loader: the uint8 dataset lives on the training device.

Each epoch is a seeded permutation; crop/flip, brightness/contrast jitter, cutout and
normalisation run per batch on the device, on whole batches (airbench's approach, Jordan 2024),
so no worker processes and no per-image Python are involved. All randomness of epoch ``e`` comes from a CPU generator seeded
with a hash of ``(seed, e)`` and is drawn for the whole epoch up front (a few integers per
image), which makes every batch reproducible, independent of the device and of global RNG
state, and lets a run resume exactly in the middle of an epoch with ``skip_to``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from ..errors import UserError
from .augment import (
    AugmentConfig,
    alternating_flip_mask,
    apply_cutout,
    apply_jitter,
    batch_crop,
    cutout_params,
    jitter_params,
    normalize_params,
    normalize_with,
    random_crop_params,
    random_flip_mask,
)

log = logging.getLogger(__name__)


def _derived_seed(seed: int, stream: str, epoch: int = 0) -> int:
    """A 63-bit seed that depends only on ``(seed, stream, epoch)``, well mixed (BLAKE2b)."""
    digest = hashlib.blake2b(f"resnetkit-loader:{stream}:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def dataset_fits(images: torch.Tensor, device: torch.device | str, fraction: float = 0.5) -> bool:
    """Whether ``images`` can stay resident on ``device``: under ``fraction`` of its free memory.

    CPU (and other host-memory devices): available RAM from ``os.sysconf``; CUDA: free memory
    from ``torch.cuda.mem_get_info``. The rest is left for the model, activations and batches.
    """
    dev = torch.device(device)
    need = images.numel() * images.element_size()
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
    else:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # not POSIX: assume it fits, log why
            log.debug("cannot read available memory on this platform; assuming the data fits")
            return True
    return need < fraction * free


@dataclass
class _EpochPlan:
    """This rank's samples for one epoch in serving order; batch k is rows ``[kB, (k+1)B)``."""

    index: torch.Tensor  # dataset row of each sample
    dy: torch.Tensor | None = None
    dx: torch.Tensor | None = None
    flip: torch.Tensor | None = None
    cy: torch.Tensor | None = None
    cx: torch.Tensor | None = None
    shift: torch.Tensor | None = None  # brightness
    scale: torch.Tensor | None = None  # contrast


class DeviceLoader:
    """Serves ``(inputs, labels)`` batches from a uint8 ``(N, C, H, W)`` dataset on ``device``.

    ``batch_size`` is per rank. Train mode shuffles and augments (``augment=None`` means the
    default ``AugmentConfig``); rank ``r`` of ``world_size`` W serves, at step k, the slice
    ``[kG + rB, kG + (r+1)B)`` of the shared epoch permutation (G = B*W), so the global batch
    is the same for any W and every rank gets the same number of batches. With
    ``drop_last=False`` the last global batch is partial; for W > 1 it is padded with the
    epoch's first samples so that every rank still steps together (as DistributedSampler).
    Eval mode neither shuffles nor augments: rank r serves images ``r::W`` in order, each
    image exactly once over all ranks.

    Crop padding is applied to the uint8 image, so zero fill is black (as torchvision's
    RandomCrop before Normalize); cutout is applied after normalisation (DeVries & Taylor).
    All of an epoch's draws happen whatever the config, so switching e.g. cutout on or off
    leaves that epoch's permutation, crops and flips unchanged.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        device: torch.device | str = "cpu",
        train: bool = True,
        augment: AugmentConfig | None = None,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        seed: int = 0,
        drop_last: bool | None = None,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise UserError(f"the loader needs uint8 images shaped (N, C, H, W), got {images.dtype} {tuple(images.shape)}.")
        if labels.dim() != 1 or len(labels) != len(images) or labels.dtype.is_floating_point:
            raise UserError(f"labels must be {len(images)} integers, one per image, got {labels.dtype} {tuple(labels.shape)}.")
        if len(images) == 0:
            raise UserError("the dataset is empty; there are no images to load.")
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}.")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is not valid for a world size of {world_size}.")
        self.device = torch.device(device)
        self.train = train
        self.augment = (augment or AugmentConfig()) if train else None
        self.batch_size = batch_size
        self.seed = int(seed)
        self.drop_last = train if drop_last is None else bool(drop_last)
        self.dtype = dtype
        self.channels_last = channels_last
        self.rank = rank
        self.world_size = world_size
        n, c, h, w = images.shape
        aug = self.augment
        if aug is not None and aug.crop_fill == "reflect" and aug.crop_pad >= min(h, w):
            raise UserError(f"reflect padding of {aug.crop_pad} needs images larger than {aug.crop_pad} pixels, got {h}x{w}.")
        if train and self.drop_last and n < batch_size * world_size:
            raise UserError(f"the global batch ({batch_size} x {world_size} ranks) is larger than the {n} training "
                            "images; lower the batch size.")
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        # Stored in the output's memory format, so a batch is never transposed on the way out.
        self.images = images.to(self.device, memory_format=fmt)
        self.labels = labels.to(self.device, dtype=torch.int64)
        self._scale, self._bias = normalize_params(mean, std, (c, h, w), self.device, channels_last, dtype)
        self._epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, step) for the next __iter__
        self._base_flip: torch.Tensor | None = None
        self._size: int | None = None  # train batches resized to this square size (progressive resizing)
        log.debug("DeviceLoader: %d images %s on %s, %d batches of %d per rank (rank %d of %d), train=%s",
                  n, tuple(images.shape[1:]), self.device, len(self), batch_size, rank, world_size, train)

    # ------------------------------------------------------------------ sizes

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def num_samples(self) -> int:
        """Images this rank serves per epoch (train mode with W > 1 and no drop_last: padded)."""
        n = len(self.images)
        b = self.batch_size
        if not self.train:
            mine = len(range(self.rank, n, self.world_size))
            return (mine // b) * b if self.drop_last else mine
        g = b * self.world_size
        full, tail = divmod(n, g)
        if self.drop_last or tail == 0:
            return full * b
        return full * b + (tail if self.world_size == 1 else math.ceil(tail / self.world_size))

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    # ------------------------------------------------------------------ epoch control

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation and augmentation the next ``__iter__`` serves."""
        if epoch < 0:
            raise UserError(f"epoch must be non-negative, got {epoch}.")
        self._epoch = int(epoch)

    def set_size(self, size: int | None) -> None:
        """Serve training batches resized to ``size`` x ``size`` (``None``: the stored size).

        The resize runs after crop, flip and normalisation, on the whole batch (bilinear with
        antialiasing), so a smaller size changes only the resolution the network sees, not the
        augmentation draws: the same epoch serves the same crops at any size.
        """
        if size is not None and (not isinstance(size, int) or size < 1):
            raise UserError(f"the training image size must be a positive integer, got {size!r}.")
        self._size = None if size is None or size == self.images.shape[-1] == self.images.shape[-2] else size

    def skip_to(self, step: int) -> None:
        """Make the next ``__iter__`` of the current epoch start at batch ``step`` (exact resume)."""
        if not 0 <= step <= len(self):
            raise UserError(f"cannot resume at batch {step}: an epoch has {len(self)} batches.")
        self._skip = (self._epoch, int(step))

    # ------------------------------------------------------------------ planning

    def _positions(self) -> torch.Tensor:
        """This rank's positions in the epoch's global order (train mode), in serving order."""
        n, b, w = len(self.images), self.batch_size, self.world_size
        g = b * w
        full, tail = divmod(n, g)
        pos = (torch.arange(full)[:, None] * g + self.rank * b + torch.arange(b)).reshape(-1)
        if self.drop_last or tail == 0:
            return pos
        share = tail if w == 1 else math.ceil(tail / w)
        last = full * g + self.rank * share + torch.arange(share)
        return torch.cat([pos, last % n])  # wraps to the epoch's start when padding (W > 1)

    def _plan(self, epoch: int) -> _EpochPlan:
        n = len(self.images)
        if not self.train:
            return _EpochPlan(torch.arange(self.rank, n, self.world_size)[: self.num_samples].to(self.device))
        gen = torch.Generator().manual_seed(_derived_seed(self.seed, "epoch", epoch))
        perm = torch.randperm(n, generator=gen)
        aug = self.augment
        assert aug is not None
        # Draw everything for the whole epoch in a fixed order, then keep this rank's share.
        dy, dx = random_crop_params(n, aug.crop_pad, gen)
        flip = random_flip_mask(n, gen)
        _, _, h, w = self.images.shape
        cy, cx = cutout_params(n, h, w, gen)
        shift, scale = jitter_params(n, aug.brightness, aug.contrast, gen)  # drawn last: earlier draws stay as they were
        if aug.flip == "alternating":
            if self._base_flip is None:
                base = torch.Generator().manual_seed(_derived_seed(self.seed, "alternating-flip"))
                self._base_flip = random_flip_mask(n, base)
            flip = alternating_flip_mask(n, epoch, self._base_flip)[perm]
        pos = self._positions()
        plan = _EpochPlan(perm[pos])
        if aug.crop_pad > 0:
            plan.dy, plan.dx = dy[pos], dx[pos]
        if aug.flip != "none":
            plan.flip = flip[pos]
        if aug.cutout > 0:
            plan.cy, plan.cx = cy[pos], cx[pos]
        if aug.brightness > 0 or aug.contrast > 0:
            plan.shift, plan.scale = shift[pos], scale[pos]
        return self._to_device(plan)

    def _to_device(self, plan: _EpochPlan) -> _EpochPlan:
        if self.device.type == "cpu":
            return plan
        cuda = self.device.type == "cuda"

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            return (t.pin_memory() if cuda else t).to(self.device, non_blocking=cuda)

        return _EpochPlan(*(move(getattr(plan, f.name)) for f in fields(plan)))

    # ------------------------------------------------------------------ batches

    def _batch(self, plan: _EpochPlan, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = plan.index[lo:hi]
        if self.channels_last:  # row gather on the (N, H, W, C) view keeps the batch channels_last
            x = self.images.permute(0, 2, 3, 1).index_select(0, idx).permute(0, 3, 1, 2)
        else:
            x = self.images.index_select(0, idx)
        aug = self.augment
        if aug is not None and (plan.dy is not None or plan.flip is not None):
            if plan.dy is not None:
                dy, dx, pad = plan.dy[lo:hi], plan.dx[lo:hi], aug.crop_pad
            else:  # flip only: a zero-offset crop, so the flip still costs one gather
                dy = dx = torch.zeros(hi - lo, dtype=torch.int64, device=self.device)
                pad = 0
            flip = plan.flip[lo:hi] if plan.flip is not None else None
            x = batch_crop(x, dy, dx, pad, aug.crop_fill, flip)
        out = normalize_with(x, self._scale, self._bias, self.dtype, self.channels_last)
        if aug is not None and plan.shift is not None:
            out = apply_jitter(out, plan.shift[lo:hi], plan.scale[lo:hi])
        if aug is not None and plan.cy is not None:
            out = apply_cutout(out, plan.cy[lo:hi], plan.cx[lo:hi], aug.cutout, inplace=True)
        if self._size is not None and self.train:
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            out = F.interpolate(out.float(), size=(self._size, self._size), mode="bilinear", antialias=True,
                                align_corners=False).to(self.dtype).contiguous(memory_format=fmt)
        return out, self.labels.index_select(0, idx)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._epoch
        start = 0
        if self._skip is not None:
            if self._skip[0] == epoch:
                start = self._skip[1]
            self._skip = None
        return self._serve(epoch, start)

    def _serve(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if start >= len(self):
            return
        plan = self._plan(epoch)
        total = len(plan.index)
        b = self.batch_size
        for k in range(start, len(self)):
            yield self._batch(plan, k * b, min((k + 1) * b, total))
