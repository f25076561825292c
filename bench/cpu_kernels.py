"""CPU training-step speed with and without resnetkit's two CPU kernel choices, side by side in one run.

The two choices: glibc keeps freed blocks for reuse (``keep_freed_memory``; off with
``RESNETKIT_MALLOC_TUNING=0``) and 3x3 convolutions on maps of at most 16 pixels take their bf16
weight gradient from one GEMM (``resnetkit.models.small_conv``; off by setting ``SMALL_MAP_PIXELS``
to 0). Each combination runs in its own process (the allocator setting lasts a process), in rounds
that alternate the combinations; a process times ``--steps`` training steps (bf16 autocast,
channels_last, the stem frozen, Nesterov SGD, random batches) after 3 warm-up steps and reports the
median step and the page faults per step. Then the layers alone: one 3x3 convolution's forward and
backward pass, oneDNN's against the GEMM weight gradient. Last, two per-step costs of the deep network:
Muon's Newton-Schulz iteration with its sums as separate operations against fused into the products
(``addmm``), and fused with three steps instead of five; and whole training steps (Muon included) with
the frozen stem run as its modules against folded into one convolution.

    python bench/cpu_kernels.py [--models resnet_cpu_fullres_deep resnet_cpu] [--rounds 2] [--steps 25] [--muon-stem-only]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

_COMBOS = [("default", "conv"), ("kept", "conv"), ("default", "gemm"), ("kept", "gemm")]


def _train_step(net, opt, x, y) -> None:  # noqa: ANN001
    """One bf16-autocast training step as the recipe takes it (label smoothing 0.2)."""
    import torch
    import torch.nn.functional as F

    with torch.autocast("cpu", torch.bfloat16):
        loss = F.cross_entropy(net(x).float(), y, label_smoothing=0.2)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _child(model: str, small: str, batch: int, steps: int) -> dict:
    import resource

    import torch

    import resnetkit.models.small_conv as small_conv
    from resnetkit.models import create_model
    from resnetkit.runtime.device import keep_freed_memory

    keep_freed_memory(torch.device("cpu"))  # a no-op under RESNETKIT_MALLOC_TUNING=0
    if small == "conv":
        small_conv.SMALL_MAP_PIXELS = 0
    torch.manual_seed(0)
    net = create_model(model, whiten=True, activation="gelu").to(memory_format=torch.channels_last)
    net.freeze_stem()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        _train_step(net, opt, x, y)

    for _ in range(3):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"img_s": batch / statistics.median(times), "faults_per_step": faults / steps}


def _layer_ms(conv, x0, g, gemm: bool) -> float:  # noqa: ANN001
    """Median ms of one forward and backward pass of ``conv`` (the GEMM path if ``gemm``, else oneDNN's)."""
    import torch
    import torch.nn.functional as F

    times = []
    for i in range(18):
        t0 = time.perf_counter()
        x = x0.clone().requires_grad_()
        with torch.autocast("cpu", torch.bfloat16):
            out = conv(x) if gemm else F.conv2d(x, conv.weight, padding=1)
        out.backward(g)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _layers() -> list[tuple[str, float, float]]:
    import torch

    import resnetkit.models.small_conv as small_conv

    small_conv.SMALL_MAP_PIXELS = 1 << 30  # the GEMM path on every map, to show where it stops paying
    rows = []
    for c_in, c_out, side in [(256, 256, 3), (128, 256, 4), (128, 128, 4), (128, 128, 7), (64, 64, 15)]:
        x0 = torch.randn(256, c_in, side, side).to(memory_format=torch.channels_last)
        g = torch.randn(256, c_out, side, side).to(torch.bfloat16).to(memory_format=torch.channels_last)
        conv = small_conv.Conv3x3(c_in, c_out)
        ms = [_layer_ms(conv, x0, g, gemm) for gemm in (False, True)]
        gemm_note = "" if side * side <= 16 else " (training keeps oneDNN here)"
        rows.append((f"{c_in}->{c_out} channels, {side}x{side} map{gemm_note}", ms[0], ms[1]))
    return rows


def _ns_separate(m, steps: int = 5):  # noqa: ANN001, ANN202
    """Newton-Schulz as resnetkit ran it before: the polynomial's sums and scalings as separate operations."""
    import torch

    from resnetkit.training.muon import NS_COEFFICIENTS

    a, b, c = NS_COEFFICIENTS
    x = m.to(torch.bfloat16)
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x


def _muon_and_stem(batch: int, rounds: int) -> tuple[list[tuple], list[float], list[float]]:
    """Newton-Schulz per filter bank of the deep network (separate vs fused products: ms, and relative distance from
    the fp32 iteration's result), then whole training steps with Muon, the stem frozen, run as its modules and
    folded into one convolution (img/s per round)."""
    import torch

    from resnetkit.models import create_model
    from resnetkit.runtime.device import keep_freed_memory
    from resnetkit.training.muon import MuonSGD, muon_filters, orthogonalize

    keep_freed_memory(torch.device("cpu"))
    torch.manual_seed(0)
    net = create_model("resnet_cpu_fullres_deep", whiten=True, activation="gelu").to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    net.train()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        net(x)  # running statistics for the stem, as after the epochs it trains
    net.freeze_stem()

    def ms(fn, reps: int = 15) -> float:  # noqa: ANN001
        for _ in range(3):
            fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

    ns_rows = []
    for p in net.parameters():
        if p.ndim == 4 and p.requires_grad:
            m = torch.randn(p.shape[0], p[0].numel())
            exact = orthogonalize(m, 5, torch.float32)
            off = [float((f(m).float() - exact).norm() / exact.norm()) for f in
                   (_ns_separate, lambda m: orthogonalize(m, 5, torch.bfloat16))]
            ns_rows.append((f"{tuple(m.shape)}", ms(lambda m=m: _ns_separate(m)),
                            ms(lambda m=m: orthogonalize(m, 5, torch.bfloat16)), *off,
                            ms(lambda m=m: orthogonalize(m, 3, torch.bfloat16))))
    params = [p for p in net.parameters() if p.requires_grad]
    filters = muon_filters(net)
    opt = MuonSGD([{"params": [p for p in params if id(p) in filters], "muon": True, "lr": 0.01, "momentum": 0.6},
                   {"params": [p for p in params if id(p) not in filters]}], lr=0.01, momentum=0.9, nesterov=True,
                  ns_dtype=torch.bfloat16)

    def step() -> None:
        _train_step(net, opt, x, y)

    modules, folded = [], []
    for _ in range(rounds):
        for fold, out in ((False, modules), (True, folded)):
            net._fold_stem = fold
            out.append(batch / ms(step, 9) * 1e3)
    return ns_rows, modules, folded


def _combos_and_layers(args: argparse.Namespace) -> None:
    print(f"{'network':<26} {'heap':<8} {'small maps':<10} {'img/s (median of rounds)':>25} {'faults/step':>12} {'vs default':>11}")
    for model in args.models:
        results: dict[tuple[str, str], list[dict]] = {c: [] for c in _COMBOS}
        for _ in range(args.rounds):
            for heap, small in _COMBOS:
                env = {**os.environ, "RESNETKIT_MALLOC_TUNING": "1" if heap == "kept" else "0"}
                out = subprocess.run([sys.executable, __file__, "--child", model, small, "--batch-size",
                                      str(args.batch_size), "--steps", str(args.steps)], env=env, check=True,
                                     capture_output=True, text=True, timeout=900)
                results[(heap, small)].append(json.loads(out.stdout.strip().splitlines()[-1]))
        base = statistics.median(r["img_s"] for r in results[("default", "conv")])
        for heap, small in _COMBOS:
            rs = results[(heap, small)]
            rate = statistics.median(r["img_s"] for r in rs)
            faults = statistics.median(r["faults_per_step"] for r in rs)
            runs = ", ".join(f"{r['img_s']:.0f}" for r in rs)
            print(f"{model:<26} {heap:<8} {small:<10} {rate:>8.0f} ({runs}){'':>3} {faults:>12.0f} {rate / base:>10.2f}x")
    print("\none 3x3 convolution, forward + backward, bf16 autocast, batch 256 (median ms)")
    print(f"{'layer':<58} {'oneDNN':>8} {'GEMM dW':>8} {'ratio':>6}")
    for name, conv_ms, gemm_ms in _layers():
        print(f"{name:<58} {conv_ms:>8.1f} {gemm_ms:>8.1f} {conv_ms / gemm_ms:>5.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet_cpu_fullres_deep", "resnet_cpu"])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--muon-stem-only", action="store_true", help="only the Newton-Schulz and frozen-stem timings")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1], args.batch_size, args.steps)))
        return 0
    import torch

    from resnetkit.runtime.probe import cpu_label

    print(f"{cpu_label()}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    if not args.muon_stem_only:
        _combos_and_layers(args)
    ns_rows, modules, folded = _muon_and_stem(args.batch_size, max(3, args.rounds))
    print("\nMuon's Newton-Schulz (bf16) per filter bank of resnet_cpu_fullres_deep (median ms): 5 steps with the sums\n"
          "as separate operations and fused into the products, and 3 fused steps (cpu-fast's --muon-ns-steps)")
    print(f"{'filters as a matrix':<20} {'separate':>9} {'fused':>7} {'ratio':>6} {'3 steps':>8}"
          "   off the fp32 result: separate, fused")
    for name, old_ms, new_ms, old_off, new_off, three_ms in ns_rows:
        print(f"{name:<20} {old_ms:>9.2f} {new_ms:>7.2f} {old_ms / new_ms:>5.2f}x {three_ms:>8.2f}"
              f"   {old_off:.2%}, {new_off:.2%}")
    total_old, total_new, total_three = (sum(r[i] for r in ns_rows) for i in (1, 2, 5))
    print(f"{'all':<20} {total_old:>9.2f} {total_new:>7.2f} {total_old / total_new:>5.2f}x {total_three:>8.2f}")
    m_rate, f_rate = statistics.median(modules), statistics.median(folded)
    print(f"\nresnet_cpu_fullres_deep training steps with Muon, the stem frozen (img/s, rounds alternating):\n"
          f"  stem as its modules (BatchNorm on batch statistics) {m_rate:.0f} ({', '.join(f'{r:.0f}' for r in modules)})\n"
          f"  stem folded into one convolution                    {f_rate:.0f} ({', '.join(f'{r:.0f}' for r in folded)})"
          f"  {f_rate / m_rate:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
