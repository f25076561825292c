"""Curves and confusion-matrix figures: real PNG files of the expected size, no pyplot state."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
import torch
from PIL import Image

from resnetkit.plots import plot_confusion, plot_curves


def history(epochs: int = 6, val: bool = True, lr: bool = True) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "train_loss": 2.0 / e, "train_acc": 1 - 0.8 / e}
        if val:
            row |= {"val_loss": 2.2 / e, "val_acc": 1 - 0.9 / e}
        if lr:
            row["lr"] = 0.1 * (1 - e / (epochs + 1))
        rows.append(row)
    return rows


def check_png(path: Path, size: tuple[int, int]) -> Image.Image:
    assert path.is_file() and path.stat().st_size > 10_000
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == size
        im = im.convert("RGB")
        im.load()
    assert len(im.getcolors(maxcolors=1 << 20)) > 50  # drawn, not a blank canvas
    return im


def test_plot_curves(tmp_path: Path) -> None:
    out = plot_curves(history(), tmp_path / "run" / "curves.png")
    assert out == tmp_path / "run" / "curves.png"
    check_png(out, (1100, 420))


def test_plot_curves_with_gaps_and_test_split(tmp_path: Path) -> None:
    rows = history(val=False, lr=False)
    rows[-1] |= {"test_loss": 0.5, "test_acc": 0.9, "val_acc": float("nan")}
    rows[2]["extra"] = "ignored"
    check_png(plot_curves(rows, tmp_path / "c.png"), (1100, 420))


def test_plot_curves_draws_what_it_is_given(tmp_path: Path) -> None:
    a = check_png(plot_curves(history(val=False, lr=False), tmp_path / "a.png"), (1100, 420))
    b = check_png(plot_curves(history(val=True, lr=False), tmp_path / "b.png"), (1100, 420))
    assert a.tobytes() != b.tobytes()


def test_plot_curves_rejects_empty_history(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty history"):
        plot_curves([], tmp_path / "x.png")


def test_plot_confusion(tmp_path: Path) -> None:
    cm = torch.tensor([[5, 1, 0], [2, 7, 1], [0, 0, 9]])
    out = plot_confusion(cm, ["cat", "dog", "frog"], tmp_path / "cm.png")
    # 4 + 0.45 * 3 = 5.35 inches high, 1.5 more for the colour bar, at 100 dpi
    check_png(out, (685, 535))
    raw = plot_confusion(cm.tolist(), ["cat", "dog", "frog"], tmp_path / "raw.png", normalize=False)
    check_png(raw, (685, 535))


def test_plot_confusion_many_classes_and_absent_class(tmp_path: Path) -> None:
    cm = torch.randint(0, 50, (30, 30))
    cm[4] = 0  # a class with no samples must not divide by zero
    check_png(plot_confusion(cm, [f"c{i}" for i in range(30)], tmp_path / "cm30.png"), (1900, 1750))


def test_plot_confusion_checks_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 class names for a 3x3"):
        plot_confusion(torch.eye(3), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="square"):
        plot_confusion(torch.zeros(2, 3), None, tmp_path / "x.png")


def test_no_global_pyplot_state(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    figs = plt.get_fignums()
    plot_curves(history(), tmp_path / "a.png")
    plot_confusion(torch.eye(2), None, tmp_path / "b.png")
    assert plt.get_fignums() == figs
    assert matplotlib.get_backend() == backend


def test_a_run_of_many_short_epochs_draws_curves_at_the_start_and_the_end(tmp_path: Path, monkeypatch) -> None:
    import resnetkit.plots
    from resnetkit.training import rundir
    from resnetkit.training.config import resolve_config
    from resnetkit.training.trainer import fit

    drawn: list[int] = []  # the rows each drawing saw
    monkeypatch.setattr(resnetkit.plots, "plot_curves", lambda rows, path: drawn.append(len(rows)))
    tiny = dict(data="synthetic:64", batch_size=32, precision="fp32", image_size=16, eval_every=0,
                model_kwargs={"stem_width": 8, "widths": (16,), "residual": (False,)})
    monkeypatch.setattr(rundir, "CURVES_EVERY_S", 3600.0)  # however slow the machine, all 6 epochs fit in it
    fit(resolve_config("cpu-fast", epochs=6, out=str(tmp_path / "a"), **tiny))
    assert drawn == [1, 6]  # the first epoch at once, then nothing within the interval until the run ends
    drawn.clear()
    monkeypatch.setattr(rundir, "CURVES_EVERY_S", 0.0)
    fit(resolve_config("cpu-fast", epochs=3, out=str(tmp_path / "b"), **tiny))
    assert drawn == [1, 2, 3]  # an epoch past the interval is drawn at its end, and the end adds nothing


def test_class_names_the_font_lacks_draw_without_a_warning_per_glyph(tmp_path) -> None:
    import warnings

    import numpy as np

    from resnetkit import plots

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warned once per missing glyph, on stderr of every eval
        out = plots.plot_confusion(np.eye(3) * 5, ["猫", "犬", "鳥"], tmp_path / "cm.png")
    assert out.stat().st_size > 1000
