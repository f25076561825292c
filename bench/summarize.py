"""Print one table from the JSON files a benchmark script wrote: `python bench/summarize.py DIR`."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folder: str) -> int:
    rows = []
    for path in sorted(Path(folder).glob("*.json")) + sorted(Path(folder).glob("*/degradation.json")):
        d = json.loads(path.read_text())
        where = d.get("machine", {}).get("device", "?")
        if d.get("mode") == "throughput":
            r = {x["name"]: x for x in d["rows"]}
            tut = f"{d['resnetkit_over_tutorial']:.2f}x" if "resnetkit_over_tutorial" in d else "n/a"
            rows.append((f"throughput {d['model']}", f"{r['resnetkit']['images_per_s']:.0f} img/s",
                         f"{d['resnetkit_over_ceiling']:.2f} of ceiling, {tut} tutorial", where))
        elif "top1_mean" in d:
            budget = f"{d['budget_seconds']:.0f} s budget" if d.get("budget_seconds") else f"{d['epochs']:.2f} epochs"
            rows.append((f"{d['recipe']} {d['model']} ({budget})",
                         f"{d['top1_mean']:.2%} +- {d['top1_std']:.2%}",
                         f"train {d['train_seconds_mean']:.1f} +- {d['train_seconds_std']:.1f} s, compile "
                         f"{d['compile_seconds_mean']:.1f} s, {len(d['runs'])} seed(s)", where))
        elif d.get("study") == "degradation":
            err = {n["name"]: f"{n['final_train_error']:.1%}" for n in d["networks"]}
            plan = d.get("plan", {})
            iters = f"{d['recipe']['iterations']:,} of {plan.get('planned_iterations', 0):,} planned iterations"
            warned = f", under {plan['min_iterations']:,}" if plan.get("warning_fired") else ""
            rows.append((f"study degradation ({d['train_images']:,} training images)", iters + warned,
                         "train error " + ", ".join(f"{k} {v}" for k, v in err.items()),
                         f"{d['device']} {d['precision']}"))
    w = [max(len(r[i]) for r in rows) if rows else 5 for i in range(4)]
    print(f"{'measurement':<{w[0]}}  {'result':<{w[1]}}  {'detail':<{w[2]}}  device")
    for r in rows:
        print(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/gpu"))
