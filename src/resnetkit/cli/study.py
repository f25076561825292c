"""``resnetkit study``: why residuals work, measured (degradation curves and gradient flow)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..study.budget import StudyPlan

from .. import api


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study", help="plain-vs-residual degradation study and gradient flow",
        description="Experiments behind residual learning (He et al. 2015): 'degradation' trains plain and "
                    "residual nets of several depths with one recipe and budget; 'gradients' records "
                    "per-layer gradient norms and block output scale at initialisation and during training.",
    )
    studies = p.add_subparsers(dest="study", metavar="STUDY")
    studies.required = True

    d = studies.add_parser(
        "degradation", help="train plain and residual nets of several depths, compare error curves",
        description="Trains plain-D and ResNet-D for each depth D (6n+2) with the same recipe (SGD momentum "
                    "0.9, lr 0.1 at batch 128 scaled linearly with --batch-size, one-epoch warmup, weight decay "
                    "1e-4, crop + flip), data, seed and number of iterations; writes degradation.png, "
                    "degradation.json and a verdict from the training error measured on fixed training images. "
                    "With the paper's initialisation ResNet-56 needed about 2,500 iterations to catch up with "
                    "ResNet-20; the study warns before training when its plan gives fewer, and "
                    "--zero-init-residual shows the same within fewer (see docs/study.md).",
    )
    d.add_argument("--depths", type=int, nargs="+", default=[20, 56], help="depths 6n+2 (default: 20 56)")
    _common(d, "runs/study-degradation")
    d.add_argument("--epochs", type=int, help="epochs per network (default 10; with a budget, at most this)")
    d.add_argument("--budget-minutes", type=float,
                   help="time for the whole study: rounds of one more epoch for every network while they fit")
    d.add_argument("--subset", type=int, help="train on this many training images (random, fixed by the seed)")
    d.add_argument("--test-subset", type=int, help="measure test error on this many test images")
    d.add_argument("--train-eval", type=int, default=1000,
                   help="measure training error on this many fixed training images, in eval mode without "
                        "augmentation, after every epoch (default 1000; 0: report only the running error)")
    d.add_argument("--zero-init-residual", action="store_true",
                   help="start every residual branch of the ResNets at zero (last BatchNorm scale 0, Goyal et al. "
                        "2017) so a ResNet of any depth starts as the same shallow function; plain nets keep the "
                        "paper's initialisation")
    d.set_defaults(func=run_degradation)

    g = studies.add_parser(
        "gradients", help="per-layer gradient norms and activation scale during the first steps",
        description="Records the gradient norm of every conv/linear weight and the RMS of every block's output "
                    "at initialisation and every --record-every steps of --steps training steps; writes "
                    "gradients.png and gradients.json. --compare puts the plain and residual forms side by side.",
    )
    g.add_argument("model", help="a model name, for example resnet56 or plain56")
    _common(g, "runs/study-gradients")
    g.add_argument("--steps", type=int, default=50, help="training steps (default 50)")
    g.add_argument("--record-every", type=int, default=10, help="record every N steps (default 10)")
    g.add_argument("--compare", action="store_true", help="record the plain and the residual form of MODEL")
    g.set_defaults(func=run_gradients)


def _common(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--data", default="synthetic", help="data source (default: synthetic)")
    p.add_argument("--out", default=default_out, help=f"output directory (default: {default_out})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, help="resize images to S x S (default: the data's own size)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--overwrite", action="store_true", help="replace a study already in --out")


def run_degradation(args: argparse.Namespace) -> int:
    r = api.study_degradation(args.depths, args.data, out=args.out, epochs=args.epochs, budget_minutes=args.budget_minutes,
              subset=args.subset, test_subset=args.test_subset, train_eval=args.train_eval, seed=args.seed,
              batch_size=args.batch_size, zero_init_residual=args.zero_init_residual,
              image_size=args.image_size, device=args.device,
              precision=args.precision, overwrite=args.overwrite, progress=sys.stderr.isatty(),
              on_plan=_print_plan_warning)
    rec, plan = r["recipe"], r["plan"]
    where = r["cpu"]["model"] if r["device"] == "cpu" else r["device"]
    print(f"{r['train_images']} training / {r['test_images']} test images of {r['data_name']}, "
          f"{rec['epochs']:g} epochs = {rec['iterations']} of {plan['planned_iterations']} planned iterations per "
          f"network, {r['precision']} on {where}")
    if plan["warning_fired"]:
        print(f"fewer iterations than the {plan['min_iterations']:,} that the paper's initialisation needed for "
              "the residual half (see the warning above)")
    print(f"training error: {r['train_error_definition']}; running: on the augmented batches in train mode")
    print(f"{'network':<12} {'params':>9} {'train err':>9} {'running':>9} {'test err':>9} {'seconds':>8}")
    for n in r["networks"]:
        print(f"{n['name']:<12} {n['params']:>9,} {n['final_train_error']:>9.2%} "
              f"{n['final_running_train_error']:>9.2%} {n['final_test_error']:>9.2%} {n['seconds']:>8.0f}")
    for line in r["verdict"]["lines"]:
        print(line)
    if r["verdict_running"]["lines"] != r["verdict"]["lines"]:
        print("by the running training error: " + " ".join(r["verdict_running"]["lines"][:2]))
    print(f"study took {r['budget']['seconds']:.0f} s; wrote {Path(args.out) / 'degradation.json'} and "
          f"{Path(args.out) / 'degradation.png'}")
    return 0


def _print_plan_warning(plan: StudyPlan) -> None:
    """Tell the user, before training goes on, that the plan is too short for the paper's initialisation."""
    if plan.warned:
        print(f"warning: {plan.warning}\n  {plan.advice}", file=sys.stderr, flush=True)


def run_gradients(args: argparse.Namespace) -> int:
    r = api.study_gradients(args.model, args.data, out=args.out, steps=args.steps, record_every=args.record_every,
              compare=args.compare, seed=args.seed, batch_size=args.batch_size, image_size=args.image_size,
              device=args.device, precision=args.precision, overwrite=args.overwrite,
              progress=sys.stderr.isatty())
    for n in r["networks"]:
        for when in ("init", "end"):
            s = n[when]
            step = n["records"][0 if when == "init" else -1]["step"]
            print(f"{n['name']} step {step}: first/last conv gradient norm {s['first_conv_grad']:.3g}/"
                  f"{s['last_conv_grad']:.3g} (ratio {s['first_over_last']:.3g}, x{s['per_layer_factor']:.3f} "
                  f"per layer towards the output); block output RMS {s['first_block_rms']:.3g} -> "
                  f"{s['last_block_rms']:.3g}")
    print(f"wrote {Path(args.out) / 'gradients.json'} and {Path(args.out) / 'gradients.png'}")
    return 0
