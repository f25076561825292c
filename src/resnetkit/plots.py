"""Figures for training runs: loss/accuracy curves and the confusion matrix, written as PNG.

Uses :class:`matplotlib.figure.Figure` with an Agg canvas directly, never ``pyplot``: no global
figure registry, no backend switch, nothing left open after a call, safe on headless machines
and in threads. Accuracies are taken as fractions in [0, 1] and drawn as percentages.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DPI = 100
CURVES_SIZE = (11.0, 4.2)  # inches: 1100 x 420 pixels at DPI

# (history key, legend label, colour); the same colour for a split in both panels
_SPLITS = (("train", "train", "C0"), ("val", "val", "C1"), ("test", "test", "C2"))


def _quiet_glyphs(draw: Callable[..., Path]) -> Callable[..., Path]:
    """Drop matplotlib's "Glyph ... missing from font" warnings (class names in scripts the default
    font lacks are drawn as boxes; a warning per glyph on stderr helps no one)."""

    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> Path:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
            return draw(*args, **kwargs)

    return wrapper


def _new_figure(figsize: tuple[float, float]) -> Any:
    """A figure bound to an Agg canvas (the backend chosen here, not globally)."""
    # deferred: matplotlib costs a second to import, and only drawing needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format=path.suffix.lstrip(".").lower() or "png")
    return path


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the rows that have a finite number under ``key``."""
    xs, ys = [], []
    for i, row in enumerate(history):
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(float(row.get("epoch", i + 1)))
            ys.append(float(v))
    return xs, ys


@_quiet_glyphs
def plot_curves(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Two panels, loss and accuracy against epoch, for train and (when present) val/test.

    ``history`` rows carry ``epoch``, ``train_loss``, ``train_acc`` and optionally ``val_*``,
    ``test_*`` and ``lr`` (drawn dotted on a right-hand axis of the loss panel). Rows missing a
    key, or holding NaN there, are skipped for that series only. Returns ``path``.
    """
    if not history:
        raise ValueError("cannot plot curves of an empty history")
    fig = _new_figure(CURVES_SIZE)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for split, label, colour in _SPLITS:
        for ax, metric, scale in ((ax_loss, "loss", 1.0), (ax_acc, "acc", 100.0)):
            xs, ys = _series(history, f"{split}_{metric}")
            if xs:
                ax.plot(xs, [y * scale for y in ys], color=colour, label=label,
                        marker="o" if len(xs) < 30 else None, markersize=3)
    handles, labels = ax_loss.get_legend_handles_labels()
    xs, lrs = _series(history, "lr")
    if xs:
        ax_lr = ax_loss.twinx()
        (line,) = ax_lr.plot(xs, lrs, color="0.5", linestyle=":", label="lr")
        ax_lr.set_ylabel("learning rate")
        handles, labels = handles + [line], labels + ["lr"]
    ax_loss.set(title="loss", xlabel="epoch", ylabel="loss")
    ax_acc.set(title="accuracy", xlabel="epoch", ylabel="accuracy (%)")
    if handles:
        ax_loss.legend(handles, labels, loc="best")
    if ax_acc.get_legend_handles_labels()[0]:
        ax_acc.legend(loc="best")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


@_quiet_glyphs
def plot_confusion(
    cm: Any, classes: Sequence[str] | None, path: str | Path, normalize: bool = True
) -> Path:
    """Heat map of a confusion matrix (rows true, columns predicted) with class names on the axes.

    ``normalize`` divides each row by its total, so cells are per-class recall (a row with no
    samples is undefined: left blank and marked "-"). Cell values are written in the cells when there are at most 20 classes.
    ``cm`` may be a tensor, an array or nested lists. Returns ``path``.
    """
    m = np.asarray(cm.tolist() if hasattr(cm, "tolist") else cm, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"expected a non-empty square confusion matrix, got shape {m.shape}")
    c = m.shape[0]
    names = [str(i) for i in range(c)] if classes is None else [str(x) for x in classes]
    if len(names) != c:
        raise ValueError(f"got {len(names)} class names for a {c}x{c} confusion matrix")
    if normalize:
        totals = m.sum(axis=1, keepdims=True)
        m = np.divide(m, totals, out=np.full_like(m, np.nan), where=totals > 0)  # no samples: undefined

    side = min(4.0 + 0.45 * c, 24.0)
    fig = _new_figure((side + 1.5, side))
    ax = fig.subplots()
    vmax = 1.0 if normalize else max(float(m.max()), 1.0)
    im = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    step = max(1, math.ceil(c / 50))  # at most ~50 labels per axis stay legible
    ticks = list(range(0, c, step))
    fontsize = 9 if c <= 20 else 7
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=fontsize)
    ax.set(xlabel="predicted", ylabel="true",
           title="confusion matrix" + (" (row-normalised)" if normalize else ""))
    if c <= 20:
        for i in range(c):
            for j in range(c):
                v = m[i, j]
                text = "-" if np.isnan(v) else f"{v:.2f}" if normalize else f"{int(round(v))}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if v > 0.6 * vmax else "black")
    fig.tight_layout()
    return _save(fig, path)


@_quiet_glyphs
def plot_cam(image: Any, cam: Any, title: str, path: str | Path, alpha: float = 0.45) -> Path:
    """The image beside itself with a heat map over it (``jet``, ``alpha`` opaque), titled.

    ``image`` is ``(H, W, 3)`` uint8; ``cam`` is an ``(H, W)`` map in [0, 1] (Grad-CAM).
    """
    img = np.asarray(image)
    fig = _new_figure((4.4, 2.5))
    ax_img, ax_cam = fig.subplots(1, 2)
    for ax in (ax_img, ax_cam):
        ax.imshow(img, interpolation="nearest")
        ax.axis("off")
    ax_cam.imshow(np.asarray(cam), cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0, interpolation="bilinear")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


@_quiet_glyphs
def plot_gallery(images: Sequence[Any], titles: Sequence[str], path: str | Path, cols: int = 8) -> Path:
    """A grid of ``(H, W, 3)`` uint8 images, each with its (multi-line) title; returns ``path``."""
    n = len(images)
    if n == 0 or n != len(titles):
        raise ValueError(f"need as many titles as images (and at least one), got {n} and {len(titles)}")
    cols = min(cols, n)
    rows = -(-n // cols)
    fig = _new_figure((1.6 * cols, 1.95 * rows))
    for i, (img, title) in enumerate(zip(images, titles)):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(np.asarray(img), interpolation="nearest")
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


@_quiet_glyphs
def plot_curves_compare(histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path) -> Path:
    """Several runs' curves overlaid: train loss and test (else val) accuracy, one colour per run."""
    if not histories:
        raise ValueError("no runs to compare")
    fig = _new_figure(CURVES_SIZE)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for i, (name, history) in enumerate(histories.items()):
        colour = f"C{i % 10}"
        for ax, key, scale, style in ((ax_loss, "train_loss", 1.0, "-"), (ax_acc, "test_acc", 100.0, "-"),
                                      (ax_acc, "val_acc", 100.0, "--"), (ax_acc, "train_acc", 100.0, ":")):
            xs, ys = _series(history, key)
            if xs:
                ax.plot(xs, [y * scale for y in ys], color=colour, linestyle=style, marker="o", markersize=3,
                        label=f"{name} {key.split('_')[0]}")
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    ax_acc.set(title="accuracy", xlabel="epoch", ylabel="accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
