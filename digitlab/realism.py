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


def _u(n: int, lo: float, hi: float, gen: torch.Generator, dev: torch.device) -> torch.Tensor:
    return (lo + (hi - lo) * torch.rand(n, generator=gen)).to(dev)


def _on_some(x: torch.Tensor, p: float, gen: torch.Generator, fn: Any) -> torch.Tensor:
    """``fn`` on the images a draw with probability ``p`` picks (only those: the others cost nothing)."""
    n = x.shape[0]
    hit = torch.rand(n, generator=gen) < p
    if p <= 0 or not bool(hit.any()):
        return x
    idx = hit.nonzero().squeeze(1).to(x.device)
    out = x.clone()
    out[idx] = fn(x[idx], gen)
    return out


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


def _stretch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    top, bottom, left, right = _ink_box(x)
    bh, bw = bottom - top + 1, right - left + 1
    amount = _u(n, 0.0, 1.0, gen, x.device)
    # new width / old width (a tall digit) or new height / old height (a wide one)
    fx = torch.where(bw < bh, 1 + amount * (bh / bw.clamp(min=1) - 1), torch.ones_like(bw))
    fy = torch.where(bh < bw, 1 + amount * (bw / bh.clamp(min=1) - 1), torch.ones_like(bh))
    # about the box centre, in affine_grid's [-1, 1] coordinates (output -> input sampling)
    cx, cy = (left + right + 1) / w - 1, (top + bottom + 1) / h - 1
    zero = torch.zeros_like(fx)
    theta = torch.stack([torch.stack([1 / fx, zero, cx - cx / fx], 1),
                         torch.stack([zero, 1 / fy, cy - cy / fy], 1)], 1)
    return _warp(x, theta)


def stretch(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Widen (or heighten) the narrow side of the digit toward a square, as box-filling scanners do.

    USPS digits were scaled to fill 16x16 whatever their shape, so its 1s and 7s are fat; the longest
    side is kept, so ``preprocess`` would size the result exactly like the original.
    """
    return _on_some(x, p, gen, _stretch)


def _width(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    r = torch.rand(n, generator=gen).to(x.device).view(n, 1, 1, 1)
    # a 2x2 window grows strokes by one pixel (shifted by half a pixel), 3x3 by two; 2x2 erosion thins by one
    dil2 = F.max_pool2d(F.pad(x, (0, 1, 0, 1)), 2, 1)
    dil3 = F.max_pool2d(x, 3, 1, 1)
    ero = -F.max_pool2d(F.pad(-x, (0, 1, 0, 1), value=-255.0), 2, 1)
    return _renorm(torch.where(r < 0.25, dil3, torch.where(r < 0.5, dil2, ero)))


def stroke_width(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """A thicker or thinner pen: grey dilation by 1 or 2 px or erosion by 1 px, whole (no grey halo)."""
    return _on_some(x, p, gen, _width)


def _pressure(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    coarse = torch.rand((n, 1, 3, 3), generator=gen).to(x.device)
    gain = 0.35 + 0.65 * F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    gamma = torch.exp(_u(n, -0.6, 0.6, gen, x.device)).view(n, 1, 1, 1)  # faint or saturated strokes
    return _renorm(255.0 * (x / 255.0).clamp(0, 1) ** gamma * gain)


def pressure(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Uneven pen pressure: a smooth random gain over the strokes (0.35..1), then full scale again."""
    return _on_some(x, p, gen, _pressure)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur (5 taps) of width ``sigma`` (N,) pixels."""
    taps = torch.arange(-2, 3, device=x.device, dtype=x.dtype)
    k = torch.exp(-(taps.view(1, 5) ** 2) / (2 * sigma.view(-1, 1).clamp(min=0.05) ** 2))
    k = k / k.sum(1, keepdim=True)
    n, c, h, w = x.shape
    y = F.conv2d(F.pad(x.view(1, n, h, w), (2, 2, 0, 0)), k.view(n, 1, 1, 5), groups=n)
    y = F.conv2d(F.pad(y, (0, 0, 2, 2)), k.view(n, 1, 5, 1), groups=n)
    return y.view(n, c, h, w)


def _scan(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    soft = _blur(x, _u(n, 0.3, 0.9, gen, x.device))
    level = _u(n, 0.25, 0.6, gen, x.device).view(n, 1, 1, 1) * soft.amax(dim=(1, 2, 3), keepdim=True)
    binary = (soft > level).to(x.dtype) * 255.0
    out = _renorm(_blur(binary, _u(n, 0.35, 0.8, gen, x.device)))
    keep = binary.amax(dim=(1, 2, 3), keepdim=True) > 0  # a faint digit must not vanish
    return torch.where(keep, out, x)


def scan(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """A 1-bit scan brought back to grey: blur, threshold at a random level, smooth the hard edges again."""
    return _on_some(x, p, gen, _scan)


def _slant(x: torch.Tensor, gen: torch.Generator, max_shear: float = 0.6) -> torch.Tensor:
    n = x.shape[0]
    k = _u(n, -max_shear, max_shear, gen, x.device)
    # shearing widens the digit: shrink back so the longest side stays near MNIST's 20 px
    shrink = 1 + 0.5 * k.abs()
    zero = torch.zeros_like(k)
    theta = torch.stack([torch.stack([shrink, k * shrink, zero], 1), torch.stack([zero, shrink, zero], 1)], 1)
    return _warp(x, theta)


def slant(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """A stronger slant than the affine augmentation's (shear up to 0.6), about the image centre."""
    return _on_some(x, p, gen, _slant)


def _breaks(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    dev = x.device
    ys = torch.arange(h, device=dev, dtype=x.dtype).view(1, 1, h, 1)
    xs = torch.arange(w, device=dev, dtype=x.dtype).view(1, 1, 1, w)
    count = torch.randint(1, 4, (n, 3), generator=gen)
    ink = (x[:, 0] > 128).flatten(1).cpu()
    # three random ink pixels per image (the highest random score among its ink), used by 1-3 gaps
    scores = torch.rand((n, 3, h * w), generator=gen) * ink.unsqueeze(1) + 1e-3 * ink.unsqueeze(1)
    pick = scores.argmax(2).to(dev)
    cy, cx = (pick // w).to(x.dtype).view(n, 3, 1, 1), (pick % w).to(x.dtype).view(n, 3, 1, 1)
    radius = _u(n * 3, 0.8, 1.6, gen, dev).view(n, 3, 1, 1)
    gap = (torch.sqrt((ys - cy) ** 2 + (xs - cx) ** 2) / radius).clamp(max=1.0)
    used = (torch.arange(3).view(1, 3) < count[:, :1]).to(dev).view(n, 3, 1, 1)
    keep = torch.where(used, gap, torch.ones_like(gap)).prod(1, keepdim=True)
    return x * keep


def breaks(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Broken strokes: one to three small round gaps where the pen lifted or the scan dropped ink."""
    return _on_some(x, p, gen, _breaks)


def _lowres(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    sides = torch.randint(7, 15, (n,), generator=gen).to(x.device)
    out = x.clone()
    for side in sides.unique().tolist():
        sel = sides == side
        small = F.interpolate(x[sel], size=(side, side), mode="area")
        out[sel] = _renorm(F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 255))
    return out


def lowres(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """A digit seen at low resolution (7-14 px, as in small photos or 8x8 bitmaps), smoothly upscaled again."""
    return _on_some(x, p, gen, _lowres)


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


# --- offline: the continental-European way of writing 1 and 7 -------------------------------------


def _segment_ink(shape: tuple[int, int], p0: tuple[float, float], p1: tuple[float, float], width: float,
                 level: float) -> np.ndarray:
    """An anti-aliased pen stroke from ``p0`` to ``p1`` ((y, x) points), ``width`` px wide, at ``level``."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    (y0, x0), (y1, x1) = p0, p1
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-6), 0.0, 1.0)
    dist = np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx))
    return np.clip(width / 2 + 0.5 - dist, 0.0, 1.0) * level


def _restyle(a: np.ndarray, label: int, rng: np.random.Generator) -> np.ndarray:
    ink = np.pad(a, 10)
    rows = np.flatnonzero((ink > 0.3).any(1))
    top, bottom = int(rows[0]), int(rows[-1])
    h = bottom - top + 1
    level = float(np.percentile(ink[ink > 0.3], 90))
    width = float(np.clip(ink.sum() / max(h, 1) / level, 1.5, 4.0)) * rng.uniform(0.8, 1.1)

    def stem_x(y: int) -> float:
        row = ink[y]
        return float((row * np.arange(len(row))).sum() / max(row.sum(), 1e-6))

    if label == 1:
        # The long up-stroke ("flag") of a continental 1: from the top of the stem, down to the left.
        y0 = top + 0.5
        x0 = stem_x(top) if ink[top].sum() > 0 else stem_x(top + 1)
        angle = np.deg2rad(rng.uniform(25, 60))
        length = rng.uniform(0.25, 0.5) * h
        stroke = _segment_ink(ink.shape, (y0, x0), (y0 + length * np.sin(angle), x0 - length * np.cos(angle)),
                              width, level)
    else:
        # The crossbar of a continental 7, across the stem a little below the middle.
        y = int(top + rng.uniform(0.45, 0.62) * h)
        cx = stem_x(y)
        half = rng.uniform(0.15, 0.27) * h
        tilt = rng.uniform(-0.1, 0.1) * half
        stroke = _segment_ink(ink.shape, (y + tilt, cx - half), (y - tilt, cx + half * rng.uniform(0.8, 1.2)),
                              width, level)
    return np.maximum(ink, stroke)


def european_styles(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The 1s and 7s of an MNIST-style set redrawn the continental-European way: each 1 gets the long
    up-stroke that US-trained models read as a 7, each 7 the crossbar that tells it from that 1.

    Returns new uint8 28x28 images (centred the MNIST way again: the flag widens the digit) and their
    labels; the other classes are not included. Deterministic for a seed.
    """
    from digitlab.preprocess import center_digit

    rng = np.random.default_rng(seed)
    picked = np.flatnonzero(np.isin(labels, (1, 7)))
    out = np.empty((len(picked), 28, 28), np.uint8)
    for j, i in enumerate(picked):
        out[j] = center_digit(_restyle(images[i].astype(np.float32) / 255.0, int(labels[i]), rng))
    return out, labels[picked].copy()
