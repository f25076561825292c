"""How DeviceLoader splits an epoch over ranks (no processes needed)."""

from __future__ import annotations

import torch

from resnetkit.data.augment import AugmentConfig
from resnetkit.data.loader import DeviceLoader

NO_AUG = AugmentConfig(crop_pad=0, flip="none", cutout=0)


def _ids(n: int, **kw) -> DeviceLoader:
    """A loader whose labels are the image indices, so each batch says which images it holds."""
    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    return DeviceLoader(images, torch.arange(n), **kw)


def _epoch(loader: DeviceLoader, epoch: int) -> list[torch.Tensor]:
    loader.set_epoch(epoch)
    return [y for _, y in loader]


def test_train_shards_are_disjoint_cover_the_epoch_and_reshuffle() -> None:
    n, per_rank, world = 256, 16, 2
    ranks = [_ids(n, batch_size=per_rank, augment=NO_AUG, seed=3, rank=r, world_size=world) for r in range(world)]
    assert [len(r) for r in ranks] == [8, 8]
    orders = []
    for epoch in (0, 1):
        shards = [torch.cat(_epoch(r, epoch)) for r in ranks]
        assert [len(s) for s in shards] == [128, 128]
        assert len(set(shards[0].tolist()) & set(shards[1].tolist())) == 0
        assert sorted(torch.cat(shards).tolist()) == list(range(n))
        orders.append(shards)
    for r in range(world):  # each rank's shard is a different set, in a different order, next epoch
        assert not torch.equal(orders[0][r], orders[1][r])
        assert set(orders[0][r].tolist()) != set(orders[1][r].tolist())


def test_global_batch_is_the_single_process_batch() -> None:
    """Step k of rank 0 then rank 1 is step k of one process with the global batch, augmented alike."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (100, 3, 12, 12), dtype=torch.uint8, generator=gen)
    labels = torch.arange(100)
    aug = AugmentConfig(crop_pad=2, crop_fill="reflect", flip="random", cutout=4)
    one = DeviceLoader(images, labels, batch_size=32, augment=aug, seed=5)
    two = [DeviceLoader(images, labels, batch_size=16, augment=aug, seed=5, rank=r, world_size=2) for r in (0, 1)]
    for epoch in (0, 1):
        one.set_epoch(epoch)
        for loader in two:
            loader.set_epoch(epoch)
        single = list(one)
        pairs = list(zip(*two))
        assert len(single) == len(pairs) == 3
        for (x, y), ((x0, y0), (x1, y1)) in zip(single, pairs):
            assert torch.equal(y, torch.cat([y0, y1]))
            assert torch.equal(x, torch.cat([x0, x1]))


def test_padded_train_shards_step_together_and_cover_everything() -> None:
    n = 245  # 7 global batches of 32 and 21 left: 11 + 10 on the ranks, padded to 11 + 11
    ranks = [_ids(n, batch_size=16, augment=NO_AUG, drop_last=False, rank=r, world_size=2) for r in (0, 1)]
    batches = [_epoch(r, 0) for r in ranks]
    assert len(batches[0]) == len(batches[1]) == 8
    shards = [torch.cat(b) for b in batches]
    assert [len(s) for s in shards] == [123, 123]
    everything = torch.cat(shards).tolist()
    assert sorted(set(everything)) == list(range(n))
    repeated = [i for i in set(everything) if everything.count(i) > 1]
    assert repeated == [int(shards[0][0])]  # the padding is the epoch's first image, once


def test_eval_shards_of_an_odd_split_count_every_image_once() -> None:
    n = 53
    ranks = [_ids(n, batch_size=10, train=False, rank=r, world_size=2) for r in (0, 1)]
    shards = [torch.cat(_epoch(r, 0)) for r in ranks]
    assert [len(s) for s in shards] == [27, 26]
    assert shards[0].tolist() == list(range(0, n, 2))
    assert sorted(torch.cat(shards).tolist()) == list(range(n))
    assert torch.equal(torch.cat(_epoch(ranks[0], 0)), torch.cat(_epoch(ranks[0], 7)))  # no shuffling
