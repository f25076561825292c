"""``resnetkit export``: a checkpoint as ONNX, TorchScript or safetensors, verified against eager."""

from __future__ import annotations

import argparse

from .. import api


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a checkpoint to ONNX, TorchScript or safetensors",
        description="Export a checkpoint with its class names, mean/std and input size as metadata. The "
                    "file is reloaded by its runtime and checked against the eager model at batch sizes 1 "
                    "and 3 before it is kept: the largest difference of the logits divided by max(1, largest "
                    f"|logit|) must be at most --tolerance (default {api.TOLERANCE:g}). Needs pip install "
                    "'resnetkit[export]' for ONNX and safetensors.",
    )
    p.add_argument("checkpoint", help="a resnetkit checkpoint (.pt)")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript", "safetensors"],
                   help="output format")
    p.add_argument("--out", help="output file (default: the checkpoint's path with .onnx, .torchscript or "
                                 ".safetensors)")
    p.add_argument("--tolerance", type=float, default=api.TOLERANCE,
                   help=f"largest relative difference from the eager model allowed (default {api.TOLERANCE:g})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--weights", choices=["auto", "raw", "ema"], default="auto",
                   help="auto (default): the EMA weights when the checkpoint has them (trained with --ema)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    result = api.export(args.checkpoint, args.format, args.out, tolerance=args.tolerance, overwrite=args.overwrite,
                        weights=args.weights)
    ema = "; EMA weights, --weights raw for the others" if result.weights == "ema" else ""
    print(f"wrote {result.path} ({result.format}{ema}; vs eager: max |diff| {result.max_abs_diff:.2e}, relative "
          f"{result.rel_diff:.2e} <= {result.tolerance:g}, at batch sizes 1 and 3; {result.seconds:.1f}s)")
    return 0
