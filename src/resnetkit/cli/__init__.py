"""The ``resnetkit`` command line: the only place that parses arguments or prints for humans.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``, which sets the
function that runs it (``main(args)``, or one per mode). The library is reached only through
:mod:`resnetkit.api`.
Errors a user can cause (:class:`resnetkit.errors.UserError`) end in one sentence on stderr and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .. import api
from ..errors import UserError

# subcommand name -> module under resnetkit.cli (imported lazily so --help stays fast)
COMMANDS = {
    "models": "models",
    "summary": "models",
    "train": "train",
    "recipes": "recipes",
    "eval": "evaluate",
    "predict": "predict",
    "export": "export",
    "bench": "bench",
    "study": "study",
    "doctor": "doctor",
    "explain": "explain",
    "report": "report",
    "lr-find": "lr_find",
}


class _Parser(argparse.ArgumentParser):
    """argparse that exits with code 2 and one clear line on a bad argument (as usual)."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="resnetkit",
        description="Residual networks in PyTorch: train, evaluate, predict, export and analyse.",
    )
    parser.add_argument("--version", action="version", version=f"resnetkit {api.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    seen = set()
    for mod_name in COMMANDS.values():
        if mod_name in seen:
            continue
        seen.add(mod_name)
        try:
            mod = importlib.import_module(f"{__name__}.{mod_name}")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{mod_name}":
                continue  # subcommand not built yet
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"resnetkit {args.command}: error: {e.cli_message()}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"resnetkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
