"""Decoding images to RGB uint8, the one way every reader in resnetkit does it.

Files and archive members go through :func:`decode_images` (torchvision's JPEG op for plain
JPEGs, Pillow for everything else); PIL images through :func:`pil_to_rgb`. Both apply EXIF
orientation, scale 16-bit grey by 255/65535 (not clipped) and drop alpha (torchvision's loader
convention); :func:`fit_image` resizes the shorter side and centre-crops. Training and prediction
use these, so a prediction sees exactly the pixels training saw.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

Ref = bytes | Path  # an image's bytes (archives) or its file (folders, read by the workers)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_GREY16 = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class BadImage(Exception):
    """One file that cannot become an image; the message says why."""


def image_extensions() -> frozenset[str]:
    """File extensions of every format Pillow can read."""
    Image.init()
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def image_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of an image file's bytes, from its header (JPEG frame header or Pillow)."""
    info = _jpeg_info(data)
    if info is not None:
        return info[0], info[1]
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def pil_to_rgb(img: Image.Image) -> torch.Tensor:
    """A PIL image of any mode -> uint8 ``(3, H, W)`` RGB.

    EXIF orientation is applied; 16-bit grey is scaled by 255/65535 (not clipped); palette, grey,
    CMYK and the rest go through Pillow's RGB conversion, which drops alpha.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in _GREY16:
        grey = np.rint(np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / 257.0).astype(np.uint8)
        arr = np.repeat(grey[..., None], 3, axis=2)
    else:
        arr = np.array(img.convert("RGB"))
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _jpeg_info(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG's frame header, or ``None`` if not a plain JPEG."""
    if not data.startswith(b"\xff\xd8"):
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD7:  # fill byte / markers without length
            i += 1 if marker == 0xFF else 2
            continue
        if marker in _SOF:
            if i + 10 > n:
                return None
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big"), data[i + 9]
        if marker == 0xDA:  # start of scan before any frame header
            return None
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _too_big(width: int, height: int) -> bool:
    limit = Image.MAX_IMAGE_PIXELS
    return limit is not None and width * height > limit


def decode_rgb(data: bytes) -> torch.Tensor:
    """The bytes of any Pillow-readable image file -> uint8 ``(3, H, W)`` RGB (:func:`pil_to_rgb`)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if _too_big(*im.size):
                raise BadImage(f"decompression bomb ({im.size[0]}x{im.size[1]} pixels)")
            return pil_to_rgb(im)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"decompression bomb ({exc})") from None
    except Image.UnidentifiedImageError:
        raise BadImage("empty file" if not data else "not an image Pillow can read") from None
    except Exception as exc:
        raise BadImage(f"{type(exc).__name__}: {exc}") from None


def fit_image(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` (bilinear, antialias: Pillow's BILINEAR), centre-crop."""
    h, w = img.shape[-2:]
    if h == size and w == size:
        return img
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    out = F.interpolate(img[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return out[:, top:top + size, left:left + size]


@functools.lru_cache(maxsize=1)
def _jpeg_op() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torchvision's JPEG decoder op (RGB, EXIF orientation applied), or ``None`` if unavailable.

    The op is called directly because torchvision 0.29's public ``decode_jpeg`` wrapper warns on
    every call that its image codecs are deprecated; if they go away, Pillow decodes everything.
    """
    try:
        # deferred: importing torchvision costs seconds and only JPEG decoding needs it
        import torchvision.io  # noqa: F401  (loads the image extension that registers the op)

        op = torch.ops.image.decode_jpeg
        rgb = torchvision.io.ImageReadMode.RGB.value
        return lambda data: op(data, rgb, True)
    except Exception:  # no torchvision image extension: slower, same pixels
        logger.debug("torchvision's JPEG decoder is unavailable; decoding JPEGs with Pillow")
        return None


def decode_images(refs: list[Ref], size: int) -> list[torch.Tensor | str]:
    """Decode one chunk: each item becomes a (3, size, size) tensor or the reason it is bad."""
    datas: list[bytes | str] = []
    for ref in refs:
        try:
            datas.append(ref.read_bytes() if isinstance(ref, Path) else ref)
        except OSError as exc:
            datas.append(f"unreadable ({exc.strerror or exc})")
    results: list[torch.Tensor | str | None] = [None] * len(refs)
    fast: list[int] = []
    for i, data in enumerate(datas):
        info = _jpeg_info(data) if isinstance(data, bytes) else None
        if info is not None and _too_big(info[0], info[1]):
            results[i] = f"decompression bomb ({info[0]}x{info[1]} pixels)"
        elif info is not None and info[2] in (1, 3):  # grey or YCbCr; CMYK goes to Pillow
            fast.append(i)
    decode = _jpeg_op() if fast else None
    if decode is not None:
        for i in fast:
            try:
                results[i] = decode(torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8))  # type: ignore[arg-type]
            except Exception:  # corrupt or unusual JPEG: Pillow decides below
                pass
    for i, data in enumerate(datas):
        if results[i] is None and isinstance(data, bytes):
            try:
                results[i] = decode_rgb(data)
            except BadImage as exc:
                results[i] = str(exc)
        elif results[i] is None:
            results[i] = data
    return [fit_image(r, size) if isinstance(r, torch.Tensor) else r for r in results]  # type: ignore[misc]
