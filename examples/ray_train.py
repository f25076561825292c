"""Train a ResNet with Ray Train: N workers, restarted from the last checkpoint after a failure.

    pip install "resnetkit[ray]"
    python examples/ray_train.py --workers 2                      # a local Ray cluster on this machine
    python examples/ray_train.py --address auto --workers 8 --gpu --data cifar10 --epochs 30

Every worker runs resnetkit's own trainer; Ray creates the process group, restarts the group
after a worker dies (up to --max-failures times) and keeps the checkpoints under --storage.
The run directory (--out) is the same as ``resnetkit train`` writes, and its ``last.pt`` (or
the one Ray keeps) loads with ``resnetkit eval`` in one process.
"""

from __future__ import annotations

import argparse

import ray

import resnetkit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", help="an existing Ray cluster ('auto'); default: start a local one")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL)")
    p.add_argument("--max-failures", type=int, default=1)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data", default="synthetic:2000")
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--batch-size", type=int, default=128, help="global batch, split over the workers")
    p.add_argument("--checkpoint-every", type=int, default=10, help="steps between reported checkpoints")
    p.add_argument("--storage", default="runs/ray", help="where Ray keeps its checkpoints")
    p.add_argument("--out", help="run directory (default STORAGE/resnetkit/run)")
    args = p.parse_args()

    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=args.workers, include_dashboard=False)
    result = resnetkit.train_on_ray(
        args.model, args.data, num_workers=args.workers, use_gpu=args.gpu, max_failures=args.max_failures,
        storage_path=args.storage, epochs=args.epochs, batch_size=args.batch_size,
        checkpoint_every=args.checkpoint_every, out=args.out)
    m = result.metrics
    print(f"step {m['global_step']} on {m['world_size']} workers (resumed from step {m['resumed_from']}): "
          f"train loss {m.get('train_loss', float('nan')):.4f}, test top-1 {m.get('test_acc', float('nan')):.2%}")
    print(f"run directory {result.out_dir}; Ray checkpoint {result.checkpoint}/last.pt")


if __name__ == "__main__":
    main()
