"""Model summaries: output shape, parameters and FLOPs of each stage, and a table of all models.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` (not by hand) for one
image (batch 1), in eval mode under ``torch.no_grad()``. FlopCounterMode counts a multiply-add
as **2 FLOPs** and counts only convolutions and matrix products (BatchNorm, ReLU, pooling and
the residual additions count 0), so ResNet-50 at 224x224 is 8.2 GFLOPs, i.e. the 4.1 "GFLOPs"
(really GMACs) of He et al. 2015 and torchvision's weight metadata.

Per-stage FLOPs come from FlopCounterMode's own module attribution; output shapes from forward
hooks. Counting works on the ``meta`` device (no memory, no compute), which is how
:func:`model_table` builds every registered model quickly; its rows are also cached on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from . import models
from .data.cache import cache_root
from .io import atomic_write
from .models import create_model, list_models, model_info
from .version import __version__

logger = logging.getLogger(__name__)

#: Bump when the meaning of a cached model-table row changes.
_TABLE_FORMAT = 1
_TABLE_FILE = "model_table.json"


@dataclass(frozen=True)
class StageSummary:
    """One row of a summary: a stage's output shape (without batch), parameters and FLOPs."""

    name: str
    output_shape: tuple[int, ...]
    params: int
    flops: int


@dataclass(frozen=True)
class ModelSummary:
    """Per-stage rows (stem, layer1..N, head) and totals; FLOPs as counted by FlopCounterMode."""

    name: str
    input_size: tuple[int, ...]
    stages: tuple[StageSummary, ...]
    total_params: int
    trainable_params: int
    total_flops: int

    @property
    def gflops(self) -> float:
        """Total FLOPs / 1e9 (a multiply-add counts 2)."""
        return self.total_flops / 1e9

    @property
    def gmacs(self) -> float:
        """Total multiply-adds / 1e9, the unit of the ResNet papers' "FLOPs"."""
        return self.total_flops / 2e9

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return asdict(self)


def _stage_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Row name -> top-level children it covers: stem / each stage / head for a ResNet.

    Children registered before the first stage form the stem and all other non-stage children
    the head; an empty stem or head has no row. A model without ``stage_names`` gets one row
    per top-level child.
    """
    children = [name for name, _ in model.named_children()]
    stages = [s for s in getattr(model, "stage_names", []) if s in children]
    if not stages:
        return [(name, [name]) for name in children]
    first = children.index(stages[0])
    stem = [c for c in children[:first] if c not in stages]
    head = [c for c in children[first:] if c not in stages]
    groups = [("stem", stem)] + [(s, [s]) for s in stages] + [("head", head)]
    return [(row, members) for row, members in groups if members]  # ResNet-9 has no stem


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def summarize(
    model: nn.Module, input_size: tuple[int, ...] | None = None, name: str | None = None
) -> ModelSummary:
    """Shape, parameters and FLOPs of each stage of ``model`` for one ``input_size`` image.

    ``input_size`` is ``(C, H, W)`` and defaults to ``model.default_input_size``. The model
    runs once on its own device (``meta`` works) in eval mode; its training mode is restored.
    The stage rows add up to the totals: FLOPs of operations outside any child module (such
    as the flatten before the classifier) are part of the head.
    """
    if input_size is None:
        input_size = getattr(model, "default_input_size", None)
        if input_size is None:
            raise ValueError("input_size is required for a model without default_input_size")
    input_size = tuple(int(s) for s in input_size)
    if name is None:
        name = getattr(model, "spec", {}).get("name", type(model).__name__)
    groups = _stage_groups(model)
    children = dict(model.named_children())

    shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] = []

    def hook(child_name: str):
        def fn(_mod: nn.Module, _inp: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                shapes[child_name] = tuple(out.shape[1:])
                order.append(child_name)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in children.items()]
    device, dtype = _model_device_dtype(model)
    was_training = model.training
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        x = torch.zeros((1, *input_size), device=device, dtype=dtype)
        with torch.no_grad(), counter:
            out = model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    root = type(model).__name__
    counts = counter.get_flop_counts()
    total_flops = counter.get_total_flops()

    def flops_of(child: str) -> int:
        return int(sum(counts.get(f"{root}.{child}", {}).values()))

    seen: set[int] = set()

    def params_of(mods: list[nn.Module]) -> int:
        n = 0
        for m in mods:
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    n += p.numel()
        return n

    rows: list[StageSummary] = []
    for row, members in groups:
        ran = [c for c in order if c in members]
        shape = shapes[ran[-1]] if ran else ()
        if row == "head" and isinstance(out, torch.Tensor):
            shape = tuple(out.shape[1:])
        rows.append(StageSummary(row, shape, params_of([children[c] for c in members]),
                                 sum(flops_of(c) for c in members)))
    # parameters held by the model itself, and FLOPs outside every child, belong to the last row
    rest_params = params_of([model])
    rest_flops = total_flops - sum(r.flops for r in rows)
    if rows and (rest_params or rest_flops):
        last = rows[-1]
        rows[-1] = StageSummary(last.name, last.output_shape, last.params + rest_params,
                                last.flops + rest_flops)

    params = list(model.parameters())
    return ModelSummary(
        name=name,
        input_size=input_size,
        stages=tuple(rows),
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        total_flops=int(total_flops),
    )


# -- the table of registered models ---------------------------------------------------------

def _source_fingerprint() -> str:
    """Hash of the model sources and of this file, so editing either invalidates cached rows."""
    h = hashlib.sha256()
    files = sorted(Path(models.__file__).parent.glob("*.py")) + [Path(__file__)]
    for f in files:
        h.update(f.name.encode() + b"\0")
        try:
            h.update(f.read_bytes())
        except OSError:
            h.update(b"?")
    return h.hexdigest()


def _row_key(info: Any, source: str) -> str:
    """What a cached row depends on: the registry entry, the sources and the library versions."""
    builder = getattr(info, "builder", None)
    blob = json.dumps(
        [_TABLE_FORMAT, __version__, torch.__version__, source, info.name, info.family,
         list(info.input_size), repr(sorted(info.defaults.items())),
         f"{getattr(builder, '__module__', '')}.{getattr(builder, '__qualname__', '')}"]
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _table_cache_path() -> Path:
    return cache_root() / _TABLE_FILE


def _read_table_cache(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # absent or unreadable: recompute, it is only a cache


def _write_table_cache(path: Path, rows: dict[str, dict]) -> None:
    """Atomic best-effort write; a read-only or full disk only costs the next run time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(json.dumps(rows).encode()))
    except OSError as e:
        logger.debug("could not write the model table cache %s: %s", path, e)


class _SkipMetaInit(TorchFunctionMode):
    """Skips in-place initialisers on meta tensors, which have no values to write anyway.

    Weight initialisation is about half the time of building a model on the meta device
    (resnet1202 has 1,800 layers), and is meaningless there. Tensors on real devices are untouched.
    """

    _INIT = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.fill_, torch.Tensor.zero_})

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in self._INIT and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


def meta_model(name: str, **overrides: Any) -> nn.Module:
    """``create_model(name, **overrides)`` on the meta device: shapes only, nothing allocated.

    Enough for parameter counts and FLOPs; quick even for the 127M-parameter models.
    """
    with torch.device("meta"), _SkipMetaInit():
        return create_model(name, **overrides)


def model_row(name: str) -> dict[str, Any]:
    """One :func:`model_table` row, computed now (the model is built on the meta device)."""
    info = model_info(name)
    model = meta_model(name)
    s = summarize(model, info.input_size, name=name)
    return {"name": name, "family": info.family, "params": s.total_params,
            "gflops": s.gflops, "input_size": tuple(info.input_size)}


def model_table(pattern: str | None = None, cache: bool = True) -> list[dict[str, Any]]:
    """Name, family, parameters, GFLOPs at the default input size, and that size, per model.

    ``pattern`` filters as :func:`resnetkit.models.list_models`. GFLOPs count a multiply-add as
    2 (FlopCounterMode). Rows are cached in ``model_table.json`` under the resnetkit cache
    directory, keyed by the registry entry, the torch and resnetkit versions and the contents
    of ``resnetkit/models/*.py`` and this file (a builder defined elsewhere is keyed by name).
    """
    names = list_models(pattern)
    source = _source_fingerprint()
    keys = {name: _row_key(model_info(name), source) for name in list_models()}
    path = _table_cache_path() if cache else None
    cached = _read_table_cache(path) if path else {}
    missing = [n for n in names if not isinstance(cached.get(keys[n]), dict)
               or cached[keys[n]].get("name") != n]
    if missing:
        logger.info("counting FLOPs of %d model(s) on the meta device%s", len(missing),
                    " (cached for next time)" if path else "")
        for name in missing:
            row = model_row(name)
            cached[keys[name]] = {**row, "input_size": list(row["input_size"])}
        if path:
            current = set(keys.values())  # drop rows of older versions or registry entries
            _write_table_cache(path, {k: v for k, v in cached.items() if k in current})
    return [{**cached[keys[n]], "input_size": tuple(cached[keys[n]]["input_size"])} for n in names]
