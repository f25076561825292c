"""A seeded, stratified test split carved from a training split (for folders with only ``train/``).

Each class gives ``round(fraction * n)`` of its ``n`` images, at least one when it has two or
more and never its last one, chosen by a permutation from ``torch.Generator().manual_seed(seed)``
drawn class by class in sorted class order. The input is the folder's sorted file list, so the
same files, fraction and seed always give the same split, on any machine and in any process.
"""

from __future__ import annotations

import torch

from ..errors import UserError


def check_fraction(fraction: float) -> None:
    """Refuse a fraction that leaves no test or no training images."""
    if not 0 < fraction < 1:
        raise UserError(f"<<test_split>> takes a fraction between 0 and 1 (for example 0.1), got {fraction}.")


def held_out_count(n: int, fraction: float) -> int:
    """How many of a class's ``n`` images go to the test split."""
    if n < 2:
        return 0
    return min(n - 1, max(1, round(fraction * n)))


def carve_test_split(entries: list[tuple[str, int]], fraction: float,
                     seed: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Split sorted ``(path, label)`` pairs into (train, test), both sorted; see the module doc."""
    check_fraction(fraction)
    by_class: dict[int, list[tuple[str, int]]] = {}
    for entry in sorted(entries):
        by_class.setdefault(entry[1], []).append(entry)
    gen = torch.Generator().manual_seed(seed)
    train: list[tuple[str, int]] = []
    test: list[tuple[str, int]] = []
    for label in sorted(by_class):
        members = by_class[label]
        order = torch.randperm(len(members), generator=gen).tolist()
        k = held_out_count(len(members), fraction)
        test.extend(members[i] for i in order[:k])
        train.extend(members[i] for i in order[k:])
    return sorted(train), sorted(test)
