"""``resnetkit doctor``: what this machine offers for training, and what ``--precision auto`` picks.

Prints the CPU, its speed-relevant flags, threads, torch and its oneDNN build, whether oneDNN
runs AMX kernels, and the precision probe's table for a model and batch (measured now, or
from the probe cache).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from .. import api
from ..errors import UserError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("doctor", help="CPU, flags, torch/oneDNN build, AMX check and the precision probe",
                       description="Report the training-relevant facts of this machine and time the "
                                   "precision/layout candidates of --precision auto for one model and batch.")
    p.add_argument("--model", default="resnet20", help="model the probe times (default: resnet20)")
    p.add_argument("--batch-size", type=int, default=256, help="batch the probe times (default: 256)")
    p.add_argument("--image-size", type=int, default=32, help="square image size (default: 32)")
    p.add_argument("--refresh", action="store_true", help="measure again instead of reading the probe cache")
    p.add_argument("--no-probe", action="store_true", help="skip the probe (facts only)")
    p.add_argument("--no-amx-check", action="store_true", help="skip the oneDNN verbose AMX check")
    p.add_argument("--json", help="also write the report to this JSON file")
    p.set_defaults(func=run)


def _yes(v: bool | None) -> str:
    return "unknown" if v is None else "yes" if v else "no"


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.image_size < 8:
        raise UserError("--batch-size must be >= 1 and --image-size >= 8")
    if not args.no_probe:
        api.model_info(args.model)  # an unknown name is a one-line error before any work
    facts = api.cpu_facts(amx_check=not args.no_amx_check)
    print(f"cpu          {facts.cpu}")
    print("flags        " + "  ".join(f"{k} {'yes' if v else 'no'}" for k, v in facts.flags.items()))
    print(f"threads      {facts.threads} torch threads, {facts.cores} logical CPUs")
    print(f"torch        {facts.torch}")
    for line in facts.onednn:
        print(f"build        {line}")
    if args.no_amx_check:
        print("amx kernels  not checked")
    else:
        isa = ", ".join(facts.isa_seen[:6]) or "no oneDNN verbose output"
        print(f"amx kernels  {_yes(facts.amx_kernels)} (bf16 conv + matmul under ONEDNN_VERBOSE=1: {isa})")
    report: dict[str, Any] = {"facts": asdict(facts)}
    if not args.no_probe:
        d = api.precision_probe(args.model, args.batch_size, args.image_size, refresh=args.refresh)
        src = "cached" if d.cached else f"measured in {d.seconds:.1f} s"
        print(f"probe        {args.model}, batch {args.batch_size}, {args.image_size}px ({src})")
        print(f"  {'precision':<9} {'layout':<13} {'scout img/s':>11} {'img/s':>8}")
        for r in d.rows:
            speed = "dropped" if r.dropped else f"{r.images_per_s:.0f}"
            layout = "channels_last" if r.channels_last else "contiguous"
            print(f"  {r.precision:<9} {layout:<13} {r.scout_images_per_s:>11.0f} {speed:>8}")
        print(f"auto picks   {d.precision}, {'channels_last' if d.channels_last else 'contiguous'}")
        report["probe"] = {"precision": d.precision, "channels_last": d.channels_last, "cached": d.cached,
                           "rows": [asdict(r) for r in d.rows], "key": d.key}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0
