"""Top-k counts, confusion matrix, per-class accuracy and the running accumulator."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from resnetkit.metrics import MetricAccumulator, confusion_matrix, per_class_accuracy, topk_correct

# Hand-made example, 4 samples and 5 classes: the target's rank is 1, 2, 5 and 1.
LOGITS = torch.tensor([
    [0.1, 0.5, 0.2, 0.9, 0.0],  # target 3: best
    [0.8, 0.1, 0.7, 0.0, 0.3],  # target 2: second
    [0.0, 0.1, 0.2, 0.3, 0.4],  # target 0: last
    [0.5, 0.4, 0.3, 0.2, 0.1],  # target 0: best
])
TARGETS = torch.tensor([3, 2, 0, 0])


def test_topk_correct_by_hand() -> None:
    assert topk_correct(LOGITS, TARGETS, ks=(1, 2, 3, 4, 5)) == {1: 2, 2: 3, 3: 3, 4: 3, 5: 4}
    assert topk_correct(LOGITS, TARGETS) == {1: 2, 5: 4}


def test_topk_is_clipped_to_the_number_of_classes() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    assert topk_correct(logits, torch.tensor([0, 0]), ks=(1, 5)) == {1: 1, 5: 2}


def test_topk_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        topk_correct(torch.zeros(4), TARGETS)
    with pytest.raises(ValueError, match="targets of shape"):
        topk_correct(LOGITS, TARGETS[:3])
    with pytest.raises(ValueError, match="k must be >= 1"):
        topk_correct(LOGITS, TARGETS, ks=(0,))


def test_confusion_matrix_by_hand() -> None:
    preds = torch.tensor([0, 2, 1, 1, 0, 2])
    targets = torch.tensor([0, 1, 1, 2, 0, 2])
    cm = confusion_matrix(preds, targets, 3)
    assert cm.dtype == torch.int64
    # rows are true classes, columns predictions
    assert cm.tolist() == [[2, 0, 0], [0, 1, 1], [0, 1, 1]]
    acc = per_class_accuracy(cm)
    assert acc.tolist() == [1.0, 0.5, 0.5]


def test_confusion_matrix_is_not_transposed() -> None:
    cm = confusion_matrix(torch.tensor([1]), torch.tensor([0]), 2)  # a 0 predicted as 1
    assert cm.tolist() == [[0, 1], [0, 0]]


def test_confusion_matrix_rejects_out_of_range_and_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        confusion_matrix(torch.tensor([0, -1]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 3)
    assert confusion_matrix(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 2).tolist() == [[0, 0], [0, 0]]


def test_per_class_accuracy_of_an_absent_class_is_nan() -> None:
    acc = per_class_accuracy(torch.tensor([[3, 1], [0, 0]]))
    assert acc[0].item() == 0.75 and math.isnan(acc[1].item())


def test_accumulator_over_batches_equals_one_shot() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(103, 10, generator=g)
    targets = torch.randint(0, 10, (103,), generator=g)
    logits[torch.arange(40), targets[:40]] += 3.0  # make roughly 40% clearly right
    acc = MetricAccumulator(10)
    for lo, hi in ((0, 32), (32, 64), (64, 96), (96, 103)):
        b_logits, b_targets = logits[lo:hi], targets[lo:hi]
        acc.update(b_logits, b_targets, F.cross_entropy(b_logits, b_targets, reduction="sum"))
    got = acc.compute()

    cm = confusion_matrix(logits.argmax(1), targets, 10)
    top = topk_correct(logits, targets, ks=(1, 5))
    assert got["count"] == acc.count == 103
    assert got["loss"] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)
    assert got["top1"] == pytest.approx(top[1] / 103) and got["top1"] > 0.35
    assert got["top5"] == pytest.approx(top[5] / 103) and got["top5"] >= got["top1"]
    assert torch.equal(got["confusion"], cm)
    assert torch.allclose(got["per_class"], per_class_accuracy(cm), equal_nan=True)
    assert int(got["confusion"].sum()) == 103


def test_accumulator_clips_top5_and_resets() -> None:
    acc = MetricAccumulator(3)
    acc.update(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([0]), 1.5)
    got = acc.compute()
    assert (got["top1"], got["top5"], got["loss"]) == (0.0, 1.0, 1.5)  # top-5 of 3 classes is top-3
    acc.reset()
    empty = acc.compute()
    assert empty["count"] == 0 and math.isnan(empty["top1"]) and empty["confusion"].sum() == 0


def test_accumulator_rejects_the_wrong_class_count() -> None:
    with pytest.raises(ValueError, match="10 classes"):
        MetricAccumulator(10).update(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))
