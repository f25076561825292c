"""Grad-CAM: where in an image a trained network looked when it chose a class.

Grad-CAM (Selvaraju et al. 2017) weights each channel of a convolutional layer's output by the
spatial mean of the class score's gradient there, sums the channels and keeps the positive part.
The method itself comes from Captum's ``LayerGradCam`` (the PyTorch project's interpretability
library); this module picks the layer, batches the images, upsamples the maps to the input size
and writes them. Captum is an optional extra, imported only when a map is asked for.

The default layer is the last residual stage, found from the module tree: the last top-level
child that holds a convolution and outputs a spatial ``(N, C, h, w)`` map in a forward pass
(``layer4`` of the ImageNet and CIFAR ResNets, ``layer3`` of the paper's CIFAR nets and of
ResNet-9), so a new family needs no table of names.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data.augment import normalize
from .data.images import decode_images, fit_image
from .errors import UserError
from .plots import plot_cam

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "resnetkit[explain]"'


@dataclass
class Explanation:
    """One image's Grad-CAM: the prediction, the class the map explains, and the map itself.

    ``cam`` is ``(H, W)`` float32 at the model's input size, scaled so its maximum is 1 (all
    zeros when no location raised the class score); ``image`` is the ``(H, W, 3)`` uint8 input.
    """

    source: str
    label: str
    index: int
    prob: float
    target: int
    target_label: str
    target_prob: float
    cam: np.ndarray = field(repr=False)
    image: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "label": self.label, "index": self.index, "prob": self.prob,
                "target": self.target, "target_label": self.target_label, "target_prob": self.target_prob}


def _captum() -> Any:
    try:
        from captum.attr import LayerAttribution, LayerGradCam  # optional extra: deferred import
    except ImportError:
        raise UserError(f"Grad-CAM needs the Captum library, which is not installed; install it with "
                        f"{INSTALL_HINT}") from None
    return LayerGradCam, LayerAttribution


def default_layer(model: nn.Module, size: int | None = None) -> str:
    """Name of the last top-level child that holds a convolution and outputs a spatial map."""
    size = size or int(getattr(model, "image_size", 0) or 32)
    size = min(size, 64)  # enough to keep a spatial map after a 32x stem; cheap for ImageNet nets
    in_ch = int(getattr(model, "in_channels", 3))
    seen: list[tuple[str, torch.Tensor]] = []
    children = dict(model.named_children())
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=name: seen.append((n, out)))
             for name, m in children.items()]
    was_training = model.training
    p = next(model.parameters(), None)
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_ch, size, size, device=p.device if p is not None else "cpu"))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    spatial = [n for n, out in seen if isinstance(out, torch.Tensor) and out.dim() == 4
               and min(out.shape[-2:]) > 1 and any(isinstance(c, nn.Conv2d) for c in children[n].modules())]
    if not spatial:
        raise UserError(f"found no convolutional stage with a spatial output in {type(model).__name__}; "
                        f"name one with --layer")
    return spatial[-1]


def _layer(model: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    name = name or default_layer(model)
    try:
        return name, model.get_submodule(name)
    except AttributeError:
        top = ", ".join(n for n, _ in model.named_children())
        raise UserError(f"the model has no layer {name!r}; top-level layers are: {top}") from None


def _target_index(target: int | str | None, classes: Sequence[str]) -> int | None:
    if target is None:
        return None
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        if target not in classes:
            raise UserError(f"unknown target class {target!r}; the model's classes are: {', '.join(classes)}")
        return list(classes).index(target)
    i = int(target)
    if not 0 <= i < len(classes):
        raise UserError(f"target class {i} is out of range; the model has {len(classes)} classes (0-{len(classes) - 1})")
    return i


def load_images(images: Any, size: int, failures: list[tuple[str, str]] | None = None
                ) -> tuple[list[str], torch.Tensor]:
    """Paths or uint8 ``(3, H, W)`` / ``(N, 3, H, W)`` tensors -> (sources, uint8 ``(N, 3, size, size)``).

    Files are decoded by the image-folder reader training uses (same decoder, resize and crop). An
    unreadable file is an error, unless ``failures`` is given: it is then skipped and added there as
    ``(path, reason)``, and it is an error only when no image is left.
    """
    if isinstance(images, torch.Tensor):
        images = list(images) if images.dim() == 4 else [images]
    if isinstance(images, (str, Path)):
        images = [images]
    sources: list[str] = []
    out: list[torch.Tensor] = []
    paths = [Path(i) for i in images if isinstance(i, (str, Path))]
    decoded = iter(decode_images(paths, size)) if paths else iter(())
    for i, item in enumerate(images):
        if isinstance(item, (str, Path)):
            x = next(decoded)
            if isinstance(x, str):
                if failures is None:
                    raise UserError(f"cannot read image {item}: {x}")
                failures.append((str(item), x))
                continue
            sources.append(str(item))
        elif isinstance(item, torch.Tensor) and item.dtype == torch.uint8 and item.dim() == 3 and item.shape[0] == 3:
            x = fit_image(item.cpu(), size)
            sources.append(f"tensor[{i}]")
        else:
            raise UserError(f"item {i} is not an image path or a uint8 (3, H, W) tensor")
        out.append(x)
    if not out and failures:
        raise UserError(f"none of the {len(failures)} image file(s) can be read (first: {failures[0][0]}: "
                        f"{failures[0][1]})")
    if not out:
        raise UserError("no images to explain")
    return sources, torch.stack(out)


def grad_cam(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Grad-CAM maps ``(N, H, W)`` of normalised inputs ``x`` for class indices ``targets``.

    Captum's ``LayerGradCam`` with ``relu_attributions=True`` (the paper's ReLU), upsampled
    bilinearly to the input size and divided by each map's maximum.
    """
    layer_grad_cam, layer_attribution = _captum()
    with torch.enable_grad():
        attr = layer_grad_cam(model, layer).attribute(x, target=targets, relu_attributions=True)
    attr = layer_attribution.interpolate(attr.detach().float(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
    cam = attr[:, 0].clamp(min=0)
    peak = cam.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    return cam / peak


def explain_images(model: nn.Module, images: Any, *, target_class: int | str | None = None,
                   layer: str | None = None, batch_size: int = 32,
                   failures: list[tuple[str, str]] | None = None) -> list[Explanation]:
    """Grad-CAM of each image for ``target_class`` (default: the predicted class), in batches.

    ``model`` comes from :func:`resnetkit.load_checkpoint` (it carries classes, mean, std and
    image size). Runs wherever the model's parameters are; fp32. ``failures``: see :func:`load_images`.
    """
    try:
        classes, mean, std, size = list(model.classes), model.mean, model.std, int(model.image_size)
    except AttributeError:
        raise UserError("explain needs a model from resnetkit.load_checkpoint (classes, mean, std, image size)") from None
    target = _target_index(target_class, classes)
    layer_name, module = _layer(model, layer)
    sources, pixels = load_images(images, size, failures)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[Explanation] = []
    try:
        for start in range(0, len(pixels), max(1, batch_size)):
            raw = pixels[start:start + batch_size]
            x = normalize(raw.to(device), mean, std)
            shapes: list[tuple[int, ...]] = []
            hook = module.register_forward_hook(lambda _m, _i, o, seen=shapes: seen.append(tuple(getattr(o, "shape", ()))))
            try:
                with torch.no_grad():
                    probs = torch.softmax(model(x).float(), dim=1)
            finally:
                hook.remove()
            if not shapes or len(shapes[0]) != 4 or max(shapes[0][-2:]) < 2:
                got = f"shape {shapes[0]}" if shapes else "nothing"
                raise UserError(f"layer {layer_name!r} outputs {got}, not a spatial map larger than 1x1; Grad-CAM "
                                f"needs a convolutional layer, such as {default_layer(model)!r} (the default)")
            pred = probs.argmax(1)
            tgt = pred if target is None else torch.full_like(pred, target)
            cams = grad_cam(model, x, tgt, module).cpu().numpy().astype(np.float32)
            probs, pred, tgt = probs.cpu(), pred.cpu().tolist(), tgt.cpu().tolist()
            for j in range(len(raw)):
                out.append(Explanation(sources[start + j], classes[pred[j]], pred[j], float(probs[j, pred[j]]),
                                       tgt[j], classes[tgt[j]], float(probs[j, tgt[j]]), cams[j],
                                       raw[j].permute(1, 2, 0).numpy()))
    finally:
        model.train(was_training)
    log.debug("Grad-CAM of %d image(s) at layer %s", len(out), layer_name)
    return out


def write_explanations(explanations: Sequence[Explanation], out: str | Path) -> list[Path]:
    """Per image: ``NNN-NAME.png`` (image, heat map over it, prediction) and ``NNN-NAME.npy`` (the map)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output folder {out}: {e.strerror or e}") from None
    written = []
    for i, e in enumerate(explanations):
        name = re.sub(r"[^\w.-]+", "_", Path(e.source).stem).strip("_.")  # tensor[3] -> tensor_3
        stem = f"{i:03d}-{name[:40] or 'image'}"
        title = f"pred {e.label} {e.prob:.0%}"
        if e.target != e.index:
            title += f"\nmap for {e.target_label} ({e.target_prob:.0%})"
        written.append(plot_cam(e.image, e.cam, title, out / f"{stem}.png"))
        np.save(out / f"{stem}.npy", e.cam)
    return written
