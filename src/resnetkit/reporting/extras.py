"""What ``eval`` adds to the headline numbers: a per-class precision/recall/F1/support table and
a gallery of the test images the model got most confidently wrong."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..metrics import most_confident_errors, precision_recall_f1
from ..plots import plot_gallery
from ..runtime.probe import cpu_label

GALLERY = "worst_errors.png"


def _or_none(values: Sequence[float]) -> list[float | None]:
    """NaN (undefined) -> None, so JSON holds ``null`` rather than the non-standard ``NaN``."""
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]


def evaluation_extras(confusion: Any, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor,
                      classes: Sequence[str], out: str | Path | None = None, worst: int = 24) -> dict:
    """``per_class_metrics`` and ``worst_errors`` for a metrics dict; with ``out``, the gallery PNG.

    ``logits`` ``(N, C)`` and ``labels`` ``(N,)`` are in the order of ``images`` (uint8
    ``(N, 3, H, W)``, the test split). ``per_class_metrics`` holds lists aligned with ``classes``
    (``None`` where undefined); each ``worst_errors`` row names its test-image index.
    """
    cm = torch.as_tensor(confusion)
    table = precision_recall_f1(cm)
    errors = most_confident_errors(logits, labels.to(logits.device), worst)
    for row in errors:
        row["true_label"], row["pred_label"] = classes[row["true"]], classes[row["pred"]]
    extras: dict = {"per_class_metrics": {k: _or_none(v) for k, v in table.items()}, "worst_errors": errors}
    if out is not None and errors:
        pics = [images[r["index"]].permute(1, 2, 0).cpu().numpy() for r in errors]
        titles = [f"true {r['true_label']}\npred {r['pred_label']} {r['prob']:.0%}" for r in errors]
        plot_gallery(pics, titles, Path(out) / GALLERY)
    return extras


def _cell(v: float | None, pct: bool = True) -> str:
    return "-" if v is None else (f"{v:.2%}" if pct else f"{v:.3f}")


def format_class_table(metrics: dict) -> list[str]:
    """Text lines: class, accuracy, precision, recall, F1, support ("-" where undefined)."""
    classes = metrics["classes"]
    t = metrics["per_class_metrics"]
    width = max(4, *(len(c) for c in classes))
    lines = [f"{'class':<{width}}  {'accuracy':>8}  {'precision':>9}  {'recall':>8}  {'F1':>6}  {'support':>7}"]
    for i, c in enumerate(classes):
        acc = metrics["per_class"][i] if t["support"][i] else None
        lines.append(f"{c:<{width}}  {_cell(acc):>8}  {_cell(t['precision'][i]):>9}  {_cell(t['recall'][i]):>8}  "
                     f"{_cell(t['f1'][i], pct=False):>6}  {t['support'][i]:>7}")
    return lines


def hardware(device: Any = None) -> dict:
    """The machine an evaluation ran on: CPU model and its bf16/vector flags, cores, torch threads, the GPU if one was used."""
    info = {"cpu": cpu_label(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "os": platform.platform(terse=True), "device": str(device) if device is not None else "cpu"}
    if device is not None and torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
