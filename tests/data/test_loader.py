"""DeviceLoader: order, sharding, exact resume, reproducibility, and what reaches the model.

Images carry their identity: channel 0 is the image id (constant over the image), channel 2
encodes the label, channel 1 is random. With ``mean=0, std=1/255`` the loader's output is the
uint8 value itself, so ids and labels can be read back exactly after crop/flip/cutout.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from resnetkit.data.augment import AugmentConfig, batch_crop, normalize
from resnetkit.data.loader import DeviceLoader, dataset_fits
from resnetkit.errors import UserError

IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3)


def _data(n: int = 200, size: int = 8, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    assert n <= 256
    g = torch.Generator().manual_seed(123)
    labels = torch.randint(0, classes, (n,), generator=g)
    x = torch.randint(1, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    x[:, 0] = torch.arange(n, dtype=torch.uint8).view(n, 1, 1)
    x[:, 2] = (labels * 20 + 5).to(torch.uint8).view(n, 1, 1)
    return x, labels


def _ids(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0].float().amax(dim=(1, 2)).round().long()


def _epoch(loader: DeviceLoader, epoch: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if epoch is not None:
        loader.set_epoch(epoch)
    return list(loader)


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_labels_stay_with_their_images() -> None:
    x, y = _data()
    loader = DeviceLoader(x, y, batch_size=32, augment=AugmentConfig(cutout=3), **IDENTITY)
    seen = 0
    for inputs, labels in _epoch(loader, 3):
        assert inputs.shape == (32, 3, 8, 8) and labels.dtype == torch.int64
        assert torch.equal(labels, y[_ids(inputs)])
        assert torch.equal(labels, (inputs[:, 2].amax(dim=(1, 2)).round().long() - 5) // 20)
        seen += len(labels)
    assert seen == len(loader) * 32 == (200 // 32) * 32


def test_train_batches_are_valid_crops_and_flips_of_their_sources() -> None:
    x, y = _data(n=64)
    pad = 2
    loader = DeviceLoader(x, y, batch_size=64, augment=AugmentConfig(crop_pad=pad), **IDENTITY)
    (inputs, _), = _epoch(loader, 0)
    offsets = list(itertools.product(range(2 * pad + 1), range(2 * pad + 1), (False, True)))
    dy = torch.tensor([o[0] for o in offsets])
    dx = torch.tensor([o[1] for o in offsets])
    flips = torch.tensor([o[2] for o in offsets])
    found = []
    for out, i in zip(inputs.to(torch.uint8), _ids(inputs)):
        candidates = batch_crop(x[i].expand(len(offsets), -1, -1, -1), dy, dx, pad, "zero", flips)
        match = (candidates == out).flatten(1).all(1).nonzero().flatten().tolist()
        assert len(match) == 1, f"image {int(i)} is not exactly one crop/flip of its source"
        found.append(offsets[match[0]])
    assert 16 < sum(f for _, _, f in found) < 48  # about half flipped
    assert len({(a, b) for a, b, _ in found}) > 12  # many of the 25 offsets used


def test_seed_reproducible_and_independent_of_global_rng() -> None:
    x, y = _data()
    def make(seed: int) -> DeviceLoader:
        return DeviceLoader(x, y, batch_size=50, seed=seed, augment=AugmentConfig(cutout=2))

    a = _epoch(make(7), 1)
    torch.manual_seed(999)
    torch.rand(10)
    b = _epoch(make(7), 1)
    assert _same(a, b)
    assert not torch.equal(a[0][0], _epoch(make(8), 1)[0][0])


def test_set_epoch_changes_permutation_and_epochs_are_independent() -> None:
    x, y = _data()
    loader = DeviceLoader(x, y, batch_size=40, drop_last=False, **IDENTITY)
    orders = [torch.cat([_ids(b) for b, _ in _epoch(loader, e)]) for e in range(3)]
    for order in orders:
        assert torch.equal(order.sort().values, torch.arange(200))  # every image once
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    walked = DeviceLoader(x, y, batch_size=40, seed=3)
    for e in range(3):
        last = _epoch(walked, e)
    fresh = DeviceLoader(x, y, batch_size=40, seed=3)
    assert _same(last, _epoch(fresh, 2))  # epoch 2 does not depend on having run epochs 0 and 1


def test_skip_to_reproduces_the_rest_of_the_epoch() -> None:
    x, y = _data()
    aug = AugmentConfig(crop_fill="reflect", flip="alternating", cutout=3)
    full = _epoch(DeviceLoader(x, y, batch_size=16, augment=aug, seed=5), 4)
    assert len(full) == 12
    resumed = DeviceLoader(x, y, batch_size=16, augment=aug, seed=5)
    resumed.set_epoch(4)
    resumed.skip_to(7)
    assert _same(list(resumed), full[7:])
    assert _same(list(resumed), full)  # the skip applies to one pass only
    resumed.skip_to(3)
    resumed.set_epoch(5)  # a pending skip belongs to the epoch it was set in
    assert len(list(resumed)) == 12
    resumed.skip_to(12)
    assert list(resumed) == []
    with pytest.raises(UserError, match="13"):
        resumed.skip_to(13)


def test_alternating_flip_in_loader_flips_each_image_once_per_two_epochs() -> None:
    n, w = 64, 8
    x = torch.zeros(n, 3, w, w, dtype=torch.uint8)
    x[:, 0] = torch.arange(n, dtype=torch.uint8).view(n, 1, 1)
    x[:, 1] = torch.arange(1, w + 1, dtype=torch.uint8)  # a left-to-right ramp shows flips
    loader = DeviceLoader(x, torch.zeros(n, dtype=torch.int64), batch_size=n,
                          augment=AugmentConfig(crop_pad=0, flip="alternating"), **IDENTITY)

    def flipped(epoch: int) -> torch.Tensor:
        (b, _), = _epoch(loader, epoch)
        state = torch.empty(n, dtype=torch.bool)
        state[_ids(b)] = b[:, 1, 0, 0] == w
        return state

    states = [flipped(e) for e in range(4)]
    assert 16 < int(states[0].sum()) < 48
    for a, b in zip(states, states[1:]):
        assert torch.equal(a, ~b)


def test_eval_mode_serves_every_image_once_in_order_unaugmented() -> None:
    x, y = _data(n=101)
    loader = DeviceLoader(x, y, batch_size=32, train=False, augment=AugmentConfig(cutout=4), mean=(0.4, 0.5, 0.6),
                          std=(0.2, 0.25, 0.3))
    batches = _epoch(loader, 2)
    assert len(loader) == len(batches) == 4 and [len(b[1]) for b in batches] == [32, 32, 32, 5]
    assert loader.num_samples == 101
    inputs = torch.cat([b for b, _ in batches])
    assert torch.equal(inputs, normalize(x, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)))
    assert torch.equal(torch.cat([lab for _, lab in batches]), y)


@pytest.mark.parametrize("world", [2, 3])
def test_train_sharding_is_disjoint_equal_and_matches_one_big_batch(world: int) -> None:
    x, y = _data(n=203)
    b = 16
    ranks = [DeviceLoader(x, y, batch_size=b, rank=r, world_size=world, seed=9, **IDENTITY) for r in range(world)]
    steps = 203 // (b * world)
    assert [len(r) for r in ranks] == [steps] * world
    assert [r.num_samples for r in ranks] == [steps * b] * world
    per_rank = [[_ids(inp) for inp, _ in _epoch(r, 1)] for r in ranks]
    ids = torch.cat([torch.cat(p) for p in per_rank])
    assert len(ids) == len(set(ids.tolist())) == steps * b * world  # disjoint, only the tail dropped
    single = DeviceLoader(x, y, batch_size=b * world, seed=9, **IDENTITY)
    for k, (big, _) in enumerate(_epoch(single, 1)):  # global batch k == one process with batch G
        assert torch.equal(torch.cat([per_rank[r][k] for r in range(world)]), _ids(big))


def test_train_sharding_without_drop_last_keeps_ranks_in_step() -> None:
    x, y = _data(n=203)
    ranks = [DeviceLoader(x, y, batch_size=16, rank=r, world_size=3, drop_last=False, **IDENTITY) for r in range(3)]
    assert [len(r) for r in ranks] == [5, 5, 5]  # 4 full global batches of 48, then 11 split 4/4/4
    per_rank = [torch.cat([_ids(inp) for inp, _ in _epoch(r, 0)]) for r in ranks]
    assert [len(p) for p in per_rank] == [4 * 16 + 4] * 3
    ids = torch.cat(per_rank)
    assert set(ids.tolist()) == set(range(203))  # nothing lost...
    assert int(per_rank[2][-1]) == int(per_rank[0][0])  # ...and the one pad wraps to the epoch's first image


@pytest.mark.parametrize("world", [2, 3])
def test_eval_sharding_covers_each_image_exactly_once(world: int) -> None:
    n = 101
    x, y = _data(n=n)
    ranks = [DeviceLoader(x, y, batch_size=8, train=False, rank=r, world_size=world, **IDENTITY)
             for r in range(world)]
    got = []
    for r, loader in enumerate(ranks):
        ids = torch.cat([_ids(inp) for inp, _ in _epoch(loader, 0)])
        assert torch.equal(ids, torch.arange(r, n, world))
        assert loader.num_samples == len(ids) and len(loader) == math.ceil(len(ids) / 8)
        got.append(ids)
    assert sorted(torch.cat(got).tolist()) == list(range(n))


def test_channels_last_bf16_output_matches_contiguous_float32() -> None:
    x, y = _data()
    common = dict(batch_size=25, seed=4, augment=AugmentConfig(cutout=3), mean=(0.49, 0.48, 0.45),
                  std=(0.25, 0.24, 0.26))
    plain = _epoch(DeviceLoader(x, y, **common), 0)
    fast = _epoch(DeviceLoader(x, y, dtype=torch.bfloat16, channels_last=True, **common), 0)
    for (a, la), (b, lb) in zip(plain, fast):
        assert b.dtype == torch.bfloat16 and a.dtype == torch.float32
        assert b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
        assert torch.equal(b, a.to(torch.bfloat16)) and torch.equal(la, lb)


def test_rejects_bad_inputs() -> None:
    x, y = _data(n=20)
    with pytest.raises(UserError, match="uint8"):
        DeviceLoader(x.float(), y, batch_size=4)
    with pytest.raises(UserError, match="one per image"):
        DeviceLoader(x, y[:5], batch_size=4)
    with pytest.raises(UserError, match="larger than the 20"):
        DeviceLoader(x, y, batch_size=8, world_size=3)
    with pytest.raises(UserError, match="rank"):
        DeviceLoader(x, y, batch_size=4, rank=2, world_size=2)
    with pytest.raises(UserError, match="reflect"):
        DeviceLoader(x, y, batch_size=4, augment=AugmentConfig(crop_pad=8, crop_fill="reflect"))


def test_dataset_fits() -> None:
    assert dataset_fits(torch.zeros(10, 3, 32, 32, dtype=torch.uint8), "cpu")
    huge = torch.zeros(1, dtype=torch.uint8).expand(1 << 50)  # a petabyte, never allocated
    assert not dataset_fits(huge, "cpu")


@pytest.mark.gpu
def test_cuda_batches_equal_cpu_batches() -> None:
    x, y = _data()
    common = dict(batch_size=32, seed=1, augment=AugmentConfig(crop_fill="reflect", cutout=3), channels_last=True)
    cpu = _epoch(DeviceLoader(x, y, **common), 2)
    gpu = _epoch(DeviceLoader(x, y, device="cuda", **common), 2)
    assert gpu[0][0].device.type == "cuda" and gpu[0][1].device.type == "cuda"
    for (a, la), (b, lb) in zip(cpu, gpu):
        torch.testing.assert_close(b.cpu(), a, rtol=0, atol=1e-6)
        assert torch.equal(lb.cpu(), la)
    assert dataset_fits(x, "cuda")


def test_set_size_resizes_train_batches_after_the_same_augmentation() -> None:
    """Progressive resizing: a smaller size serves the same crops, flips and labels, downscaled
    (antialiased bilinear, so an image constant at 255 stays 255), in the loader's layout."""
    x, y = _data(n=64, size=16)
    full = DeviceLoader(x, y, batch_size=16, channels_last=True, **IDENTITY)
    small = DeviceLoader(x, y, batch_size=16, channels_last=True, **IDENTITY)
    small.set_size(8)
    for (xf, yf), (xs, ys) in zip(_epoch(full, 2), _epoch(small, 2)):
        assert xs.shape == (16, 3, 8, 8) and xs.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(ys, yf)
        expected = torch.nn.functional.interpolate(xf, size=(8, 8), mode="bilinear", antialias=True)
        assert torch.allclose(xs, expected, atol=1e-4)
        assert torch.equal(_ids(xs), _ids(xf))  # channel 0 is constant per image: survives the resize
    small.set_size(16)  # the stored size again: batches are bit-identical to the unresized loader
    assert _same(_epoch(small, 5), _epoch(full, 5))
    small.set_size(None)
    assert _same(_epoch(small, 5), _epoch(full, 5))
    evaluation = DeviceLoader(x, y, batch_size=16, train=False, **IDENTITY)
    evaluation.set_size(8)  # evaluation always serves full-size images
    assert next(iter(evaluation))[0].shape == (16, 3, 16, 16)
    with pytest.raises(UserError):
        small.set_size(0)


def test_brightness_and_contrast_change_only_each_image_level_and_spread() -> None:
    """The jitter is drawn after every other draw: crops, flips and order stay those of a run without it,
    and each image becomes ``(x + b) * c`` of itself with ``b``, ``c`` in the asked ranges, seeded."""
    x, y = _data(64)
    common = dict(batch_size=16, seed=7, mean=(0.5,) * 3, std=(0.25,) * 3)
    plain = DeviceLoader(x, y, augment=AugmentConfig(crop_fill="reflect", flip="alternating"), **common)
    aug = AugmentConfig(crop_fill="reflect", flip="alternating", brightness=0.3, contrast=0.2)
    jittered = DeviceLoader(x, y, augment=aug, **common)
    shifts, scales = [], []
    for e in (0, 1):
        for (xa, ya), (xb, yb) in zip(_epoch(plain, e), _epoch(jittered, e)):
            assert torch.equal(ya, yb)
            fa, fb = xa.flatten(1), xb.flatten(1)
            c = fb.std(1) / fa.std(1)
            b = fb.mean(1) / c - fa.mean(1)
            assert torch.allclose(fb, (fa + b[:, None]) * c[:, None], atol=1e-4)
            shifts.append(b)
            scales.append(c)
    b, c = torch.cat(shifts), torch.cat(scales)
    assert b.abs().max() <= 0.3 + 1e-4 and (c - 1).abs().max() <= 0.2 + 1e-4
    assert b.std() > 0.1 and c.std() > 0.07  # really jittered: uniform over +-0.3 has std 0.17, +-0.2 0.12
    again = DeviceLoader(x, y, augment=aug, **common)
    assert _same(_epoch(again, 1), _epoch(jittered, 1))
    other = DeviceLoader(x, y, augment=aug, **{**common, "seed": 8})
    assert not torch.equal(_epoch(other, 0)[0][0], _epoch(jittered, 0)[0][0])
