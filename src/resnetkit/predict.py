"""Images in, labels and probabilities out, seeing each image exactly as training did.

Files are decoded by :mod:`resnetkit.data.images`, as the image-folder reader does (same JPEG decoder,
mode conversion and shorter-side resize + centre crop), and normalised with the checkpoint's
mean/std by :func:`resnetkit.data.augment.normalize`, so a prediction here agrees with
``resnetkit.evaluate`` on the same pixels. Logits are fp32; ``tta`` averages the logits of each
image and its mirror, as evaluation does.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from .data.augment import normalize
from .data.images import decode_images, fit_image, image_extensions, pil_to_rgb  # training's own decoding
from .errors import UserError
from .runtime.inference import predict_logits

log = logging.getLogger(__name__)

ImageInput = Image.Image | str | Path | torch.Tensor


@dataclass
class Prediction:
    """One image's result: the top class, its probability and the ``top_k`` (class, prob) pairs."""

    source: str
    label: str
    index: int
    prob: float
    topk: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "label": self.label, "index": self.index, "prob": self.prob,
                "topk": [{"label": c, "prob": p} for c, p in self.topk]}


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """One image file -> uint8 ``(3, size, size)``; an unreadable file is a UserError naming it."""
    result = decode_images([Path(path)], size)[0]
    if isinstance(result, str):
        raise UserError(f"cannot read image {path}: {result}")
    return result


def _model_info(model: nn.Module) -> tuple[list[str], tuple, tuple, int]:
    try:
        return list(model.classes), tuple(model.mean), tuple(model.std), int(model.image_size)
    except AttributeError:
        raise UserError("predict needs a model from resnetkit.load_checkpoint (it carries the classes, mean, "
                        "std and image_size that training used)") from None


def _check_tensor(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[1] != 3:
        raise UserError(f"an image tensor must have shape (N, 3, H, W) or (3, H, W), got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise UserError(f"an image tensor must be uint8 (0-255) or float in [0, 1], got {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise UserError(f"a float image tensor must hold raw pixels in [0, 1] (got values in [{lo:.3g}, {hi:.3g}]); "
                        "do not normalise it, predict applies the checkpoint's mean and std")
    return x


def _item(i: int, item: Any, size: int) -> tuple[str, torch.Tensor]:
    """(source name, ``(3, size, size)`` uint8 or [0, 1] float image) for one list item."""
    if isinstance(item, (str, Path)):
        return str(item), load_image(item, size)
    if isinstance(item, Image.Image):
        return getattr(item, "filename", "") or f"image[{i}]", fit_image(pil_to_rgb(item), size)
    if isinstance(item, torch.Tensor):
        x = _check_tensor(item)
        if len(x) != 1:
            raise UserError(f"item {i} of the image list is a batch of {len(x)}; pass one (3, H, W) image per item")
        return f"tensor[{i}]", fit_image(x[0].cpu(), size)
    raise UserError(f"cannot predict on item {i} of type {type(item).__name__}; "
                    "give PIL images, file paths, or uint8/float image tensors")


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    if all(x.dtype == torch.uint8 for x in images):
        return torch.stack(images)
    return torch.stack([x.float() / 255 if x.dtype == torch.uint8 else x.float() for x in images])


def _batches(images: Any, size: int, batch_size: int) -> Iterator[tuple[list[str], torch.Tensor]]:
    """``(sources, (B, 3, size, size) uint8 or [0, 1] float)``; tensors are sliced, not split up."""
    if isinstance(images, torch.Tensor):
        x = _check_tensor(images)
        for start in range(0, len(x), batch_size):
            chunk = x[start:start + batch_size].cpu()
            if tuple(chunk.shape[-2:]) != (size, size):
                chunk = torch.stack([fit_image(c, size) for c in chunk])
            yield [f"tensor[{i}]" for i in range(start, start + len(chunk))], chunk
        return
    if isinstance(images, (Image.Image, str, Path)):
        images = [images]
    sources: list[str] = []
    batch: list[torch.Tensor] = []
    for i, item in enumerate(images):
        src, x = _item(i, item, size)
        sources.append(src)
        batch.append(x)
        if len(batch) == batch_size:
            yield sources, _stack(batch)
            sources, batch = [], []
    if batch:
        yield sources, _stack(batch)


def _normalise(x: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """``(x/255 - mean)/std`` for uint8 (training's own function), ``(x - mean)/std`` for float."""
    if x.dtype == torch.uint8:
        return normalize(x, mean, std)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x.float().clamp(0, 1) - m) / s


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _classify(model: nn.Module, batch: torch.Tensor, sources: list[str], classes: list[str], k: int,
              tta: bool | str, device: torch.device) -> list[Prediction]:
    logits = predict_logits(model, batch.to(device), device, "fp32", tta)
    probs = torch.softmax(logits.float(), dim=1).cpu()
    top_p, top_i = probs.topk(k, dim=1)
    out = []
    for src, ps, ids in zip(sources, top_p.tolist(), top_i.tolist()):
        pairs = [(classes[i], float(p)) for i, p in zip(ids, ps)]
        out.append(Prediction(src, classes[ids[0]], int(ids[0]), float(ps[0]), pairs))
    return out


def predict(model: nn.Module, images: Any, top_k: int = 5, tta: bool | str = False, batch_size: int = 256,
            device: str | torch.device | None = None) -> list[Prediction]:
    """Classify ``images`` with a model from :func:`resnetkit.load_checkpoint`.

    ``images``: a PIL image, a path, a list of those (or of ``(3, H, W)`` tensors), or a
    uint8 (0-255) / float ([0, 1]) tensor ``(N, 3, H, W)`` or ``(3, H, W)``; any size and
    Pillow mode. Returns one :class:`Prediction` per image, in order; probabilities are fp32
    softmax. The model is put on ``device`` (default: where it is) and is in eval mode for
    the call. An unreadable file raises :class:`UserError`; :func:`predict_paths` goes on instead.
    """
    classes, mean, std, size = _model_info(model)
    if top_k < 1:
        raise UserError(f"top_k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    k = min(top_k, len(classes))
    dev = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    model.to(dev)
    out: list[Prediction] = []
    try:
        for sources, batch in _batches(images, size, batch_size):
            out += _classify(model, _normalise(batch, mean, std), sources, classes, k, tta, dev)
    finally:
        model.train(was_training)
    return out


def predict_paths(model: nn.Module, paths: Sequence[str | Path], top_k: int = 5, tta: bool | str = False,
                  batch_size: int = 256, device: str | torch.device | None = None
                  ) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Like :func:`predict` on files, but an unreadable file is reported, not fatal.

    Returns ``(predictions, failures)``; ``failures`` holds ``(path, reason)`` pairs. Files are
    decoded a batch at a time, so a large folder never sits in memory whole.
    """
    _, _, _, size = _model_info(model)
    preds: list[Prediction] = []
    failures: list[tuple[str, str]] = []
    step = max(1, batch_size)
    for start in range(0, len(paths), step):
        chunk = [Path(p) for p in paths[start:start + step]]
        good: list[tuple[str, torch.Tensor]] = []
        for path, result in zip(chunk, decode_images(chunk, size)):
            if isinstance(result, str):
                log.debug("cannot read image %s: %s", path, result)
                failures.append((str(path), result))
            else:
                good.append((str(path), result))
        if good:
            batch = torch.stack([x for _, x in good])
            for pred, (src, _) in zip(predict(model, batch, top_k, tta, batch_size, device), good):
                pred.source = src
                preds.append(pred)
    return preds, failures


def expand_inputs(args: Sequence[str | Path], missing: list[str] | None = None) -> list[Path]:
    """Files, folders (searched recursively for image files) and glob patterns -> file paths.

    Named files are kept whatever their extension (a bad one is reported when read); order is
    that of ``args``, folders and globs sorted; duplicates are dropped. A path that does not exist
    is an error, unless ``missing`` is given: it is then added there, and it is an error only
    when nothing else was found.
    """
    exts = image_extensions()
    out: dict[Path, None] = {}
    gone: list[str] = []
    for arg in args:
        p = Path(arg)
        if not p.exists() and not glob.has_magic(str(arg)):
            gone.append(str(arg))
            if missing is None or len(gone) == len(args):
                raise UserError(f"{gone[0]} does not exist (expected an image file, a folder or a glob pattern)")
        elif p.is_file():
            out[p] = None
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in exts
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise UserError(f"folder {p} contains no image files ({', '.join(sorted(exts)[:6])}, ...)")
            out.update(dict.fromkeys(found))
        elif glob.has_magic(str(arg)):
            hits = sorted(Path(h) for h in glob.glob(str(arg), recursive=True))
            files = [h for h in hits if h.is_file()]
            for d in (h for h in hits if h.is_dir()):
                files += sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in exts)
            if not files:
                raise UserError(f"the pattern {arg} matches no files")
            out.update(dict.fromkeys(files))
        else:
            raise UserError(f"{arg} does not exist (expected an image file, a folder or a glob pattern)")
    if missing is not None:
        missing += gone
    return list(out)


def _display(img: ImageInput, size: int | None) -> torch.Tensor:
    """uint8 ``(3, H, W)`` on the CPU for showing; at ``size`` (as the model saw it) when given."""
    if isinstance(img, (str, Path)):
        if size:
            return load_image(img, size)
        try:
            with Image.open(img) as im:
                return pil_to_rgb(im)
        except OSError as e:
            raise UserError(f"cannot read image {img}: {e}") from None
    if isinstance(img, Image.Image):
        x = pil_to_rgb(img)
    else:
        x = _check_tensor(img)[0].cpu()
        x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8) if x.is_floating_point() else x
    return fit_image(x, size) if size else x


def draw_grid(predictions: Sequence[Prediction], images: Sequence[ImageInput], out_png: str | Path,
              size: int | None = None, max_images: int = 64) -> Path:
    """Save a PNG grid of images, each titled with its predicted label and probability.

    ``images`` are aligned with ``predictions`` (paths, PIL images or image tensors); they are
    shown as the model saw them when ``size`` is given (the checkpoint's image size).
    """
    from matplotlib.figure import Figure  # deferred: matplotlib costs a second to import

    n = min(len(predictions), len(images), max_images)
    if n == 0:
        raise UserError(f"no predictions to draw in {out_png}")
    cols = min(8, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(1.8 * cols, 2.0 * rows), dpi=100)
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(_display(images[i], size).permute(1, 2, 0).numpy(), interpolation="nearest")
        pred = predictions[i]
        ax.set_title(f"{pred.label} {pred.prob:.0%}\n{Path(pred.source).name[:22]}", fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out_png, format="png")
    except OSError as e:
        raise UserError(f"could not write the grid image {out_png}: {e.strerror or e}") from None
    return out_png
