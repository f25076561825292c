"""Test top-1 of finished runs with their BatchNorm statistics as training left them and recalibrated.

For each checkpoint (a run's ``last.pt``, trained without ``bn_recalibration``), the run's test split is
evaluated as the run evaluates it (its TTA, bf16 where it trained in bf16), first with the running
statistics training left, then after :func:`resnetkit.training.loop.recalibrate_batchnorm` over the
first 10, 20 and 40 batches of the images a run with ``--bn-recalibration`` draws (its seed's fixed draw
of the training split, un-augmented, at the run's batch size).

    python bench/bn_recalibration.py RUN/last.pt [RUN2/last.pt ...] [--batches 10 20 40]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time


def _top1(evaluate, model, loader, num_classes, device, precision, tta) -> float:  # noqa: ANN001
    return evaluate(model, loader, num_classes, device=device, precision=precision, tta=tta)["top1"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--batches", type=int, nargs="+", default=[10, 20, 40])
    args = ap.parse_args()

    import torch

    from resnetkit.api import _run_data, load_checkpoint
    from resnetkit.runtime.device import keep_freed_memory
    from resnetkit.runtime.inference import evaluate, tta_mode
    from resnetkit.runtime.loaders import eval_loader
    from resnetkit.runtime.probe import cpu_label
    from resnetkit.training.config import TrainConfig
    from resnetkit.training.loop import recalibrate_batchnorm
    from resnetkit.training.setup import recalibration_pick

    device = torch.device("cpu")
    keep_freed_memory(device)
    print(f"{cpu_label()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'checkpoint':<40} {'as trained':>10} " + " ".join(f"{f'{b} batches':>11}" for b in args.batches))
    gains: dict[int, list[float]] = {b: [] for b in args.batches}
    for path in args.checkpoints:
        model = load_checkpoint(path, "cpu", "raw")
        meta = model.checkpoint_meta
        cfg = TrainConfig.from_dict(meta["config"])
        precision = meta.get("resolved_precision", {}).get("precision", "fp32")
        ds = _run_data(cfg)
        common = dict(device=device, precision=precision, mean=ds.mean, std=ds.std, channels_last=True)
        model = model.to(memory_format=torch.channels_last)
        test = eval_loader(ds.test_images, ds.test_labels, batch_size=512, **common)
        pick = recalibration_pick(len(ds.train_labels), max(args.batches) * cfg.batch_size, cfg.seed)

        tta = tta_mode(cfg.tta)
        base = _top1(evaluate, model, test, ds.num_classes, device, precision, tta)
        row = []
        for b in args.batches:
            idx = pick[:b * cfg.batch_size]
            loader = eval_loader(ds.train_images[idx], ds.train_labels[idx], batch_size=cfg.batch_size, **common)
            m = copy.deepcopy(model)
            t0 = time.perf_counter()
            recalibrate_batchnorm(m, loader, device=device, precision=precision)
            seconds = time.perf_counter() - t0
            acc = _top1(evaluate, m, test, ds.num_classes, device, precision, tta)
            gains[b].append(acc - base)
            row.append(f"{acc * 100:6.2f} ({seconds:3.1f}s)")
        print(f"{path[-40:]:<40} {base * 100:>9.2f}% " + " ".join(f"{r:>11}" for r in row), flush=True)
    print("mean change (points): " + ", ".join(f"{b} batches {statistics.mean(g) * 100:+.2f}" for b, g in gains.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
