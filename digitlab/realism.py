"""Domain randomisation: make MNIST-style training digits look like what ``preprocess`` makes of real ones.

Real digits differ from MNIST's in ways the affine augmentation of ``training.augment_batch`` does not
cover: they were stretched to fill a box (USPS), written with another pen (width, pressure), scanned to
1 bit and smoothed again, slanted more, or broken. Each transform here is a batched torch function of
``(N, 1, H, W)`` float images in raw pixel units (0..255, zero background) and a CPU ``torch.Generator``,
so a run repeats exactly; each hits a sample with its own probability and returns the same shape and
range. ``randomise(x, config, gen)`` applies the ones whose probability in the config is above zero
(``aug_stretch``, ``aug_width``, ``aug_pressure``, ``aug_scan``, ``aug_slant``, ``aug_break``,
``aug_lowres``).

``render_through_preprocess`` is the offline part: digits drawn onto paper as photos and passed back
through the real ``digitlab.preprocess`` path (numpy/PIL, too slow for every batch): ``digitlab.data``'s
``rendered:NAME`` dataset computes it once and caches it, and ``digitlab.calibration`` fits the temperature
on rendered validation digits.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

TRANSFORMS = ("aug_stretch", "aug_width", "aug_pressure", "aug_scan", "aug_slant", "aug_break", "aug_lowres")


def _hit(n: int, p: float, gen: torch.Generator, dev: torch.device) -> torch.Tensor:
    return (torch.rand(n, generator=gen) < p).to(dev).view(n, 1, 1, 1)


def _u(n: int, lo: float, hi: float, gen: torch.Generator, dev: torch.device) -> torch.Tensor:
    return (lo + (hi - lo) * torch.rand(n, generator=gen)).to(dev)


def _renorm(x: torch.Tensor) -> torch.Tensor:
    """Strokes reach 255 again, as ``preprocess`` stretches every digit's ink to full scale."""
    top = x.amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(top > 1e-3, x * (255.0 / top.clamp(min=1e-3)), x).clamp(0, 255)


def _ink_box(x: torch.Tensor, level: float = 20.0) -> tuple[torch.Tensor, ...]:
    """Per-image bounding box of the ink (rows top, bottom, columns left, right), as float indices."""
    n, _, h, w = x.shape
    rows, cols = (x[:, 0] > level).any(2), (x[:, 0] > level).any(1)
    ar_h = torch.arange(h, device=x.device, dtype=torch.float32)
    ar_w = torch.arange(w, device=x.device, dtype=torch.float32)
    top = torch.where(rows, ar_h, float(h)).amin(1)
    bottom = torch.where(rows, ar_h, -1.0).amax(1)
    left = torch.where(cols, ar_w, float(w)).amin(1)
    right = torch.where(cols, ar_w, -1.0).amax(1)
    empty = bottom < top
    return (torch.where(empty, 0.0, top), torch.where(empty, h - 1.0, bottom),
            torch.where(empty, 0.0, left), torch.where(empty, w - 1.0, right))


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def stretch(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Widen (or heighten) the narrow side of the digit toward a square, as box-filling scanners do.

    USPS digits were scaled to fill 16x16 whatever their shape, so its 1s and 7s are fat; the longest
    side is kept, so ``preprocess`` would size the result exactly like the original.
    """
    n, _, h, w = x.shape
    dev = x.device
    top, bottom, left, right = _ink_box(x)
    bh, bw = bottom - top + 1, right - left + 1
    amount = _u(n, 0.0, 1.0, gen, dev)
    hit = _hit(n, p, gen, dev).view(n)
    # new width / old width (a tall digit) or new height / old height (a wide one)
    fx = torch.where(bw < bh, 1 + amount * (bh / bw.clamp(min=1) - 1), torch.ones_like(bw))
    fy = torch.where(bh < bw, 1 + amount * (bw / bh.clamp(min=1) - 1), torch.ones_like(bh))
    fx, fy = torch.where(hit, fx, 1.0), torch.where(hit, fy, 1.0)
    # About the box centre, in affine_grid's [-1, 1] coordinates (output -> input sampling).
    cx = (left + right + 1) / w - 1
    cy = (top + bottom + 1) / h - 1
    zero = torch.zeros_like(fx)
    theta = torch.stack([torch.stack([1 / fx, zero, cx - cx / fx], 1),
                         torch.stack([zero, 1 / fy, cy - cy / fy], 1)], 1)
    out = _warp(x, theta)
    return torch.where(hit.view(n, 1, 1, 1), out, x)


def stroke_width(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """A thicker or thinner pen: grey dilation by 1 or 2 px or erosion by 1 px, whole (no grey halo)."""
    n = x.shape[0]
    dev = x.device
    r = torch.rand(n, generator=gen).to(dev).view(n, 1, 1, 1)
    thick = r < p / 2
    thin = (r >= p / 2) & (r < p)
    big = (torch.rand(n, generator=gen) < 0.5).to(dev).view(n, 1, 1, 1)
    # a 2x2 window grows strokes by one pixel (shifted by half a pixel), 3x3 by two
    dil2 = F.max_pool2d(F.pad(x, (0, 1, 0, 1)), 2, 1)
    dil = torch.where(big, F.max_pool2d(x, 3, 1, 1), dil2)
    ero = -F.max_pool2d(F.pad(-x, (0, 1, 0, 1), value=-255.0), 2, 1)
    return torch.where(thick | thin, _renorm(torch.where(thick, dil, ero)), x)


def pressure(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Uneven pen pressure: a smooth random gain over the strokes (0.35..1), then full scale again."""
    n, _, h, w = x.shape
    dev = x.device
    coarse = torch.rand((n, 1, 3, 3), generator=gen).to(dev)
    gain = 0.35 + 0.65 * F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    gamma = torch.exp(_u(n, -0.6, 0.6, gen, dev)).view(n, 1, 1, 1)  # faint or saturated strokes
    out = _renorm(255.0 * (x / 255.0).clamp(0, 1) ** gamma * gain)
    return torch.where(_hit(n, p, gen, dev), out, x)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur (5 taps) of width ``sigma`` (N,) pixels."""
    taps = torch.arange(-2, 3, device=x.device, dtype=x.dtype)
    k = torch.exp(-(taps.view(1, 5) ** 2) / (2 * sigma.view(-1, 1).clamp(min=0.05) ** 2))
    k = k / k.sum(1, keepdim=True)
    n, c, h, w = x.shape
    y = F.conv2d(F.pad(x.view(1, n, h, w), (2, 2, 0, 0)), k.view(n, 1, 1, 5), groups=n)
    y = F.conv2d(F.pad(y, (0, 0, 2, 2)), k.view(n, 1, 5, 1), groups=n)
    return y.view(n, c, h, w)


def scan(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """A 1-bit scan brought back to grey: blur, threshold at a random level, smooth the hard edges again."""
    n = x.shape[0]
    dev = x.device
    soft = _blur(x, _u(n, 0.3, 0.9, gen, dev))
    level = _u(n, 0.25, 0.6, gen, dev).view(n, 1, 1, 1) * soft.amax(dim=(1, 2, 3), keepdim=True)
    binary = (soft > level).to(x.dtype) * 255.0
    out = _renorm(_blur(binary, _u(n, 0.35, 0.8, gen, dev)))
    keep = binary.amax(dim=(1, 2, 3), keepdim=True) > 0  # a faint digit must not vanish
    return torch.where(_hit(n, p, gen, dev) & keep, out, x)


def slant(x: torch.Tensor, p: float, gen: torch.Generator, max_shear: float = 0.6) -> torch.Tensor:
    """A stronger slant than the affine augmentation's (shear up to ``max_shear``), about the image centre."""
    n = x.shape[0]
    dev = x.device
    k = _u(n, -max_shear, max_shear, gen, dev)
    one, zero = torch.ones_like(k), torch.zeros_like(k)
    theta = torch.stack([torch.stack([one, k, zero], 1), torch.stack([zero, one, zero], 1)], 1)
    # shearing widens the digit: shrink back so the longest side stays near MNIST's 20 px
    shrink = 1 + 0.5 * k.abs()
    theta[:, 0, :2] *= shrink.view(n, 1)
    theta[:, 1, :2] *= shrink.view(n, 1)
    return torch.where(_hit(n, p, gen, dev), _warp(x, theta), x)


def breaks(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Broken strokes: one to three small round gaps where the pen lifted or the scan dropped ink."""
    n, _, h, w = x.shape
    dev = x.device
    ys = torch.arange(h, device=dev, dtype=x.dtype).view(1, h, 1)
    xs = torch.arange(w, device=dev, dtype=x.dtype).view(1, 1, w)
    keep = torch.ones((n, 1, h, w), device=dev, dtype=x.dtype)
    count = torch.randint(1, 4, (n,), generator=gen).to(dev)
    flat = (x[:, 0] > 128).flatten(1).to(torch.float32) + 1e-6  # gaps fall on the ink
    for i in range(3):
        pick = torch.multinomial(flat.cpu(), 1, generator=gen).to(dev).view(n)
        cy, cx = (pick // w).to(x.dtype).view(n, 1, 1), (pick % w).to(x.dtype).view(n, 1, 1)
        radius = _u(n, 0.8, 1.6, gen, dev).view(n, 1, 1)
        d = torch.sqrt((ys - cy) ** 2 + (xs - cx) ** 2)
        gap = (d / radius).clamp(max=1.0).unsqueeze(1)
        keep = torch.where((count > i).view(n, 1, 1, 1), keep * gap, keep)
    return torch.where(_hit(n, p, gen, dev), x * keep, x)


def lowres(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """A digit seen at low resolution (7-14 px, as in small photos or 8x8 bitmaps), smoothly upscaled again."""
    n, _, h, w = x.shape
    dev = x.device
    hit = _hit(n, p, gen, dev).view(n)
    sides = torch.randint(7, 15, (n,), generator=gen).to(dev)
    out = x.clone()
    for side in sides[hit].unique().tolist():
        sel = hit & (sides == side)
        small = F.interpolate(x[sel], size=(side, side), mode="area")
        out[sel] = _renorm(F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 255))
    return out


_APPLY = {"aug_stretch": stretch, "aug_slant": slant, "aug_width": stroke_width, "aug_pressure": pressure,
          "aug_break": breaks, "aug_scan": scan, "aug_lowres": lowres}


def randomise(x: torch.Tensor, config: Any, gen: torch.Generator) -> torch.Tensor:
    """Apply every transform whose probability (a ``TrainConfig`` field of ``TRANSFORMS``) is above zero.

    The order is geometry first (stretch, slant), then the pen (width, pressure, breaks), then the scan
    and the resolution.
    """
    for name, fn in _APPLY.items():
        p = float(getattr(config, name, 0.0) or 0.0)
        if p > 0:
            x = fn(x, p, gen)
    return x


def enabled(config: Any) -> bool:
    return any(float(getattr(config, name, 0.0) or 0.0) > 0 for name in TRANSFORMS)


# --- offline: digits on paper, photographed, and back through preprocess -------------------------


def render_on_paper(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One MNIST-style uint8 digit (light ink on black) -> an RGB photo of it written on paper.

    Random size (40-120 px tall), margins, ink colour, paper tone, lighting gradient, grain and blur,
    the way a phone picture of a written digit looks before ``preprocess`` sees it.
    """
    from PIL import Image, ImageFilter

    a = digit.astype(np.float32) / 255.0
    side = int(rng.integers(40, 121))
    img = Image.fromarray(np.round(a * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
    ink = np.asarray(img, np.float32) / 255.0
    pad = [int(v) for v in rng.integers(side // 8, side // 2, size=4)]
    ink = np.pad(ink, ((pad[0], pad[1]), (pad[2], pad[3])))
    hh, ww = ink.shape
    paper = np.array([rng.uniform(200, 252), rng.uniform(195, 250), rng.uniform(180, 245)], np.float32)
    colour = np.array(rng.choice([(25, 25, 30), (30, 40, 120), (50, 50, 55)]), np.float32)
    yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    ramp = (xx * math.cos(ang) + yy * math.sin(ang)) / max(hh, ww)
    light = 1.0 - rng.uniform(0.0, 0.25) * (ramp - ramp.min())
    strength = rng.uniform(0.6, 1.0)
    rgb = paper * light[..., None] * (1 - strength * ink[..., None]) + colour * strength * ink[..., None]
    rgb = rgb + rng.normal(0, rng.uniform(2, 10), rgb.shape)
    out = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2) * side / 40))
    return np.asarray(out)


def render_through_preprocess(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each digit rendered on paper (``render_on_paper``) and read back by ``digitlab.preprocess``.

    A digit the preprocessing cannot find (rare: a very faint render) keeps its original image.
    """
    from digitlab.errors import ImageError
    from digitlab.preprocess import preprocess

    rng = np.random.default_rng(seed)
    out = np.empty_like(images)
    for i, digit in enumerate(images):
        try:
            out[i] = preprocess(render_on_paper(digit, rng), "mnist")
        except ImageError:
            out[i] = digit
    return out
