"""``resnetkit models [PATTERN]`` and ``resnetkit summary NAME``: what models exist and their cost.

Both print for humans; the numbers come from :mod:`resnetkit.analysis` (FLOPs counted by
``torch.utils.flop_counter.FlopCounterMode``, a multiply-add counting as 2 FLOPs).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from .. import api
from ..errors import UserError

FLOPS_NOTE = "FLOPs for one image; a multiply-add counts as 2 FLOPs (torch FlopCounterMode)"


def _int_at_least(minimum: int, words: str):
    """An argparse type: an integer of at least ``minimum``, else an error saying ``words``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}")
        return value
    return parse


_positive = _int_at_least(1, "a positive integer")
_non_negative = _int_at_least(0, "an integer >= 0")


def add_parser(subparsers: Any) -> None:
    """Register the ``models`` and ``summary`` subcommands."""
    p = subparsers.add_parser(
        "models",
        help="list the registered models with parameters and GFLOPs",
        description="List the registered models: name, family, parameters, GFLOPs at the "
        f"default input size, and that size. {FLOPS_NOTE}. The table is cached after the "
        "first run.",
    )
    p.add_argument(
        "pattern", nargs="?", default=None,
        help="filter names: a shell pattern ('resnet*', 'wrn??_*') or a substring ('cifar')",
    )
    p.set_defaults(func=run_models)

    s = subparsers.add_parser(
        "summary",
        help="per-stage output shapes, parameters and FLOPs of one model",
        description="Print each stage of a model (stem, layer1..N, head) with its output "
        f"shape, parameters and FLOPs, then the totals. {FLOPS_NOTE}.",
    )
    s.add_argument("name", help="a registered model name (see 'resnetkit models')")
    s.add_argument("--input-size", nargs=2, type=_positive, metavar=("H", "W"), default=None,
                   help="input height and width (default: the model's, e.g. 32 32 for CIFAR nets)")
    s.add_argument("--num-classes", type=_non_negative, default=None,
                   help="classifier outputs (default: the model's; 0 removes the classifier)")
    s.add_argument("--in-channels", type=_positive, default=None,
                   help="input image channels (default: 3)")
    s.set_defaults(func=run_summary)


def _format_params(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _format_size(size: Sequence[int]) -> str:
    return "x".join(str(s) for s in size)


def _table(header: Sequence[str], rows: list[Sequence[str]], right: set[int]) -> list[str]:
    """Lines of a table with aligned columns; column indices in ``right`` are right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [str(c).rjust(w) if i in right else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    return [line(header)] + [line(r) for r in rows]


def run_models(args: argparse.Namespace) -> int:
    """Print the model table."""
    rows = api.model_table(args.pattern)
    if not rows:
        raise UserError(f"no registered model matches {args.pattern!r}; run 'resnetkit models' to list them all")
    lines = _table(
        ("name", "family", "params", "GFLOPs", "input"),
        [(r["name"], r["family"], _format_params(r["params"]), f"{r['gflops']:.3f}",
          _format_size(r["input_size"])) for r in rows],
        right={2, 3},
    )
    print("\n".join(lines))
    print(f"\n{len(rows)} model{'s' if len(rows) != 1 else ''}; GFLOPs at the input size shown, "
          f"{FLOPS_NOTE}.")
    return 0


def run_summary(args: argparse.Namespace) -> int:
    """Print one model's per-stage summary and totals."""
    # shapes and FLOPs need no weights: built on the meta device, nothing is allocated
    found = api.model_summary(args.name, input_size=args.input_size, num_classes=args.num_classes,
                              in_channels=args.in_channels)
    s = found["summary"]

    total = s.total_flops or 1
    lines = _table(
        ("stage", "output shape", "params", "FLOPs", "share"),
        [(r.name, str(r.output_shape), f"{r.params:,}", f"{r.flops:,}", f"{100 * r.flops / total:.1f}%")
         for r in s.stages],
        right={2, 3, 4},
    )
    classes = f"{found['num_classes']} classes" if found["num_classes"] else "no classifier (features only)"
    print(f"{args.name}: {found['family']}, input {_format_size(s.input_size)}, {classes}")
    print()
    print("\n".join(lines))
    print()
    width = max(len(f"{s.total_params:,}"), len(f"{s.total_flops:,}"))
    print(f"total params      {s.total_params:>{width},}  ({_format_params(s.total_params)})")
    print(f"trainable params  {s.trainable_params:>{width},}")
    print(f"total FLOPs       {s.total_flops:>{width},}  ({s.gflops:.3f} GFLOPs = {s.gmacs:.3f} GMACs)")
    print(f"\n{FLOPS_NOTE}.")
    return 0
