"""Test-time augmentation modes: none, flip, flip-shift; True means flip; bad names are one sentence."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnetkit.errors import UserError
from resnetkit.runtime.inference import predict_logits, tta_mode


class _Probe(nn.Module):
    """Logits that depend on position: the top-left pixel and the sum of the left column."""

    def forward(self, x):
        return torch.stack([x[:, 0, 0, 0], x[:, 0, :, 0].sum(1)], 1)


def test_modes_match_a_hand_computation():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    cpu = torch.device("cpu")
    m = _Probe()
    none = predict_logits(m, x, cpu, "fp32", "none")
    flip = predict_logits(m, x, cpu, "fp32", True)
    assert none.tolist() == [[0.0, 24.0]]
    assert flip.tolist() == [[1.5, 30.0]]  # mirror: top-left 3, left column 3+7+11+15
    assert torch.equal(predict_logits(m, x, cpu, "fp32", "flip"), flip)
    # down-right shift (reflect): top-left 5, left column 5+1+5+9; its mirror: 6, 6+2+6+10
    # up-left shift: top-left 5, left column 5+9+13+9; its mirror: 6, 6+10+14+10
    shift = predict_logits(m, x, cpu, "fp32", "flip-shift")
    down = torch.tensor([[5.5, 22.0]])
    up = torch.tensor([[5.5, 38.0]])
    torch.testing.assert_close(shift, 0.5 * flip + 0.25 * (down + up))


def test_tta_mode_names():
    assert [tta_mode(v) for v in (False, None, True, "none", "flip", "flip-shift")] == [
        "none", "none", "flip", "none", "flip", "flip-shift"]
    with pytest.raises(UserError, match="flip-shift"):
        tta_mode("shift")


def test_bad_tta_is_refused_before_training():
    from resnetkit.training.config import resolve_config, validate

    with pytest.raises(UserError, match="tta"):
        validate(resolve_config("cpu-fast", tta="mirror"))
