"""``resnetkit report``: one self-contained HTML page about a run, or comparing several."""

from __future__ import annotations

import argparse

from .. import api


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="write an HTML report of one run or a comparison of several",
        description="One HTML file with images embedded (opens from disk, no network): command and configuration, "
                    "hardware and versions, curves, final and best metrics, confusion matrix, per-class table, "
                    "the most confidently wrong test images, Grad-CAM maps, checkpoint size and parameters. With "
                    "several runs: curves overlaid, metrics side by side, configuration differences highlighted. "
                    "A run not yet evaluated is evaluated first (into RUN_DIR/eval). Needs the 'explain' extra.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by 'resnetkit train'")
    p.add_argument("--out", help="HTML file (default: RUN_DIR/report.html for one run, ./report.html for several)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    path = api.report(args.runs, args.out)
    print(f"wrote {path}")
    return 0
