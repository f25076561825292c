"""The degradation study's figure (He et al. 2015, Figure 6): error curves of plain nets and ResNets."""

from __future__ import annotations

from pathlib import Path

from .verdict import network_label


def figure_title(report: dict) -> str:
    """The figure's three-line title: data and recipe; iterations, precision and CPU; line styles."""
    rec, plan = report["recipe"], report.get("plan", {})
    px = f" at {report['image_size']} px" if report.get("image_size") else ""
    zero = ", ResNet branches zero-initialised" if rec.get("zero_init_residual") else ""
    iters = f"{rec['iterations']:,} of {plan.get('planned_iterations', rec['iterations']):,} planned iterations"
    short = (f" (under the {plan['min_iterations']:,} the paper's initialisation needs)"
             if plan.get("warning_fired") else "")
    where = report["device"] if report["device"] != "cpu" else report.get("cpu", {}).get("model", "unknown")
    return (f"{report['data_name']}, {report['train_images']} training / {report['test_images']} test images{px}, "
            f"batch {rec['batch_size']}{zero}\n{iters}{short}, {report['precision']} on {where}\n"
            "dashed = training error, dotted = running training error, solid = test error")


def plot_degradation(report: dict, path: str | Path) -> None:
    """Figure 6 of the paper: plain nets left, ResNets right; dashed training error, solid test error."""
    from matplotlib.figure import Figure  # deferred: matplotlib costs a second to import

    fig = Figure(figsize=(11, 4.2), dpi=100)
    axes = fig.subplots(1, 2, sharey=True)
    depths = sorted({n["depth"] for n in report["networks"]})
    colours = {d: f"C{i % 10}" for i, d in enumerate(depths)}
    for ax, plain in zip(axes, (True, False)):
        for n in sorted((n for n in report["networks"] if n["plain"] == plain), key=lambda n: n["depth"]):
            c = n["curves"]
            label = network_label(n["depth"], plain)
            ax.plot(c["iteration"], [100 * e for e in c["train_error"]], "--", color=colours[n["depth"]],
                    lw=1.2, label=f"{label} train")
            if c.get("running_train_error") is not None and c["running_train_error"] != c["train_error"]:
                ax.plot(c["iteration"], [100 * e for e in c["running_train_error"]], ":", color=colours[n["depth"]],
                        lw=0.8, alpha=0.7, label=f"{label} train (running, augmented)")
            pts = [(i, 100 * e) for i, e in zip(c["iteration"], c["test_error"]) if e is not None]
            if pts:
                ax.plot(*zip(*pts), "-", color=colours[n["depth"]], lw=2.2, label=f"{label} test")
        ax.set_title("plain networks" if plain else "ResNets")
        ax.set_xlabel("iterations")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("error (%)")
    fig.suptitle(figure_title(report), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
