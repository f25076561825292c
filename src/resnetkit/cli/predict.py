"""``resnetkit predict``: labels and probabilities for image files, folders or glob patterns."""

from __future__ import annotations

import argparse
import csv
import json
import sys

from .. import api
from .options import add_tta


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="classify images with a checkpoint",
        description="Classify image files (any size or mode; processed as in training) with a checkpoint. "
                    "Unreadable files are reported on stderr and the others still classified; the exit "
                    "code is then 1.",
    )
    p.add_argument("checkpoint", help="a resnetkit checkpoint (.pt) or an export of one (.safetensors, .onnx, .torchscript)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER_OR_GLOB",
                   help="image files, folders (searched recursively) or quoted glob patterns")
    p.add_argument("--top-k", type=int, default=5, help="how many classes to list per image (default 5)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format")
    add_tta(p, default="none")
    p.add_argument("--grid", metavar="OUT.png", help="also save a grid of the images with their labels")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--weights", choices=["auto", "raw", "ema"], default="auto",
                   help="auto: the EMA weights when the checkpoint has them (trained with --ema)")
    p.set_defaults(func=main)


def _table(preds: list) -> None:
    width = max([len(p.source) for p in preds] + [4])
    lw = max([len(p.label) for p in preds] + [5])
    print(f"{'path':<{width}}  {'label':<{lw}}  {'prob':>6}  top-{len(preds[0].topk)}")
    for p in preds:
        top = ", ".join(f"{c} {q:.3f}" for c, q in p.topk)
        print(f"{p.source:<{width}}  {p.label:<{lw}}  {p.prob:6.3f}  {top}")


def _csv(preds: list, k: int) -> None:
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(["path", "label", "index", "prob"] + [f"top{i}_{f}" for i in range(1, k + 1) for f in ("label", "prob")])
    for p in preds:
        w.writerow([p.source, p.label, p.index, f"{p.prob:.6f}"] + [v for c, q in p.topk for v in (c, f"{q:.6f}")])


def main(args: argparse.Namespace) -> int:
    preds, failures, model = api.predict_files(args.checkpoint, args.inputs, top_k=args.top_k, tta=args.tta,
                                               batch_size=args.batch_size, device=args.device,
                                               weights=args.weights)
    if model.weights == "ema":
        print(f"resnetkit predict: using the EMA weights of {args.checkpoint} (--weights raw for the others)",
              file=sys.stderr)
    if args.format == "json":
        print(json.dumps({"predictions": [p.to_dict() for p in preds],
                          "failures": [{"path": f, "reason": r} for f, r in failures]}, indent=2))
    elif args.format == "csv":
        _csv(preds, min(args.top_k, len(model.classes)))
    elif preds:
        _table(preds)
    sys.stdout.flush()
    for path, reason in failures:
        print(f"resnetkit predict: cannot read {path}: {reason}", file=sys.stderr)
    if args.grid and preds:
        out = api.draw_grid(preds, [p.source for p in preds], args.grid, size=model.image_size)
        print(f"wrote {out}", file=sys.stderr)
    if failures:
        print(f"resnetkit predict: {len(failures)} of {len(preds) + len(failures)} file(s) could not be read", file=sys.stderr)
        return 1
    return 0
