"""Batched augmentation: exact against per-image references, torchvision, and known numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import transforms

from resnetkit.data.augment import (
    AugmentConfig,
    alternating_flip_mask,
    apply_cutout,
    apply_jitter,
    batch_crop,
    batch_cutout,
    batch_flip,
    cutout_params,
    jitter_params,
    normalize,
    random_crop_params,
    random_flip_mask,
)
from resnetkit.errors import UserError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int = 16, c: int = 3, h: int = 8, w: int = 10, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    x = torch.randint(0, 256, (n, c, h, w), generator=_gen(1), dtype=torch.uint8)
    return x if dtype == torch.uint8 else x.to(dtype) / 7.0


def _reference_crop(images: torch.Tensor, dy, dx, pad: int, fill: str, flip=None) -> torch.Tensor:
    """Explicit per-image pad (numpy) + slice (+ flip), the obvious slow way."""
    h, w = images.shape[-2:]
    mode = "constant" if fill == "zero" else "reflect"
    out = []
    for i, img in enumerate(images.numpy()):
        padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode=mode)
        crop = padded[:, int(dy[i]) : int(dy[i]) + h, int(dx[i]) : int(dx[i]) + w]
        if flip is not None and bool(flip[i]):
            crop = crop[:, :, ::-1]
        out.append(torch.from_numpy(crop.copy()))
    return torch.stack(out)


def test_crop_params_reach_every_offset() -> None:
    pad = 4
    dy, dx = random_crop_params(20_000, pad, _gen())
    assert dy.dtype == torch.int64 and dy.shape == (20_000,)
    assert int(dy.min()) == 0 and int(dy.max()) == 2 * pad and int(dx.min()) == 0 and int(dx.max()) == 2 * pad
    pairs = set((dy * (2 * pad + 1) + dx).tolist())
    assert len(pairs) == (2 * pad + 1) ** 2


@pytest.mark.parametrize("fill", ["zero", "reflect"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_crop_equals_per_image_reference(fill: str, channels_last: bool, dtype: torch.dtype) -> None:
    x = _images(dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    pad = 3
    dy, dx = random_crop_params(len(x), pad, _gen(2))
    flip = random_flip_mask(len(x), _gen(3))
    out = batch_crop(x, dy, dx, pad, fill)
    assert out.shape == x.shape and out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(out, _reference_crop(x, dy, dx, pad, fill))
    fused = batch_crop(x, dy, dx, pad, fill, flip=flip)
    assert 0 < int(flip.sum()) < len(x)
    assert torch.equal(fused, _reference_crop(x, dy, dx, pad, fill, flip))


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_crop_equals_torchvision_random_crop(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    x = _images(n=6, h=12, w=12)
    pad = 4
    dy, dx = random_crop_params(len(x), pad, _gen(4))
    ours = batch_crop(x, dy, dx, pad, "zero" if mode == "constant" else "reflect")
    for i in range(len(x)):
        # torchvision draws (top, left, h, w) in the padded image; pin them to our offsets.
        params = (int(dy[i]), int(dx[i]), 12, 12)
        monkeypatch.setattr(transforms.RandomCrop, "get_params", staticmethod(lambda *a, p=params: p))
        theirs = transforms.RandomCrop(12, padding=pad, padding_mode=mode)(x[i])
        assert torch.equal(ours[i], theirs), f"image {i} at offset {params[:2]}"


def test_crop_at_centre_is_identity_and_corner_shifts() -> None:
    x = _images(n=4, h=6, w=6)
    pad = 2
    centre = torch.full((4,), pad)
    assert torch.equal(batch_crop(x, centre, centre, pad), x)
    zero = torch.zeros(4, dtype=torch.int64)
    out = batch_crop(x, zero, zero, pad)  # shifted down-right by pad: top rows/left cols are fill
    assert int(out[:, :, :pad].abs().sum()) == 0 and int(out[:, :, :, :pad].abs().sum()) == 0
    assert torch.equal(out[:, :, pad:, pad:], x[:, :, :-pad, :-pad])


def test_crop_rejects_bad_arguments() -> None:
    x = _images(n=2, h=4, w=4)
    z = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(UserError, match="reflect padding"):
        batch_crop(x, z, z, 4, "reflect")
    with pytest.raises(UserError, match="one entry per image"):
        batch_crop(x, z[:1], z, 1)
    with pytest.raises(UserError, match="fill"):
        batch_crop(x, z, z, 1, "edge")


def test_flip_is_exact_and_respects_mask() -> None:
    x = _images()
    mask = random_flip_mask(len(x), _gen(5))
    assert mask.dtype == torch.bool and 0 < int(mask.sum()) < len(x)
    out = batch_flip(x, mask)
    assert torch.equal(out[mask], x[mask].flip(-1))
    assert torch.equal(out[~mask], x[~mask])
    assert torch.equal(batch_flip(out, mask), x)
    big = random_flip_mask(20_000, _gen(6)).float().mean().item()
    assert 0.48 < big < 0.52


def test_alternating_flip_flips_each_image_once_per_two_epochs() -> None:
    n = 1000
    base = random_flip_mask(n, _gen(7))
    masks = [alternating_flip_mask(n, e, base) for e in range(6)]
    assert torch.equal(masks[0], base) and torch.equal(masks[2], base) and torch.equal(masks[1], ~base)
    for a, b in zip(masks, masks[1:]):
        assert torch.equal(a.int() + b.int(), torch.ones(n, dtype=torch.int32))
    with pytest.raises(UserError):
        alternating_flip_mask(n + 1, 0, base)


def test_cutout_zeroes_exactly_the_clipped_square() -> None:
    h, w, size = 7, 9, 4
    x = torch.full((5, 2, h, w), 3.0)
    cy = torch.tensor([3, 0, 6, 1, 5])
    cx = torch.tensor([4, 0, 8, 7, 2])
    out = apply_cutout(x, cy, cx, size)
    for i in range(5):
        want = torch.full((h, w), 3.0)
        top, left = int(cy[i]) - size // 2, int(cx[i]) - size // 2
        want[max(top, 0) : max(top + size, 0), max(left, 0) : max(left + size, 0)] = 0
        assert torch.equal(out[i, 0], want) and torch.equal(out[i, 1], want)
    zeros = (out[:, 0] == 0).sum(dim=(1, 2)).tolist()
    assert zeros == [16, 4, 9, 12, 16]  # inside, top-left corner 2x2, bottom-right 3x3, top 3x4, inside
    assert torch.equal(x, torch.full((5, 2, h, w), 3.0))  # input untouched
    cl = apply_cutout(x.contiguous(memory_format=torch.channels_last), cy, cx, size)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, out)


def test_batch_cutout_is_seeded_and_in_range() -> None:
    x = torch.ones(64, 3, 8, 8)
    a = batch_cutout(x, 4, _gen(8))
    assert torch.equal(a, batch_cutout(x, 4, _gen(8)))
    assert not torch.equal(a, batch_cutout(x, 4, _gen(9)))
    zeros = (a[:, 0] == 0).sum(dim=(1, 2))
    assert int(zeros.min()) >= 4 and int(zeros.max()) == 16
    cy, cx = cutout_params(10_000, 8, 6, _gen(10))
    assert (int(cy.min()), int(cy.max()), int(cx.min()), int(cx.max())) == (0, 7, 0, 5)


def test_normalize_math_dtype_and_layout() -> None:
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    x = torch.randint(0, 256, (8, 3, 5, 5), generator=_gen(11), dtype=torch.uint8)
    x[0, :, 0, 0] = 0
    x[0, :, 0, 1] = 255
    want = (x.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        std, dtype=torch.float64
    ).view(1, 3, 1, 1)
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out.double(), want, rtol=0, atol=1e-6)
    assert abs(float(out[0, 0, 0, 0]) - (-0.4914 / 0.2470)) < 1e-6
    assert abs(float(out[0, 2, 0, 1]) - (1 - 0.4465) / 0.2616) < 1e-6
    cl = normalize(x, mean, std, torch.float32, channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    assert torch.equal(cl, out)
    bf = normalize(x, mean, std, torch.bfloat16, channels_last=True)
    assert bf.dtype == torch.bfloat16 and bf.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(bf, out.to(torch.bfloat16))  # one rounding, from the float32 result


def test_normalize_rejects_bad_statistics() -> None:
    x = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    with pytest.raises(UserError, match="one per channel"):
        normalize(x, (0.5, 0.5), (0.5, 0.5))
    with pytest.raises(UserError, match="positive"):
        normalize(x, (0.5,) * 3, (0.5, 0.0, 0.5))
    with pytest.raises(UserError, match="floating-point"):
        normalize(x, (0.5,) * 3, (0.5,) * 3, torch.int32)


def test_augment_config_validates() -> None:
    assert AugmentConfig() == AugmentConfig(crop_pad=4, crop_fill="zero", flip="random", cutout=0)
    for bad in (dict(crop_pad=-1), dict(crop_fill="edge"), dict(flip="sometimes"), dict(cutout=-2),
                dict(brightness=-0.1), dict(contrast=1.0), dict(contrast=float("nan"))):
        with pytest.raises(UserError):
            AugmentConfig(**bad)


def test_jitter_params_are_seeded_and_fill_their_ranges() -> None:
    shift, scale = jitter_params(20_000, 0.14, 0.13, _gen(3))
    again = jitter_params(20_000, 0.14, 0.13, _gen(3))
    assert torch.equal(shift, again[0]) and torch.equal(scale, again[1])
    assert shift.abs().max() <= 0.14 and (scale - 1).abs().max() <= 0.13
    # uniform: both ends reached, mean in the middle, the two draws independent
    assert shift.min() < -0.139 and shift.max() > 0.139 and scale.min() < 0.871 and scale.max() > 1.129
    assert abs(shift.mean()) < 0.003 and abs(scale.mean() - 1) < 0.003
    assert abs(torch.corrcoef(torch.stack([shift, scale]))[0, 1]) < 0.03
    off = jitter_params(5, 0.0, 0.0, _gen(3))
    assert torch.equal(off[0], torch.zeros(5)) and torch.equal(off[1], torch.ones(5))


@pytest.mark.parametrize("channels_last", [False, True])
def test_apply_jitter_is_shift_then_scale_per_image(channels_last: bool) -> None:
    x = _images(4, dtype=torch.float32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    shift, scale = torch.tensor([0.5, -1.0, 0.0, 2.0]), torch.tensor([1.0, 0.5, 1.25, 0.9])
    out = apply_jitter(x.clone(memory_format=torch.preserve_format), shift, scale)
    for i in range(4):
        assert torch.allclose(out[i], (x[i] + shift[i]) * scale[i])
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    with pytest.raises(UserError, match="one value per image"):
        apply_jitter(x, shift[:3], scale)
