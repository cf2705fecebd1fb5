"""Batched augmentation: each transform is a function ``(x, config, generator) -> x`` over a whole batch.

``x`` is (N, 1, H, W) float in raw pixel units with a zero background (so padding with zeros is
right). Random numbers come from the CPU ``generator`` so runs repeat exactly; a transform that is
switched off by its config draws none, so adding one leaves every other run's numbers unchanged.
To add a transform: write it here and append it to ``TRANSFORMS`` (order matters: it is the order of
the random draws), with its config fields in ``TrainConfig`` and its check in ``config.validate``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from digitlab import realism
from digitlab.config import TrainConfig

Transform = Callable[[torch.Tensor, TrainConfig, torch.Generator], torch.Tensor]


def _uniform(k: float, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """``n`` numbers uniform in [-k, k], drawn on the CPU from ``gen``."""
    return ((torch.rand((n,), generator=gen) * 2 - 1) * k).to(device)


def geometric(x: torch.Tensor, config: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Random affine map (shift, rotation, scale, shear, optional mirror) and elastic warp, one resampling."""
    n, _, h, w = x.shape
    dev = x.device
    angle = _uniform(math.radians(config.aug_rotate), n, gen, dev)
    scale = 1 + _uniform(config.aug_scale, n, gen, dev)
    shear = _uniform(config.aug_shear, n, gen, dev)
    # affine_grid works in [-1, 1] coordinates: a shift of s pixels is 2 s / size.
    tx, ty = _uniform(2 * config.aug_shift / w, n, gen, dev), _uniform(2 * config.aug_shift / h, n, gen, dev)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin + shear * cos, tx], 1), torch.stack([sin, cos + shear * sin, ty], 1)], 1
    )
    if config.aug_flip > 0:
        # A mirror image is the same garment (Fashion-MNIST), never the same digit: off by default.
        sign = torch.where(torch.rand(n, generator=gen) < config.aug_flip, -1.0, 1.0).to(dev)
        theta = torch.cat([theta[:, :, :1] * sign.view(n, 1, 1), theta[:, :, 1:]], 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if config.aug_elastic > 0:
        coarse = (torch.randn((n, 2, 4, 4), generator=gen) * (2 * config.aug_elastic / w)).to(dev)
        grid = grid + F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def pen_skip(x: torch.Tensor, config: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """A thin straight gap across the digit with probability ``aug_skip``, as ballpoints and scans leave
    them: fields of handwritten digits have broken strokes that the reader must still recognise."""
    if config.aug_skip <= 0:
        return x
    n, _, h, w = x.shape
    dev = x.device
    hit = (torch.rand(n, generator=gen) < config.aug_skip).to(dev).view(n, 1, 1, 1)
    angle = (torch.rand(n, generator=gen) * math.pi).to(dev).view(n, 1, 1)
    offset = _uniform(0.3 * min(h, w), n, gen, dev).view(n, 1, 1)
    ys = torch.arange(h, device=dev, dtype=x.dtype).view(1, h, 1) - (h - 1) / 2
    xs = torch.arange(w, device=dev, dtype=x.dtype).view(1, 1, w) - (w - 1) / 2
    dist = (xs * torch.cos(angle) + ys * torch.sin(angle) - offset).abs()
    keep = (dist / 1.2).clamp(max=1.0).unsqueeze(1)  # ~2.4 px wide, soft edges
    return torch.where(hit, x * keep, x)


def stroke_width(x: torch.Tensor, config: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Thicker or thinner strokes (each with probability ``aug_morph / 2``): people's pens differ from MNIST's."""
    if config.aug_morph <= 0:
        return x
    n = len(x)
    r = torch.rand(n, generator=gen).to(x.device)
    thick = (r < config.aug_morph / 2).view(n, 1, 1, 1)
    thin = ((r >= config.aug_morph / 2) & (r < config.aug_morph)).view(n, 1, 1, 1)
    dil, ero = dilate3(x), erode2(x)
    return torch.where(thick, 0.5 * (x + dil), torch.where(thin, 0.5 * (x + ero), x))


# Grey-level dilation and erosion as maxima of shifted views: the same numbers as
# F.max_pool2d(x, 3, 1, 1) and -F.max_pool2d(-x, 2, 1, 1)[..., :h, :w], ~15x faster on one channel.
def dilate3(x: torch.Tensor) -> torch.Tensor:
    """3x3 grey-level dilation (the border pads with -inf, so it adds nothing)."""
    p = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
    rows = torch.maximum(torch.maximum(p[..., :, :-2], p[..., :, 1:-1]), p[..., :, 2:])
    return torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def erode2(x: torch.Tensor) -> torch.Tensor:
    """2x2 grey-level erosion, anchored so the image does not shift."""
    p = F.pad(x, (1, 0, 1, 0), value=float("inf"))
    rows = torch.minimum(p[..., :, :-1], p[..., :, 1:])
    return torch.minimum(rows[..., :-1, :], rows[..., 1:, :])


def real_handwriting(x: torch.Tensor, config: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Domain randomisation toward other people's writing and scans (``digitlab.realism``: aspect stretch,
    slant, pen width and pressure, broken strokes, 1-bit scans, low resolution); the reader recipe's."""
    return realism.randomise(x, config, gen) if realism.enabled(config) else x


# Applied in this order by augment_batch.
TRANSFORMS: list[Transform] = [geometric, pen_skip, stroke_width, real_handwriting]


def augment_batch(x: torch.Tensor, config: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Every transform of ``TRANSFORMS`` in turn on a (N, 1, H, W) batch (see the module docstring)."""
    for transform in TRANSFORMS:
        x = transform(x, config, gen)
    return x
