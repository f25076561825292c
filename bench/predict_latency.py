"""CPU prediction speed: eager PyTorch (fp32) vs ONNX Runtime, side by side in one run.

For each model: latency at batch 1 (median ms over ``--runs`` calls after ``--warmup``) and
throughput at batch 256 (images/s from the median of ``--throughput-runs`` calls). The ONNX model
is the one ``resnetkit export --format onnx`` writes (verified against eager before timing). Both
runtimes use the same number of threads. Random weights: speed does not depend on them.

    python bench/predict_latency.py [--models resnet20 resnet18_cifar] [--out bench/results/predict_latency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch


def _median_seconds(fn: Callable[[], object], runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _model(name: str) -> torch.nn.Module:
    """A registry model with the attributes a checkpoint gives it, so it can be exported."""
    from resnetkit.models import create_model

    model = create_model(name, num_classes=10).eval()
    model.classes = [f"class{i}" for i in range(10)]
    model.mean, model.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    model.image_size = model.default_input_size[-1]
    model.checkpoint_meta = {}
    return model


def bench_model(name: str, runs: int, throughput_runs: int, warmup: int, big: int, workdir: Path) -> dict:
    import onnxruntime as ort

    from resnetkit.export import export_model

    model = _model(name)
    size = model.image_size
    export = export_model(model, "onnx", workdir / f"{name}.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(export.path), opts, providers=["CPUExecutionProvider"])
    row: dict = {"model": name, "image_size": size, "onnx_export_seconds": round(export.seconds, 2),
                 "onnx_max_abs_diff": export.max_abs_diff}
    for batch, key, n in ((1, "batch1", runs), (big, f"batch{big}", throughput_runs)):
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        xn = x.numpy()
        with torch.inference_mode():
            eager = _median_seconds(lambda: model(x), n, warmup)
        onnx = _median_seconds(lambda: session.run(None, {"input": xn}), n, warmup)
        row[key] = {"eager_ms": eager * 1e3, "onnx_ms": onnx * 1e3, "eager_img_s": batch / eager,
                    "onnx_img_s": batch / onnx, "onnx_speedup": eager / onnx, "runs": n}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet18_cifar"])
    p.add_argument("--runs", type=int, default=50, help="timed batch-1 calls per runtime")
    p.add_argument("--throughput-runs", type=int, default=3, help="timed large-batch calls per runtime")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=256, help="the large batch size")
    p.add_argument("--threads", type=int, default=None, help="threads for both runtimes (default: torch's)")
    p.add_argument("--out", default="bench/results/predict_latency.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import onnxruntime

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_model(m, args.runs, args.throughput_runs, args.warmup, args.batch, Path(tmp))
                for m in args.models]
    big = f"batch{args.batch}"
    print(f"CPU prediction, fp32, {torch.get_num_threads()} threads (load average before: "
          f"{load_before[0]:.1f}); median of {args.runs} (batch 1) / {args.throughput_runs} (batch {args.batch}) runs")
    print(f"{'model':<16} {'b1 eager ms':>11} {'b1 ORT ms':>10} {'ORT x':>6}   "
          f"{'b' + str(args.batch) + ' eager img/s':>17} {'ORT img/s':>10} {'ORT x':>6}")
    for r in rows:
        a, b = r["batch1"], r[big]
        print(f"{r['model']:<16} {a['eager_ms']:11.2f} {a['onnx_ms']:10.2f} {a['onnx_speedup']:6.2f}   "
              f"{b['eager_img_s']:17.0f} {b['onnx_img_s']:10.0f} {b['onnx_speedup']:6.2f}")
    result = {
        "benchmark": "predict_latency", "rows": rows, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "seconds": round(time.perf_counter() - t0, 1), "torch": str(torch.__version__),
        "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "args": vars(args),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
