"""The tutorial's steps on resnetkit's API: a residual block, a ResNet-18, training, evaluation.

    python examples/tutorial.py                                  # synthetic data, a short run
    python examples/tutorial.py --data ../shared/data/cifar10-jpeg.tar.gz --epochs 10
"""

from __future__ import annotations

import argparse

import torch

import resnetkit
from resnetkit.models import BasicBlock, Bottleneck


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic:2000")
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--max-steps", type=int, help="cap the optimizer steps (quick checks)")
    p.add_argument("--out", default="runs/tutorial")
    args = p.parse_args()

    # 1. A residual block computes relu(F(x) + x). When the shape changes (stride 2, more
    #    channels) the shortcut is a 1x1 projection so the sum is defined.
    block = BasicBlock(64, 64)
    x = torch.randn(2, 64, 32, 32)
    print("basic block keeps the shape:", tuple(block(x).shape))
    down = BasicBlock(64, 128, stride=2, downsample=torch.nn.Sequential(
        torch.nn.Conv2d(64, 128, 1, stride=2, bias=False), torch.nn.BatchNorm2d(128)))
    print("with a projection shortcut:", tuple(down(x).shape))
    # The bottleneck (1x1 reduce, 3x3, 1x1 expand x4) is what ResNet-50 and deeper use.
    print("bottleneck output channels:", Bottleneck(256, 64)(torch.randn(1, 256, 8, 8)).shape[1])

    # 2. ResNet-18 for CIFAR: a 3x3 stem, four stages of two blocks, global pooling, a linear head.
    model = resnetkit.create_model("resnet18_cifar")
    print(f"resnet18_cifar: {sum(p.numel() for p in model.parameters()):,} parameters")

    # 3. Train it with the tutorial's recipe (SGD lr 0.1, momentum 0.9, weight decay 5e-4,
    #    random crop with 4-pixel padding + flip + normalisation, batch 128). The batch is given
    #    explicitly so it stays the tutorial's even on a small data set, where resnetkit would
    #    otherwise shrink a recipe's batch and scale its lr to the number of images.
    result = resnetkit.train("resnet18_cifar", args.data, recipe="tutorial", epochs=args.epochs, batch_size=128,
                             max_steps=args.max_steps, out=args.out, overwrite=True)
    print(f"trained {len(result.history)} epoch(s) in {result.train_seconds:.1f}s")

    # 4. Evaluate on the test split, without training augmentation.
    metrics = resnetkit.evaluate(f"{args.out}/best.pt")
    print(f"test top-1 {metrics['top1']:.2%} top-5 {metrics['top5']:.2%} over {metrics['count']} images")


if __name__ == "__main__":
    main()
