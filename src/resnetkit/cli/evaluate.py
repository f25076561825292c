"""``resnetkit eval``: test-set metrics of a checkpoint, with a confusion matrix."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import api


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a checkpoint on a test split",
        description="Top-1, top-5, loss, per-class accuracy and a confusion matrix (confusion.png and "
                    "metrics.json) of a checkpoint on the test split of --data (default: its training data). "
                    "No training augmentation is applied.",
    )
    p.add_argument("checkpoint", help="a resnetkit checkpoint (last.pt / best.pt)")
    p.add_argument("--data", help="data source (default: the one the checkpoint was trained on)")
    p.add_argument("--tta", action="store_true", help="average the predictions of each image and its mirror")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--weights", choices=["auto", "raw", "ema"], default="auto",
                   help="auto: the EMA weights when the checkpoint has them (trained with --ema)")
    p.add_argument("--out", help="where to write metrics.json and confusion.png (default: CHECKPOINT_DIR/eval)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "eval"
    m = api.evaluate(args.checkpoint, args.data, tta=args.tta, device=args.device, batch_size=args.batch_size,
                 precision=args.precision, out=out, progress=sys.stderr.isatty(), weights=args.weights)
    width = max(len(c) for c in m["classes"])
    print(f"{'class':<{width}}  accuracy")
    for c, a in zip(m["classes"], m["per_class"]):
        print(f"{c:<{width}}  {'-' if a is None or a != a else format(a, '8.2%'):>8}")  # '-': no test images
    print(f"top-1 {m['top1']:.2%}  top-5 {m['top5']:.2%}  loss {m['loss']:.4f}  images {m['count']}"
          f"{'  (flip TTA)' if m['tta'] else ''}{'  (EMA weights)' if m['weights'] == 'ema' else ''}")
    print(f"wrote {out / 'metrics.json'} and {out / 'confusion.png'}")
    return 0
