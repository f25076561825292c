"""``resnetkit lr-find``: the learning-rate range test (Smith 2017), a plot and a suggested lr."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lr-find", help="learning-rate range test: suggest an lr (writes no run directory)",
                       description="Train a copy of the model for a few steps while the lr grows exponentially "
                                   "from --start to --end; plot the smoothed loss and suggest the lr at its "
                                   "minimum divided by 10.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="resnet20", help="registered model name")
    p.add_argument("--data", default="synthetic", help="the same sources as 'resnetkit train --data'")
    p.add_argument("--start", type=float, default=1e-5, help="first lr")
    p.add_argument("--end", type=float, default=10.0, help="last lr")
    p.add_argument("--steps", type=int, default=100, help="number of steps in the sweep")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    p.add_argument("--out", metavar="PNG", help="write the plot here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..api import lr_find

    r = lr_find(args.model, args.data, start=args.start, end=args.end, steps=args.steps, batch_size=args.batch_size,
                image_size=args.image_size, seed=args.seed, device=args.device, precision=args.precision,
                out=args.out)
    print(f"resnetkit lr-find: {args.model} on {args.data}: suggested lr {r.suggested_lr:.3g} ({r.rule}); "
          f"steepest descent at {r.steepest_lr:.3g}; {len(r.lrs)} steps from {r.lrs[0]:.2g} to {r.lrs[-1]:.2g}"
          + (f"; plot {r.plot}" if r.plot else ""))
    return 0
