"""``resnetkit recipes``: the named training presets as a table, with what each one is and its sources."""

from __future__ import annotations

import argparse
import textwrap

from .. import api
from .train import recipes_table


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipes", help="list the training recipes (presets) and their main values",
                       description="The recipes 'resnetkit train --recipe NAME' can start from; every option "
                                   "given on the command line overrides the recipe's value.")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    print(recipes_table())
    for r in api.list_recipes():
        print()
        print(textwrap.fill(f"{r.name}: {r.doc}", width=100, subsequent_indent="  "))
    return 0
