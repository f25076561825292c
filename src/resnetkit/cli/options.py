"""Options shared by several subcommands, declared once."""

from __future__ import annotations

import argparse

from .. import api


def add_tta(p: argparse.ArgumentParser | argparse._ArgumentGroup, default: str | None) -> None:
    """``--tta [MODE]``: alone it means "flip"; ``default`` applies when it is not given."""
    p.add_argument("--tta", nargs="?", const="flip", default=default, choices=api.TTA_MODES,
                   help="test-time augmentation: 'flip' (what --tta alone means) averages each image and its "
                        "mirror; 'flip-shift' adds both of them moved one pixel (six passes)")
