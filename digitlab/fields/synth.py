"""The synthetic field generator: fields drawn from MNIST digits the way a check looks.

Blue or black ink on off-white paper with grain, specks and uneven light, a printed rule line,
digits of varying size and spacing, sometimes touching or overlapping, sometimes with a broken
stroke. Deterministic given a ``numpy.random.Generator``; used by the tests and the benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from digitlab.fields.segment import Box, crop_box

# Synthetic ink colours (RGB): ballpoint blues and black pens.
INKS = {
    "blue": [(25, 45, 150), (20, 35, 115), (45, 75, 175), (30, 30, 130)],
    "black": [(22, 22, 28), (45, 45, 50), (30, 28, 40)],
}


# --- the synthetic field generator -------------------------------------------------------------


@dataclass
class Field:
    """A generated field: RGB image, the digits it shows, one box per digit, the options drawn."""

    image: np.ndarray
    text: str
    boxes: list[Box]
    options: dict[str, Any] = field(default_factory=dict)


def _pick(value: Any, rng: np.random.Generator) -> float:
    """A number, or a uniform draw from a (low, high) range."""
    if isinstance(value, (tuple, list)):
        return float(rng.uniform(float(value[0]), float(value[1])))
    return float(value)


def _resize(a: np.ndarray, width: int, height: int) -> np.ndarray:
    out = Image.fromarray(a.astype(np.float32)).resize((width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def _break_stroke(a: np.ndarray, width: float, rng: np.random.Generator) -> np.ndarray:
    """Erase a band ``width`` px wide through a random stroke pixel at a random angle (a pen skip)."""
    ys, xs = np.nonzero(a > 0.5)
    if len(ys) == 0:
        return a
    k = int(rng.integers(len(ys)))
    theta = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]
    dist = np.abs((xx - xs[k]) * math.sin(theta) - (yy - ys[k]) * math.cos(theta))
    return a * np.clip(dist / (width / 2) - 0.5, 0.0, 1.0)


def make_field(
    digit_images: np.ndarray,
    labels: Sequence[int],
    rng: np.random.Generator,
    *,
    scale: float | tuple[float, float] = (1.0, 2.0),
    ink: str = "random",
    rule: float = 0.7,
    noise: float | tuple[float, float] = (0.01, 0.05),
    jitter: float = 1.0,
    spacing: float | tuple[float, float] = (0.15, 0.5),
    overlap: float = 0.05,
    broken: float = 0.05,
    specks: float = 3.0,
) -> Field:
    """Draw a field showing ``digit_images`` (MNIST-style uint8, light ink on black) left to right.

    Ranges are drawn from ``rng`` once per field. ``scale``: digit size relative to MNIST's
    (1: 20 px tall); ``ink``: blue, black or random; ``rule``: probability of a printed rule line
    near the baseline; ``noise``: paper grain (std, 0..1); ``jitter``: size, height and gap
    variation (0: a regular row); ``spacing``: mean gap in digit heights; ``overlap``: probability
    that a digit is pushed into its left neighbour (touching digits); ``broken``: probability that
    a digit's stroke has a gap; ``specks``: mean number of dirt specks.
    """
    imgs = np.asarray(digit_images)
    if imgs.ndim != 3 or len(imgs) == 0 or len(imgs) != len(labels):
        raise ValueError("digit_images must be (N, H, W) with N >= 1 and one label per image")
    if ink == "random":
        ink = "blue" if rng.random() < 0.5 else "black"
    if ink not in INKS:
        raise ValueError(f"ink must be blue, black or random, not {ink!r}")
    s = _pick(scale, rng)
    unit = 20.0 * s  # a digit's height in pixels
    colour = np.array(INKS[ink][int(rng.integers(len(INKS[ink])))], np.float32)
    gap0 = _pick(spacing, rng) * unit
    sigma = _pick(noise, rng)

    parts, broken_at, touching_at = [], [], []
    for a in imgs:
        a = a.astype(np.float32) / 255.0
        a = a[crop_box(a, 0.05)]
        si = s * (1.0 + jitter * rng.uniform(-0.12, 0.12))
        h, w = a.shape
        a = _resize(a, max(1, round(w * si)), max(2, round(h * si)))
        if rng.random() < broken:
            broken_at.append(len(parts))
            a = _break_stroke(a, rng.uniform(0.8, 1.5) * s, rng)
        parts.append(a * rng.uniform(0.8, 1.0))

    # Layout along a baseline: gaps vary, and an overlapping digit starts inside its neighbour.
    margin_top, margin_bottom = rng.uniform(0.25, 0.6, size=2) * unit
    baseline = margin_top + unit
    x = rng.uniform(0.3, 1.0) * unit
    placed = []
    for i, a in enumerate(parts):
        h, w = a.shape
        if i > 0:
            if rng.random() < overlap:
                touching_at.append(i)
                x -= rng.uniform(0.0, 0.15) * min(w, parts[i - 1].shape[1])
            else:
                x += max(1.0, gap0 * (1.0 + jitter * rng.uniform(-0.5, 0.5)))
        bottom = baseline + jitter * rng.uniform(-0.08, 0.08) * unit
        placed.append((int(round(x)), int(round(bottom - h)), a))
        x += w
    width = int(round(x + rng.uniform(0.3, 1.0) * unit))
    height = int(round(baseline + 0.1 * unit + margin_bottom))
    top_pad = max(0, -min(y for _, y, _ in placed))
    height += top_pad

    alpha = np.zeros((height, width), np.float32)
    boxes = []
    for x0, y0, a in placed:
        y0 += top_pad
        h, w = a.shape
        alpha[y0 : y0 + h, x0 : x0 + w] = np.maximum(alpha[y0 : y0 + h, x0 : x0 + w], a)
        sy, sx = crop_box(a, 0.2) if (a > 0.2).any() else (slice(0, h), slice(0, w))
        boxes.append((int(x0 + sx.start), int(y0 + sy.start), int(x0 + sx.stop), int(y0 + sy.stop)))

    # Paper: off-white, a lighting gradient in a random direction, grain, a few specks.
    paper_rgb = np.array([rng.uniform(232, 252), rng.uniform(230, 250), rng.uniform(215, 245)], np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (xx * math.cos(angle) + yy * math.sin(angle)) / max(width, height)
    light = 1.0 - rng.uniform(0.0, 0.15) * (ramp - ramp.min())
    image = paper_rgb[None, None, :] * light[:, :, None]
    grain = rng.normal(0.0, sigma * 255.0, (height, width, 1)) + rng.normal(0.0, sigma * 80.0, (height, width, 3))
    image = image + grain.astype(np.float32)

    def paint(layer: np.ndarray, rgb: np.ndarray) -> None:
        nonlocal image
        image = image * (1.0 - layer[:, :, None]) + rgb[None, None, :] * layer[:, :, None]

    dirt = np.zeros_like(alpha)
    for _ in range(int(rng.poisson(specks))):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.4, 1.2) * s
        dirt = np.maximum(dirt, rng.uniform(0.3, 0.8) * np.clip(r + 0.5 - np.hypot(yy - cy, xx - cx), 0, 1))
    paint(dirt, np.array([70, 65, 60], np.float32))
    has_rule = bool(rng.random() < rule)
    if has_rule:
        y_rule = int(round(top_pad + baseline + rng.uniform(-0.08, 0.2) * unit))
        thick = max(1, int(round(rng.uniform(0.05, 0.1) * unit)))
        x0, x1 = int(rng.uniform(0, 0.04) * width), width - int(rng.uniform(0, 0.04) * width)
        line = np.zeros_like(alpha)
        line[max(0, y_rule) : min(height, y_rule + thick), x0:x1] = rng.uniform(0.7, 0.95)
        paint(line, np.full(3, rng.uniform(30, 90), np.float32))
    paint(alpha, colour)

    options = {"scale": s, "ink": ink, "rule": has_rule, "noise": sigma, "spacing": gap0 / unit,
               "broken": broken_at, "touching": touching_at}
    text = "".join(str(int(v)) for v in labels)
    return Field(np.clip(image, 0, 255).round().astype(np.uint8), text, boxes, options)


def random_field(
    images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, min_digits: int = 2, max_digits: int = 12,
    **options: Any,
) -> Field:
    """A field of 2 to 12 digits drawn at random (without repeats) from ``images``/``labels``."""
    n = int(rng.integers(min_digits, max_digits + 1))
    idx = rng.choice(len(images), size=n, replace=False)
    return make_field(images[idx], labels[idx], rng, **options)
