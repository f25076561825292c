"""``resnetkit eval``: test-set metrics of a checkpoint, with a confusion matrix."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import api
from .options import add_tta


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a checkpoint on a test split",
        description="Top-1, top-5, loss, per-class accuracy, precision, recall, F1 and support, a confusion "
                    "matrix (confusion.png) and a gallery of the most confidently wrong test images "
                    "(worst_errors.png), all in metrics.json, of a checkpoint on the test split of --data "
                    "(default: its training data). No training augmentation is applied.",
    )
    p.add_argument("checkpoint", help="a resnetkit checkpoint (last.pt / best.pt)")
    p.add_argument("--data", help="data source (default: the one the checkpoint was trained on)")
    add_tta(p, default="none")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto (default): bf16 where it is faster than fp32, else fp32")
    p.add_argument("--batch-size", type=int, default=256, help="images per evaluation batch (default 256)")
    p.add_argument("--weights", choices=["auto", "raw", "ema"], default="auto",
                   help="auto (default): the EMA weights when the checkpoint has them (trained with --ema)")
    p.add_argument("--out", help="folder for metrics.json, confusion.png and worst_errors.png "
                                 "(default: CHECKPOINT_DIR/eval, or eval-2, eval-3, ... when that holds an "
                                 "earlier evaluation)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier evaluation in --out")
    p.add_argument("--worst", type=int, default=24, help="how many most confidently wrong images to show (default 24)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else api.default_eval_out(args.checkpoint)
    m = api.evaluate(args.checkpoint, args.data, tta=args.tta, device=args.device, batch_size=args.batch_size,
                     precision=args.precision, out=out, overwrite=args.overwrite, progress=sys.stderr.isatty(),
                     worst=args.worst, weights=args.weights)
    print("\n".join(api.format_class_table(m)))  # '-': undefined (no test images, or never predicted)
    top5 = f"  top-5 {m['top5']:.2%}" if len(m["classes"]) > 5 else ""  # always 100% with 5 classes or fewer
    print(f"top-1 {m['top1']:.2%}{top5}  loss {m['loss']:.4f}  images {m['count']}"
          f"{'' if m['tta'] == 'none' else '  (' + m['tta'] + ' TTA)'}{'  (EMA weights, --weights raw for the others)' if m['weights'] == 'ema' else ''}")
    if m["tta"] != m["train_tta"]:
        print(f"(training measured its test accuracy with --tta {m['train_tta']}; pass it here to compare)"
              if m["train_tta"] != "none" else "(training measured its test accuracy without TTA)")
    print(f"wrote {out / 'metrics.json'}, {out / 'confusion.png'} and {out / 'worst_errors.png'} "
          f"({len(m['worst_errors'])} most confidently wrong images)")
    return 0
