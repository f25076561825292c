"""The one evaluation path (runtime.inference over metrics.MetricAccumulator): a class with no
images is undefined (NaN in Python, null in JSON), and the numbers match a direct count."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from resnetkit.io import write_json
from resnetkit.runtime.inference import evaluate


class _Fixed(nn.Module):
    """Returns the logits it was given, batch by batch (the input is the batch index)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x[:, 0, 0, 0].long()]


def test_an_empty_class_is_nan_and_null_in_json(tmp_path: Path) -> None:
    logits = torch.tensor([[5.0, 0.0, 1.0], [0.0, 5.0, 1.0], [5.0, 0.0, 1.0], [0.0, 1.0, 5.0]])
    labels = torch.tensor([0, 1, 1, 0])  # class 2 has no images; one of two right in each class
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1)
    loader = [(x[:3], labels[:3]), (x[3:], labels[3:])]
    m = evaluate(_Fixed(logits), loader, 3, device=torch.device("cpu"), precision="fp32")
    assert m["count"] == 4 and m["top1"] == 0.5
    assert m["per_class"][:2] == [0.5, 0.5] and math.isnan(m["per_class"][2])
    assert m["confusion"] == [[1, 0, 1], [1, 1, 0], [0, 0, 0]]
    want_loss = float(nn.functional.cross_entropy(logits, labels))
    assert abs(m["loss"] - want_loss) < 1e-6
    write_json(tmp_path / "m.json", m)
    assert json.loads((tmp_path / "m.json").read_text())["per_class"] == [0.5, 0.5, None]


def test_a_distributed_reduce_sums_the_totals() -> None:
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    x = torch.arange(2, dtype=torch.float32).view(2, 1, 1, 1)
    one = evaluate(_Fixed(logits), [(x, torch.tensor([0, 0]))], 2, device=torch.device("cpu"), precision="fp32",
                   reduce=lambda t: 2 * t)  # as if a second process saw the same images
    assert one["count"] == 4 and one["top1"] == 0.5 and one["confusion"] == [[2, 2], [0, 0]]
    assert one["per_class"][0] == 0.5 and math.isnan(one["per_class"][1])
