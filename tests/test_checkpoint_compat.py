"""Checkpoints written by earlier resnetkit versions still load and give the same logits.

``tests/fixtures/checkpoint_v1_cc47da5.pt`` was written by resnetkit at commit cc47da5 (format 1,
before the checkpoint code moved to :mod:`resnetkit.checkpoint`); the JSON beside it holds the
logits that checkpoint gave on a fixed input.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import resnetkit
from resnetkit.checkpoint import FORMAT_VERSION, peek

FIXTURES = Path(__file__).parent / "fixtures"
OLD = FIXTURES / "checkpoint_v1_cc47da5.pt"


def test_a_format_1_checkpoint_from_cc47da5_gives_its_logits() -> None:
    expected = json.loads((FIXTURES / "checkpoint_v1_cc47da5.json").read_text())
    model = resnetkit.load_checkpoint(OLD)
    assert model.spec["name"] == expected["model_name"] == "resnet20"
    assert model.classes == expected["classes"]
    assert not model.training
    x = torch.linspace(-2, 2, 4 * 3 * 32 * 32).reshape(4, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
    want = torch.tensor(expected["logits"])
    assert logits.shape == want.shape == (4, 10)
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=0)


def test_the_fixture_is_format_1_and_this_version_reads_it() -> None:
    ckpt = peek(OLD)
    assert ckpt["format_version"] == 1 <= FORMAT_VERSION
    assert ckpt["model_name"] == "resnet20" and ckpt["model_kwargs"]["width_mult"] == 0.25
