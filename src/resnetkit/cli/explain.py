"""``resnetkit explain``: Grad-CAM heat maps of images under a checkpoint's model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import api


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain", help="Grad-CAM heat maps: where the network looked",
        description="For each image, write the image with its Grad-CAM heat map over it, titled with the "
                    "predicted class and probability (NNN-NAME.png), and the map itself (NNN-NAME.npy, "
                    "values in [0, 1] at the model's input size). Needs the 'explain' extra.",
    )
    p.add_argument("checkpoint", help="a resnetkit checkpoint (last.pt / best.pt)")
    p.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--target-class", help="class (name or index) to explain; default: each image's prediction")
    p.add_argument("--layer", help="module to explain, e.g. layer3 or layer4.1 (default: the last residual stage)")
    p.add_argument("--out", required=True, help="folder for the PNGs and .npy maps")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    failures: list[tuple[str, str]] = []  # one bad file never stops the rest, as in predict
    results = api.explain(args.checkpoint, args.images, target_class=args.target_class, layer=args.layer, out=args.out,
                          device=args.device, batch_size=args.batch_size, failures=failures)
    for r in results:
        extra = f"  (map for {r.target_label}: {r.target_prob:.1%})" if r.target != r.index else ""
        print(f"{Path(r.source).name}: {r.label} {r.prob:.1%}{extra}")
    print(f"wrote {len(results)} heat map(s) to {args.out}")
    sys.stdout.flush()
    for path, reason in failures:
        print(f"resnetkit explain: cannot read {path}: {reason}", file=sys.stderr)
    if failures:
        print(f"resnetkit explain: {len(failures)} of {len(results) + len(failures)} file(s) could not be read",
              file=sys.stderr)
        return 1
    return 0
