"""One self-contained HTML page about one run, or comparing several, from their run directories.

Everything shown is read from files a run directory already holds (``config.json``,
``metrics.jsonl``, ``result.json``, ``curves.png``, ``eval/``, ``explain/``), so a report can be
rebuilt without the data. Images are embedded as ``data:`` URIs and the page has no scripts,
fonts or styles from elsewhere: it opens from disk with no network. The page is a Jinja2
template (``templates/report.html.j2``), autoescaped.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import write_text
from ..plots import plot_curves_compare

log = logging.getLogger(__name__)

TEMPLATE = "report.html.j2"
INSTALL_HINT = 'pip install "resnetkit[explain]"'


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def _read_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run
    return rows


def data_uri(path: Path) -> str | None:
    """``data:image/png;base64,...`` of a PNG file, or None when it does not exist."""
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _best(history: list[dict], key: str) -> dict | None:
    rows = [r for r in history if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if not rows:
        return None
    top = max(rows, key=lambda r: r[key])
    return {"value": top[key], "epoch": top.get("epoch")}


def load_run(run_dir: str | Path) -> dict:
    """Everything the report shows about the run in ``run_dir`` (images as data URIs)."""
    run = Path(run_dir)
    cfg = _read_json(run / "config.json")
    if not run.is_dir() or cfg is None:
        raise UserError(f"{run} is not a run directory (it has no config.json); give the --out of a training run")
    history = _read_lines(run / "metrics.jsonl")
    ev = _read_json(run / "eval" / "metrics.json") or {}
    command = (run / "command.txt").read_text().strip() if (run / "command.txt").is_file() else None
    ckpt = run / "last.pt"
    classes = ev.get("classes") or cfg.get("classes", [])
    table = ev.get("per_class_metrics")
    rows = []
    if table:
        for i, c in enumerate(classes):
            rows.append({"name": c, "accuracy": ev["per_class"][i] if table["support"][i] else None,
                         **{k: table[k][i] for k in ("precision", "recall", "f1", "support")}})
    cams = [{"uri": data_uri(p), "name": p.stem} for p in sorted((run / "explain").glob("*.png"))]
    return {
        "name": run.name, "path": str(run.resolve()), "config": cfg.get("config", {}), "meta": cfg,
        "command": command, "history": history, "result": _read_json(run / "result.json") or {},
        "eval": ev, "class_rows": rows, "worst": ev.get("worst_errors", []),
        "best_test": _best(history, "test_acc"), "best_val": _best(history, "val_acc"),
        "curves": data_uri(run / "curves.png"), "confusion": data_uri(run / "eval" / "confusion.png"),
        "gallery": data_uri(run / "eval" / "worst_errors.png"), "cams": cams,
        "checkpoint_bytes": ckpt.stat().st_size if ckpt.is_file() else None,
        "parameters": ev.get("parameters"), "hardware": ev.get("hardware", {}),
    }


def config_differences(runs: Sequence[dict]) -> list[str]:
    """Config keys whose values differ between runs (``out`` and ``overwrite`` left aside)."""
    keys = sorted({k for r in runs for k in r["config"]} - {"out", "overwrite"})
    return [k for k in keys if len({json.dumps(r["config"].get(k), sort_keys=True) for r in runs}) > 1]


def _pct(v: Any) -> str:
    return "-" if not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)) else f"{v:.2%}"


def _num(v: Any, digits: int = 4) -> str:
    return "-" if not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _size(n: Any) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def render_report(runs: Sequence[dict], out: str | Path) -> Path:
    """Write the HTML page for ``runs`` (from :func:`load_run`) to ``out``; returns its path."""
    try:
        import jinja2  # optional extra: deferred import
    except ImportError:
        raise UserError(f"the HTML report needs Jinja2, which is not installed; install it with {INSTALL_HINT}") from None
    if not runs:
        raise UserError("no runs to report on")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=_pct, num=_num, size=_size, tojson_compact=lambda v: json.dumps(v))
    compare = None
    if len(runs) > 1:
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_curves_compare({r["name"]: r["history"] for r in runs}, Path(tmp) / "compare.png")
            settings = sorted({k for r in runs for k in r["config"]})
            compare = {"curves": data_uri(png), "diff": config_differences(runs), "settings": settings}
    html = env.get_template(TEMPLATE).render(runs=runs, compare=compare,
                                             created=time.strftime("%Y-%m-%d %H:%M:%S"))
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text(out, html)
    except OSError as e:
        raise UserError(f"could not write the report {out}: {e.strerror or e}") from None
    log.info("wrote %s (%d run(s), %.0f kB)", out, len(runs), out.stat().st_size / 1e3)
    return out
