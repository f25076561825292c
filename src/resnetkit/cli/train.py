"""``resnetkit train``: train a ResNet on CIFAR files, an image folder or archive, or synthetic data."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import subprocess
import sys
from typing import Any

from .. import api
from ..errors import UserError
from .options import add_tta

MAX_EPOCHS = 100_000  # far beyond any real run (the longest CIFAR recipes train a few thousand epochs)


def _epochs(text: str) -> int:
    """``--epochs``: a whole number of epochs from 1 to :data:`MAX_EPOCHS` (``1e9`` or ``2.5`` refused)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a whole number of epochs, got {text!r}") from None
    if not 1 <= value <= MAX_EPOCHS:
        raise argparse.ArgumentTypeError(f"takes a whole number of epochs from 1 to {MAX_EPOCHS}, got {value}")
    return value


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def _duration(text: str) -> float:
    """``--time-budget``: seconds, or a number with s, m (min) or h (``300``, ``90s``, ``5m``, ``1.5h``)."""
    t = text.strip().lower()
    number = t.rstrip("minsh")
    unit = t[len(number):]
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"takes seconds or a duration such as 90s, 5m or 1.5h, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"takes a positive duration, got {text!r}")
    return value


def recipes_table() -> str:
    """The recipes as a plain-text table (``resnetkit recipes`` and the end of ``train --help``)."""
    rows = [("recipe", "model", "epochs", "batch", "optimizer", "lr", "schedule", "precision")]
    for r in api.list_recipes():
        cfg = api.recipe_defaults(r.name)
        lr = f"{cfg['lr']:g}" if cfg["optimizer"] != "muon" else f"{cfg['muon_lr']:g} / {cfg['lr']:g}"
        rows.append((r.name, cfg["model"], f"{cfg['epochs']:g}", str(cfg["batch_size"]), cfg["optimizer"], lr,
                     cfg["schedule"], cfg["precision"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def _shown(dest: str, value: Any) -> str:
    if value is None:
        return "auto" if dest in ("channels_last", "device", "precision") else "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class _RecipeHelp(argparse.Action):
    """``--help`` that shows each option's default for the chosen recipe (``--recipe NAME --help``)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        name = getattr(namespace, "recipe", None) or "default"
        fill_recipe_defaults(parser, name)
        parser.print_help()
        parser.exit()


def fill_recipe_defaults(parser: argparse.ArgumentParser, recipe: str) -> None:
    """Append "(default: VALUE, from recipe 'NAME')" to the help of every option the recipe sets."""
    try:
        values = api.recipe_defaults(recipe)
    except Exception:  # an unknown recipe: --help still works, parsing reports the name
        values, recipe = api.recipe_defaults("default"), "default"
    for action in parser._actions:
        if (action.dest in values and action.dest not in NO_DEFAULT_SHOWN and action.help
                and "(default:" not in action.help):
            shown = _shown(action.dest, values[action.dest])
            if action.dest == "batch_size":
                shown += f", at most 1/{api.BATCH_FRACTION} of the training images, lr scaled with it"
            action.help = f"{action.help} (default: {shown}, from recipe '{recipe}')".replace("%", "%%") \
                if "%" not in action.help else f"{action.help} (default: {shown}, from recipe '{recipe}')"


NO_DEFAULT_SHOWN = ("data", "out", "recipe", "resume", "adapt_batch")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model and write a run directory", add_help=False,
        description="Train a ResNet. A recipe fills every option not given; each option's default below is the "
                    "chosen recipe's (give --recipe NAME before --help to see another's).",
        epilog="recipes:\n" + recipes_table() + "\n(details: resnetkit recipes)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-h", "--help", action=_RecipeHelp, help="show this help (with --recipe NAME first: that recipe's "
                                                              "defaults) and exit")
    g = p.add_argument_group("what to train")
    g.add_argument("--model", help="registered model name (see 'resnetkit models')")
    g.add_argument("--data", help="required: an image folder tree or .tar / .tar.gz / .zip of one (train/ and test/ "
                                  "or val/; or train/ alone with --test-split), a CIFAR directory or "
                                  "cifar-10/100-python.tar.gz, 'cifar10' / 'cifar100' (with --download), or "
                                  "'synthetic' for generated images")
    g.add_argument("--dataset", choices=["cifar10", "cifar100", "folder", "synthetic"],
                   help="force the source type (default: guessed from --data)")
    g.add_argument("--recipe", help="named preset that fills the options not given (default: 'default'; see the "
                                    "table below)")
    g.add_argument("--download", action="store_true", default=None, help="download CIFAR if it is missing")
    g.add_argument("--image-size", type=int, help="resize images to this square size (default: the data's own)")
    g.add_argument("--progressive-sizes", type=int, nargs="+", metavar="SIZE",
                   help="train at these image sizes in equal consecutive parts of the run, e.g. 24 28 32 "
                        "(progressive resizing: cheaper early epochs); evaluation is at full size")
    g.add_argument("--skip-bad-images", action="store_true", default=None,
                   help="skip unreadable images and empty class folders (reported) instead of failing")
    g.add_argument("--val-split", type=int, help="hold out this many training images for model selection")
    g.add_argument("--test-split", type=float, metavar="FRACTION",
                   help="for an image folder with only train/<class>/ or only <class>/ folders: hold out this "
                        "fraction of each class as the test split, e.g. 0.1 (recorded in config.json; eval of "
                        "the run reuses the same images)")
    g.add_argument("--test-split-seed", type=int, metavar="N",
                   help="seed of the --test-split draw (kept apart from --seed so runs with different seeds "
                        "share one test split)")
    g.add_argument("--pretrained", help="start from torchvision weights (e.g. IMAGENET1K_V2) or a .pth/.safetensors file")
    g.add_argument("--freeze-backbone", action="store_true", default=None,
                   help="train only the classifier (with --pretrained)")
    g.add_argument("--backbone-lr-mult", type=float, help="backbone learning rate as a fraction of --lr")
    h = p.add_argument_group("optimisation")
    length = h.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=_epochs, help="whole passes over the training images")
    length.add_argument("--time-budget", type=_duration, metavar="DURATION",
                   help="train for this long instead of --epochs (300, 90s, 5m, 1.5h): the lr schedule runs "
                        "on the clock and training stops when the time is spent; evaluation does not count. Under "
                        "--recipe cpu-fast it also picks the network the budget trains best on this CPU")
    h.add_argument("--batch-size", type=int, help="global batch size (split across processes)")
    h.add_argument("--lr", type=float, help="peak learning rate")
    h.add_argument("--momentum", type=float, help="SGD momentum")
    h.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None, help="Nesterov momentum")
    h.add_argument("--optimizer", choices=["sgd", "muon"],
                   help="muon: Muon (orthogonalised momentum, Jordan et al. 2024) on the convolution filters and "
                        "SGD with --lr, --momentum, --weight-decay on the rest; sgd: SGD on everything")
    h.add_argument("--muon-lr", type=float, help="peak learning rate of the filters under --optimizer muon")
    h.add_argument("--muon-momentum", type=float, help="momentum of the filters under --optimizer muon")
    h.add_argument("--muon-ns-steps", type=int, metavar="N",
                   help="Newton-Schulz iterations per Muon update (cpu-fast, like airbench94_muon, runs 3)")
    h.add_argument("--weight-decay", type=float, help="L2 weight decay (not on BatchNorm and biases in most recipes)")
    h.add_argument("--label-smoothing", type=float, help="label smoothing of the loss, in [0, 1)")
    h.add_argument("--schedule", choices=["constant", "cosine", "linear", "step"],
                   help="lr schedule after the warmup (step: /10 at 50%% and 75%% of the run, He et al. 2015)")
    h.add_argument("--warmup-epochs", type=float, help="epochs of linear lr warmup from 0")
    h.add_argument("--stem-epochs", type=int, metavar="N",
                   help="train a resnet_cpu network's stem for N epochs, then freeze it so the backward pass skips it "
                        "(cpu-fast: 2; a number past the run's end never freezes it)")
    h.add_argument("--bn-recalibration", type=int, metavar="IMAGES",
                   help="after the last step, set the BatchNorm statistics from this many training images averaged "
                        "equally, instead of the running average of the last batches (precise BatchNorm; inside a "
                        "time budget; cpu-fast: 10240; 0: off)")
    h.add_argument("--crop-pad", type=int, help="random-crop padding in pixels (0: no crop)")
    h.add_argument("--crop-fill", choices=["zero", "reflect"], help="how the crop padding is filled")
    h.add_argument("--flip", choices=["random", "alternating", "none"], help="horizontal flip augmentation")
    h.add_argument("--cutout", type=int, help="cutout square size (0: off)")
    h.add_argument("--brightness", type=float, metavar="SHIFT",
                   help="add to each normalised training image a shift drawn uniformly from +-SHIFT (0: off)")
    h.add_argument("--contrast", type=float, metavar="FRACTION",
                   help="scale each normalised training image by a factor drawn uniformly from 1 +- FRACTION (0: off)")
    h.add_argument("--seed", type=int, help="seed of every random choice (weights, data order, augmentation)")
    x = p.add_argument_group("weight averaging and mixing")
    x.add_argument("--ema", type=float, metavar="DECAY",
                   help="keep an exponential moving average of the weights with this decay (e.g. 0.999), "
                        "warmed up as min(DECAY, (1+t)/(10+t)); evaluated beside the raw weights")
    x.add_argument("--ema-every", type=int, metavar="N", help="update the average every N steps (default 1)")
    x.add_argument("--mixup", type=float, metavar="ALPHA", help="mixup with lam ~ Beta(ALPHA, ALPHA) (0: off)")
    x.add_argument("--cutmix", type=float, metavar="ALPHA", help="cutmix with lam ~ Beta(ALPHA, ALPHA) (0: off)")
    x.add_argument("--mix-prob", type=float, metavar="P", help="chance that a batch is mixed (default 1)")
    x.add_argument("--mix-switch-prob", type=float, metavar="P",
                   help="chance of cutmix rather than mixup when both are on (default 0.5)")
    m = p.add_argument_group("model options")
    m.add_argument("--zero-init-residual", action="store_true", default=None,
                   help="start each residual branch's last BatchNorm at zero (Goyal et al. 2017)")
    m.add_argument("--drop-rate", type=float, help="dropout before the classifier (default: the model's)")
    m.add_argument("--shortcut", choices=["A", "B"], help="shortcut type when shapes change (default: the model's)")
    m.add_argument("--width-mult", type=float, help="multiply every layer's width (default: the model's)")
    m.add_argument("--activation", choices=["relu", "gelu"],
                   help="activation of the resnet_cpu networks (default: the model's relu; gelu under cpu-fast)")
    r = p.add_argument_group("running")
    r.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 where it is faster than fp32 on this device, else fp32")
    r.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory layout (auto: with bf16)")
    r.add_argument("--compile", action="store_true", default=None, help="torch.compile (compile time reported apart)")
    r.add_argument("--deterministic", action="store_true", default=None, help="deterministic algorithms only")
    add_tta(r, default=None)
    r.add_argument("--out", help="run directory (default: runs/MODEL-TIME)")
    r.add_argument("--overwrite", action="store_true", default=None, help="replace a run already in --out")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    r.add_argument("--auto-resume", action="store_true",
                   help="continue the run in --out from its last.pt if it has one (same settings), else start it "
                        "there: for jobs that are requeued; implied after torchrun restarts the workers")
    r.add_argument("--checkpoint-every", type=int, help="also save last.pt every N steps (0: at epoch ends only; "
                                                         "bounds the steps a restart loses)")
    r.add_argument("--eval-every", type=int, help="evaluate on the test split every N epochs (0: only at the end)")
    r.add_argument("--max-steps", type=int, help="stop after N optimizer steps (smoke runs)")
    r.add_argument("--stop-after-steps", type=int, metavar="N",
                   help="save last.pt and stop after N steps in all, keeping the full run's lr schedule "
                        "(finish later with --resume)")
    r.add_argument("--log-steps", action="store_true", default=None, help="write every step's loss to steps.jsonl")
    r.add_argument("--sync-bn", action="store_true", default=None, help="SyncBatchNorm across processes")
    r.add_argument("--tensorboard", action="store_true", default=None, help="also log to RUN_DIR/tb")
    r.add_argument("--log", type=_loggers, metavar="LIST",
                   help="also log to any of tensorboard,csv,mlflow (comma-separated); metrics.jsonl is always written")
    r.add_argument("--mlflow-uri", help="MLflow tracking URI (default: mlflow.db and mlruns/ beside the run directory)")
    r.add_argument("--nproc", type=int, help="launch N local processes with torchrun (DDP)")
    r.add_argument("--no-report", action="store_true", help="do not write RUN_DIR/report.html at the end")
    p.set_defaults(func=main)


def _loggers(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


MODEL_OPTIONS = ("zero_init_residual", "drop_rate", "shortcut", "width_mult", "activation")
NOT_CONFIG = ("command", "func", "verbose", "resume", "auto_resume", "nproc", "recipe", "no_report", *MODEL_OPTIONS)


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
    if args.nproc is not None and args.nproc < 1:
        raise UserError(f"--nproc takes a number of processes of at least 1, got {args.nproc}")
    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_torchrun(args.nproc)
    if int(os.environ.get("RANK", "0")) != 0 and not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)  # one copy of the progress log: rank 0's
    options = {k: v for k, v in vars(args).items() if k not in NOT_CONFIG}
    model_kwargs = {k: getattr(args, k) for k in MODEL_OPTIONS if getattr(args, k) is not None}
    if model_kwargs:
        options["model_kwargs"] = model_kwargs
    progress = sys.stderr.isatty()
    command = shlex.join(["resnetkit", *sys.argv[1:]])  # recorded in the run's report
    if args.resume:
        # every flag given goes to resume, so one that a resume cannot change is refused, not ignored
        given = {k: v for k, v in options.items() if v is not None}
        if args.recipe is not None:
            given["recipe"] = args.recipe
        result = api.resume(args.resume, progress=progress, report=not args.no_report, command=command, **given)
    else:
        result = api.train(recipe=args.recipe, progress=progress, report=not args.no_report, command=command,
                           auto_resume=args.auto_resume, **options)
    if int(os.environ.get("RANK", "0")) == 0:
        t, paused = result.test, result.paused_at_step is not None
        top5 = f"top-5 {t['top5']:.2%}, " if len(result.classes) > 5 or not result.classes else ""  # 100% if <= 5
        print(f"resnetkit train: {result.config['model']} on {result.config['data']}: test top-1 {t['top1']:.2%}, "
              f"{top5}loss {t['loss']:.4f} after "
              + (f"{result.epochs_trained:.2f} epochs" if result.config.get("time_budget") or paused else
                 f"{len(result.history)} epoch(s)") + "; "
              f"train {result.train_seconds:.1f}s, data prep {result.prep_seconds:.1f}s"
              + (f", compile {result.compile_seconds:.1f}s" if result.compile_seconds else "")
              + f"; wall {result.wall_seconds:.1f}s; run directory {result.out_dir}")
        if paused:
            print(f"resnetkit train: stopped at step {result.paused_at_step} as --stop-after-steps asked; "
                  f"{result.out_dir}/last.pt holds it, continue with --resume {result.out_dir}")
    return 0
