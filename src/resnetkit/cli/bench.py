"""``resnetkit bench``: throughput and time-to-accuracy tables (printed last, and as JSON)."""

from __future__ import annotations

import argparse
import json
import sys

from .. import api


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure training throughput or time-to-accuracy",
                       description="Benchmarks that print a table last and write JSON.")
    modes = p.add_subparsers(dest="mode", metavar="MODE")
    modes.required = True
    t = modes.add_parser("throughput", help="img/s: resnetkit vs the tutorial's pipeline vs a ceiling, same run")
    t.add_argument("--model", default="resnet20", help="registered model name (default: resnet20)")
    t.add_argument("--data", default="synthetic", help="data source (default: synthetic)")
    t.add_argument("--batch-size", type=int, default=256, help="batch for resnetkit and the ceiling")
    t.add_argument("--steps", type=int, default=20, help="timed steps per pipeline (after warm-up)")
    t.add_argument("--warmup", type=int, default=3, help="untimed steps before timing each pipeline (default 3)")
    t.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    t.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto (default): bf16 where it is faster than fp32, else fp32")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="memory layout for resnetkit and the ceiling (default: channels_last with bf16)")
    t.add_argument("--tutorial-batch-size", type=int, default=128, help="the tutorial's batch size")
    t.add_argument("--no-tutorial", action="store_true", help="skip the tutorial pipeline (slow on CPU)")
    t.add_argument("--json", default="bench/results/throughput.json", help="where to write the JSON")
    t.set_defaults(func=run_throughput)
    a = modes.add_parser("time-to-accuracy", help="a recipe with a fixed budget over seeds: mean +- std")
    a.add_argument("--recipe", default="fast", help="named preset to time (default: fast; see 'resnetkit recipes')")
    a.add_argument("--model", help="override the recipe's model")
    a.add_argument("--data", default="synthetic", help="data source (default: synthetic)")
    a.add_argument("--seeds", type=int, default=2, help="number of seeds (0..N-1)")
    g = a.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=float, help="budget in epochs (default: the recipe's)")
    g.add_argument("--budget-seconds", type=float, help="budget in training seconds: each run's lr schedule runs on the clock and "
                   "training stops when they are spent (train --time-budget)")
    a.add_argument("--target", type=float, help="also report when a held-out check of training images first "
                   "reached this top-1 (e.g. 0.90); reporting only, never used to stop or choose")
    a.add_argument("--check-images", type=int, default=2500,
                   help="training images held out for the --target check (default: 2500)")
    a.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    a.add_argument("--lr", type=float, help="override the recipe's peak learning rate")
    a.add_argument("--optimizer", choices=["sgd", "muon"], help="override the recipe's optimizer (see 'train --help')")
    a.add_argument("--muon-lr", type=float, help="override the recipe's Muon learning rate")
    a.add_argument("--bn-recalibration", type=int, metavar="IMAGES", help="override the training images the "
                   "recipe sets the BatchNorm statistics from after the last step (see 'train --help'; 0: off)")
    a.add_argument("--activation", choices=["relu", "gelu"], help="override the activation of the recipe's resnet_cpu "
                   "network (see 'train --help')")
    a.add_argument("--stem-epochs", type=int, metavar="N", help="override the epochs the recipe trains a resnet_cpu "
                   "network's stem before freezing it (see 'train --help'; a number past the run's end: never)")
    a.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    a.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="override the recipe's precision")
    a.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    a.add_argument("--max-steps", type=int, help="cap steps per run (smoke tests)")
    a.add_argument("--out", default="runs/bench-tta", help="run directories go under here")
    a.add_argument("--json", default="bench/results/time_to_accuracy.json", help="where to write the JSON")
    a.set_defaults(func=run_tta)


def run_throughput(args: argparse.Namespace) -> int:
    out = api.bench_throughput(args.model, args.data, progress=sys.stderr.isatty(), device=args.device,
                               precision=args.precision, batch_size=args.batch_size,
                               channels_last=args.channels_last, steps=args.steps, warmup=args.warmup,
                               include_tutorial=not args.no_tutorial, tutorial_batch_size=args.tutorial_batch_size)
    api.save_json(args.json, out)
    print(f"throughput of {args.model} on {args.data} ({out['machine']['device']}, torch {out['machine']['torch']})")
    print(f"{'pipeline':<10} {'batch':>5} {'precision':>9} {'layout':>13} {'img/s':>8} {'step ms':>8}")
    for r in out["rows"]:
        layout = "channels_last" if r["channels_last"] else "contiguous"
        print(f"{r['name']:<10} {r['batch_size']:>5} {r['precision']:>9} {layout:>13}"
              f" {r['images_per_s']:>8.0f} {r['step_ms']:>8.1f}")
    if "resnetkit_over_tutorial" in out:
        print(f"resnetkit / tutorial = {out['resnetkit_over_tutorial']:.2f}x")
    print(f"resnetkit / ceiling  = {out['resnetkit_over_ceiling']:.2f}")
    return 0


def run_tta(args: argparse.Namespace) -> int:
    overrides = {k: getattr(args, k) for k in ("model", "batch_size", "lr", "optimizer", "muon_lr", "device",
                                               "precision", "compile", "max_steps", "stem_epochs", "bn_recalibration")
                 if getattr(args, k) is not None}
    if args.activation is not None:  # merged over the recipe's model options (whitening kept)
        overrides["model_kwargs"] = {"activation": args.activation}
    res = api.bench_time_to_accuracy(args.recipe, args.data, list(range(args.seeds)), args.out, epochs=args.epochs,
                                     budget_seconds=args.budget_seconds, target=args.target,
                                     check_images=args.check_images, progress=sys.stderr.isatty(), **overrides)
    api.save_json(args.json, res)
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, default=str))
    layout = "channels_last" if res["channels_last"] else "contiguous"
    print(f"{res['recipe']} ({res['model']}, batch {res['batch_size']}, {res['optimizer']}) on {res['cpu']}, "
          f"{res['threads']} threads, "
          f"{res['precision']} {layout}")
    print(f"{'seed':>4} {'epochs':>7} {'top-1':>7} {'prep s':>7} {'train s':>8} {'eval s':>7} {'compile s':>9}"
          f" {'target s':>8}")
    for r in res["runs"]:
        hit = "-" if r["target_seconds"] is None else f"{r['target_seconds']:.1f}"
        print(f"{r['seed']:>4} {r['epochs']:>7.2f} {r['top1']:>7.2%} {r['prep_seconds']:>7.1f} "
              f"{r['train_seconds']:>8.1f} {r['eval_seconds']:>7.1f} {r['compile_seconds']:>9.1f} {hit:>8}")
    print(f"top-1 {res['top1_mean']:.2%} +- {res['top1_std']:.2%} in {res['epochs_mean']:.2f} +- "
          f"{res['epochs_std']:.2f} epochs; prep {res['prep_seconds_mean']:.1f} +- "
          f"{res['prep_seconds_std']:.1f} s, train {res['train_seconds_mean']:.1f} +- {res['train_seconds_std']:.1f} s,"
          f" eval {res['eval_seconds_mean']:.1f} +- {res['eval_seconds_std']:.1f} s over {len(res['runs'])} seed(s)")
    if "target" in res:
        print(f"target {res['target']:.2%} on {res['check_images']} held-out training images: reached in "
              f"{res['target_reached']}/{len(res['runs'])} runs, mean {res['target_seconds_mean']:.1f} s of training")
    return 0
