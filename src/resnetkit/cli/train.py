"""``resnetkit train``: train a ResNet on CIFAR files, an image folder or archive, or synthetic data."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys

from .. import api


def add_parser(sub: argparse._SubParsersAction) -> None:
    recipes = "; ".join(f"{r.name}: {r.doc}" for r in api.list_recipes())
    p = sub.add_parser(
        "train", help="train a model and write a run directory",
        description="Train a ResNet. Flags override the recipe's values. Recipes -- " + recipes,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("what to train")
    g.add_argument("--model", help="registered model name (see 'resnetkit models'); default: the recipe's or resnet20")
    g.add_argument("--data", help="'synthetic', a CIFAR directory or cifar-10/100-python.tar.gz, or an image "
                                  "folder tree / .tar / .tar.gz / .zip of one (train/ and test/ or val/)")
    g.add_argument("--dataset", choices=["cifar10", "cifar100", "folder", "synthetic"], help="force the source type")
    g.add_argument("--recipe", help="named preset (default: 'default'; 'tutorial' is the tutorial exactly)")
    g.add_argument("--download", action="store_true", default=None, help="download CIFAR if it is missing")
    g.add_argument("--image-size", type=int, help="resize images to this square size")
    g.add_argument("--progressive-sizes", type=int, nargs="+", metavar="SIZE",
                   help="train at these image sizes in equal consecutive parts of the run, e.g. 24 28 32 "
                        "(progressive resizing: cheaper early epochs); evaluation is at full size")
    g.add_argument("--skip-bad-images", action="store_true", default=None,
                   help="skip unreadable images (reported) instead of failing")
    g.add_argument("--val-split", type=int, help="hold out this many training images for model selection")
    g.add_argument("--pretrained", help="start from torchvision weights (e.g. IMAGENET1K_V2) or a .pth/.safetensors file")
    g.add_argument("--freeze-backbone", action="store_true", default=None, help="train only the classifier")
    g.add_argument("--backbone-lr-mult", type=float, help="backbone learning rate as a fraction of --lr")
    h = p.add_argument_group("optimisation")
    h.add_argument("--epochs", type=float)
    h.add_argument("--batch-size", type=int, help="global batch size (split across processes)")
    h.add_argument("--lr", type=float, help="peak learning rate")
    h.add_argument("--momentum", type=float)
    h.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    h.add_argument("--weight-decay", type=float)
    h.add_argument("--label-smoothing", type=float)
    h.add_argument("--schedule", choices=["constant", "cosine", "linear", "step"],
                   help="lr schedule after the warmup (step: /10 at 50%% and 75%% of the run, He et al. 2015)")
    h.add_argument("--warmup-epochs", type=float)
    h.add_argument("--crop-pad", type=int, help="random-crop padding in pixels (0: no crop)")
    h.add_argument("--crop-fill", choices=["zero", "reflect"])
    h.add_argument("--flip", choices=["random", "alternating", "none"])
    h.add_argument("--cutout", type=int, help="cutout square size (0: off)")
    h.add_argument("--seed", type=int)
    m = p.add_argument_group("model options")
    m.add_argument("--zero-init-residual", action="store_true", default=None)
    m.add_argument("--drop-rate", type=float, help="dropout before the classifier")
    m.add_argument("--shortcut", choices=["A", "B"], help="shortcut type when shapes change")
    m.add_argument("--width-mult", type=float)
    r = p.add_argument_group("running")
    r.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    r.add_argument("--precision", choices=["auto", "bf16", "fp32"])
    r.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    r.add_argument("--compile", action="store_true", default=None, help="torch.compile (compile time reported apart)")
    r.add_argument("--deterministic", action="store_true", default=None, help="deterministic algorithms only")
    r.add_argument("--tta", action="store_true", default=None, help="flip test-time augmentation in evaluation")
    r.add_argument("--out", help="run directory (default runs/MODEL-TIME)")
    r.add_argument("--overwrite", action="store_true", default=None, help="replace a run already in --out")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    r.add_argument("--auto-resume", action="store_true",
                   help="continue the run in --out from its last.pt if it has one (same settings), else start it "
                        "there: for jobs that are requeued; implied after torchrun restarts the workers")
    r.add_argument("--checkpoint-every", type=int, help="also save last.pt every N steps (bounds the steps a "
                                                         "restart loses)")
    r.add_argument("--eval-every", type=int, help="evaluate on the test split every N epochs (0: only at the end)")
    r.add_argument("--max-steps", type=int, help="stop after N optimizer steps (smoke runs)")
    r.add_argument("--stop-after-steps", type=int, metavar="N",
                   help="save last.pt and stop after N steps in all, keeping the full run's lr schedule "
                        "(finish later with --resume)")
    r.add_argument("--log-steps", action="store_true", default=None, help="write every step's loss to steps.jsonl")
    r.add_argument("--sync-bn", action="store_true", default=None, help="SyncBatchNorm across processes")
    r.add_argument("--tensorboard", action="store_true", default=None, help="also log to RUN_DIR/tb")
    r.add_argument("--nproc", type=int, help="launch N local processes with torchrun (DDP)")
    p.set_defaults(func=main)


MODEL_OPTIONS = ("zero_init_residual", "drop_rate", "shortcut", "width_mult")
NOT_CONFIG = ("command", "func", "verbose", "resume", "auto_resume", "nproc", "recipe", *MODEL_OPTIONS)


def _launch_torchrun(nproc: int) -> int:
    argv = sys.argv[1:]
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "resnetkit", *rest]
    # torchrun in its own session gets each Ctrl-C / SIGTERM exactly once, from us, and forwards it:
    # every rank stops after the same step, last.pt saved (subprocess.call would SIGKILL torchrun on
    # Ctrl-C and leave the ranks running)
    proc = subprocess.Popen(cmd, start_new_session=True)

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = proc.wait()
        return 128 - rc if rc < 0 else rc  # killed by a signal: the shell's convention
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(args: argparse.Namespace) -> int:
    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_torchrun(args.nproc)
    if int(os.environ.get("RANK", "0")) != 0 and not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)  # one copy of the progress log: rank 0's
    options = {k: v for k, v in vars(args).items() if k not in NOT_CONFIG}
    model_kwargs = {k: getattr(args, k) for k in MODEL_OPTIONS if getattr(args, k) is not None}
    if model_kwargs:
        options["model_kwargs"] = model_kwargs
    progress = sys.stderr.isatty()
    if args.resume:
        # every flag given goes to resume, so one that a resume cannot change is refused, not ignored
        given = {k: v for k, v in options.items() if v is not None}
        if args.recipe is not None:
            given["recipe"] = args.recipe
        result = api.resume(args.resume, progress=progress, **given)
    else:
        result = api.train(recipe=args.recipe, progress=progress, auto_resume=args.auto_resume, **options)
    if int(os.environ.get("RANK", "0")) == 0:
        t = result.test
        print(f"resnetkit train: {result.config['model']} on {result.config['data']}: test top-1 {t['top1']:.2%}, "
              f"top-5 {t['top5']:.2%}, loss {t['loss']:.4f} after {len(result.history)} epoch(s); "
              f"train {result.train_seconds:.1f}s, data prep {result.prep_seconds:.1f}s"
              + (f", compile {result.compile_seconds:.1f}s" if result.compile_seconds else "")
              + f"; wall {result.wall_seconds:.1f}s; run directory {result.out_dir}")
    return 0
