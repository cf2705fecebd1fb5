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
from PIL import Image, ImageDraw, ImageFont

from digitlab.fields.pieces import Box, crop_box

SEPARATORS = ".,/-"
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
    text: str | None = None,
    frame: bool = False,
    currency: str | None = None,
) -> Field:
    """Draw a field showing ``digit_images`` (MNIST-style uint8, light ink on black) left to right.

    Ranges are drawn from ``rng`` once per field. ``scale``: digit size relative to MNIST's
    (1: 20 px tall); ``ink``: blue, black or random; ``rule``: probability of a printed rule line
    near the baseline; ``noise``: paper grain (std, 0..1); ``jitter``: size, height and gap
    variation (0: a regular row); ``spacing``: mean gap in digit heights; ``overlap``: probability
    that a digit is pushed into its left neighbour (touching digits); ``broken``: probability that
    a digit's stroke has a gap; ``specks``: mean number of dirt specks.

    ``text``: the field's whole text when it holds separators (``. , / -``, drawn as pen strokes:
    ``_separator``) or spaces (a wider gap); its digits are ``labels`` in order. ``frame``: a
    printed box around the field (a check's date or amount box); ``currency``: a printed currency
    sign or code (``$``, ``EUR`` ...) left of the box. The boxes are one per drawn symbol (spaces
    have none).
    """
    imgs = np.asarray(digit_images)
    if imgs.ndim != 3 or len(imgs) == 0 or len(imgs) != len(labels):
        raise ValueError("digit_images must be (N, H, W) with N >= 1 and one label per image")
    digits_text = "".join(str(int(v)) for v in labels)
    if text is None:
        text = digits_text
    if "".join(c for c in text if c.isdigit()) != digits_text or set(text) - set("0123456789" + SEPARATORS + " "):
        raise ValueError(f"text {text!r} must hold the labels' digits in order, separators ({SEPARATORS}) and spaces")
    if ink == "random":
        ink = "blue" if rng.random() < 0.5 else "black"
    if ink not in INKS:
        raise ValueError(f"ink must be blue, black or random, not {ink!r}")
    s = _pick(scale, rng)
    unit = 20.0 * s  # a digit's height in pixels
    colour = np.array(INKS[ink][int(rng.integers(len(INKS[ink])))], np.float32)
    gap0 = _pick(spacing, rng) * unit
    sigma = _pick(noise, rng)

    parts: list[np.ndarray | None] = []
    drops: list[float] = []  # how far below the baseline a separator's bottom is (digits: 0)
    broken_at, touching_at = [], []
    pen = rng.uniform(0.11, 0.17) * unit if text != digits_text else 0.0
    digit_iter = iter(imgs)
    for ch in text:
        if ch == " ":
            parts.append(None)
            drops.append(0.0)
            continue
        if ch in SEPARATORS:
            a, drop = _separator(ch, unit, pen, rng)
            parts.append(a * rng.uniform(0.8, 1.0))
            drops.append(drop)
            continue
        a = next(digit_iter).astype(np.float32) / 255.0
        a = a[crop_box(a, 0.05)]
        si = s * (1.0 + jitter * rng.uniform(-0.12, 0.12))
        h, w = a.shape
        a = _resize(a, max(1, round(w * si)), max(2, round(h * si)))
        if rng.random() < broken:
            broken_at.append(len(parts))
            a = _break_stroke(a, rng.uniform(0.8, 1.5) * s, rng)
        parts.append(a * rng.uniform(0.8, 1.0))
        drops.append(0.0)

    # Layout along a baseline: gaps vary, and an overlapping digit starts inside its neighbour.
    margin_top, margin_bottom = rng.uniform(0.25, 0.6, size=2) * unit
    baseline = margin_top + unit
    x = rng.uniform(0.3, 1.0) * unit
    sign_width = 0.0
    if currency is not None:  # room for the printed sign left of the box
        sign_width = (0.6 + 0.55 * len(currency)) * unit
        x += sign_width
    placed = []
    prev: np.ndarray | None = None
    for i, a in enumerate(parts):
        if a is None:  # a space: a wide gap between digit groups
            x += rng.uniform(0.6, 1.0) * unit
            continue
        h, w = a.shape
        digit_pair = text[i] not in SEPARATORS and prev is not None and text[i - 1] not in SEPARATORS
        if prev is not None:
            if not digit_pair:  # a separator keeps a gap on both sides
                x += max(1.0, gap0 * rng.uniform(0.4, 1.0) + 0.1 * unit)
            elif rng.random() < overlap:
                touching_at.append(i)
                x -= rng.uniform(0.0, 0.15) * min(w, prev.shape[1])
            else:
                x += max(1.0, gap0 * (1.0 + jitter * rng.uniform(-0.5, 0.5)))
        if text[i] in SEPARATORS:
            bottom = baseline + drops[i]
        else:
            bottom = baseline + jitter * rng.uniform(-0.08, 0.08) * unit
        placed.append((int(round(x)), int(round(bottom - h)), a))
        x += w
        prev = a
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
    if frame or currency is not None:
        box_left = int(round(sign_width * 0.8))
        paint(_frame(height, width, box_left, rng), np.full(3, rng.uniform(40, 110), np.float32))
        if currency is not None:
            paint(_printed(currency, height, width, box_left, unit, rng), np.full(3, rng.uniform(20, 70), np.float32))
    paint(alpha, colour)

    options = {"scale": s, "ink": ink, "rule": has_rule, "noise": sigma, "spacing": gap0 / unit,
               "broken": broken_at, "touching": touching_at, "frame": bool(frame or currency), "currency": currency}
    return Field(np.clip(image, 0, 255).round().astype(np.uint8), text, boxes, options)


def _stroke(points: Sequence[tuple[float, float]], widths: Sequence[float], pad: float) -> np.ndarray:
    """A pen stroke along a polyline (points as (x, y) in px, one width per point), anti-aliased,
    cropped to its ink."""
    pts = np.asarray(points, np.float64)
    x0, y0 = pts.min(axis=0) - pad
    x1, y1 = pts.max(axis=0) + pad
    yy, xx = np.mgrid[0 : int(math.ceil(y1 - y0)) + 1, 0 : int(math.ceil(x1 - x0)) + 1].astype(np.float64)
    xx += x0
    yy += y0
    out = np.zeros(xx.shape)
    for (ax, ay), (bx, by), wa, wb in zip(pts[:-1], pts[1:], widths[:-1], widths[1:], strict=True):
        dx, dy = bx - ax, by - ay
        t = np.clip(((xx - ax) * dx + (yy - ay) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
        dist = np.hypot(xx - (ax + t * dx), yy - (ay + t * dy))
        out = np.maximum(out, np.clip((wa + t * (wb - wa)) / 2 + 0.5 - dist, 0.0, 1.0))
    a = out.astype(np.float32)
    return a[crop_box(a, 0.05)] if (a > 0.05).any() else a


def _separator(ch: str, unit: float, pen: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A handwritten separator: its ink (light on black) and how far below the baseline its bottom
    sits (px). A dot is a short dab on the baseline; a comma a short tail from the baseline down to
    the left; a dash a short, nearly flat stroke at mid-height; a slash a long stroke leaning
    right, from just below the baseline to about the digits' top."""
    w = pen * rng.uniform(0.85, 1.15)
    if ch == ".":
        length = rng.uniform(0.0, 0.08) * unit
        theta = rng.uniform(0, math.pi)
        w *= rng.uniform(1.1, 1.6)
        pts = [(0.0, 0.0), (length * math.cos(theta), length * math.sin(theta))]
        return _stroke(pts, [w, w], w), rng.uniform(-0.06, 0.04) * unit
    if ch == ",":
        h = rng.uniform(0.25, 0.45) * unit
        lean = rng.uniform(0.1, 0.25) * unit
        bend = rng.uniform(0.0, 0.08) * unit
        pts = [(lean, 0.0), (lean * 0.7 + bend, 0.45 * h), (0.0, h)]
        return _stroke(pts, [w * 1.35, w, w * 0.6], w), rng.uniform(0.1, 0.3) * unit
    if ch == "-":
        length = rng.uniform(0.3, 0.6) * unit
        tilt = math.radians(rng.uniform(-8, 8))
        sag = rng.uniform(-0.03, 0.03) * unit
        pts = [(0.0, 0.0), (length / 2, sag), (length * math.cos(tilt), -length * math.sin(tilt))]
        height_above = rng.uniform(0.38, 0.55) * unit  # the dash's centre above the baseline
        a = _stroke(pts, [w, w, w * 0.9], w)
        return a, -(height_above - a.shape[0] / 2)
    if ch == "/":
        h = rng.uniform(0.95, 1.25) * unit
        angle = math.radians(rng.uniform(20, 40))
        bow = rng.uniform(-0.04, 0.04) * unit
        dx = h * math.tan(angle)
        pts = [(0.0, h), (dx / 2 + bow, h / 2), (dx, 0.0)]
        return _stroke(pts, [w, w, w * 0.85], w), rng.uniform(0.0, 0.12) * unit
    raise ValueError(f"{ch!r} is not a separator ({SEPARATORS})")


def _frame(height: int, width: int, left: int, rng: np.random.Generator) -> np.ndarray:
    """A printed box (thin dark lines) from column ``left`` to the field's right edge."""
    t = int(rng.integers(1, 3))
    m = int(rng.integers(1, 4))
    box = np.zeros((height, width), np.float32)
    level = rng.uniform(0.7, 0.95)
    box[m : m + t, left:width - m] = level
    box[height - m - t : height - m, left:width - m] = level
    box[m : height - m, left : left + t] = level
    box[m : height - m, width - m - t : width - m] = level
    return box


def _printed(sign: str, height: int, width: int, right: int, unit: float, rng: np.random.Generator) -> np.ndarray:
    """A printed currency sign or code ending a little before column ``right`` (a typeface, not a pen)."""
    font = ImageFont.load_default(size=max(8, int(unit * rng.uniform(0.5, 0.7))))
    x0, y0, x1, y1 = font.getbbox(sign)
    canvas = Image.new("L", (x1 - x0 + 2, y1 - y0 + 2))
    ImageDraw.Draw(canvas).text((1 - x0, 1 - y0), sign, fill=255, font=font)
    glyph = np.asarray(canvas, np.float32) / 255.0
    layer = np.zeros((height, width), np.float32)
    gh, gw = min(glyph.shape[0], height), min(glyph.shape[1], width)
    gy = (height - gh) // 2
    gx = max(0, right - gw - int(0.15 * unit))
    layer[gy : gy + gh, gx : gx + gw] = glyph[:gh, :gw]
    return layer


def random_field(
    images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, min_digits: int = 2, max_digits: int = 12,
    **options: Any,
) -> Field:
    """A field of 2 to 12 digits drawn at random (without repeats) from ``images``/``labels``."""
    n = int(rng.integers(min_digits, max_digits + 1))
    idx = rng.choice(len(images), size=n, replace=False)
    return make_field(images[idx], labels[idx], rng, **options)


# --- dates and amounts as people write them ---------------------------------------------------

DATE_STYLES = ("%d.%m.%Y", "%d.%m.%y", "%d/%m/%Y", "%d/%m/%y", "%d-%m-%Y", "%Y-%m-%d", "%d %m %Y", "%d%m%Y")
AMOUNT_STYLES = ("1.250,00", "1,250.00", "1 250,00", "1250,00", "1250.00", "250,-", "1250")


def random_date(rng: np.random.Generator, style: str | None = None) -> tuple[str, str]:
    """A date between 1990 and 2039 written in one of ``DATE_STYLES`` (day first): (text, ISO date)."""
    import datetime as dt

    day = dt.date(1990, 1, 1) + dt.timedelta(days=int(rng.integers(0, 18262)))
    fmt = style or DATE_STYLES[int(rng.integers(len(DATE_STYLES)))]
    return day.strftime(fmt), day.isoformat()


def _group(digits: str, mark: str) -> str:
    head = len(digits) % 3 or 3
    return mark.join([digits[:head]] + [digits[i : i + 3] for i in range(head, len(digits), 3)])


def random_amount(rng: np.random.Generator, style: str | None = None) -> tuple[str, str]:
    """An amount from 1 to 99,999 (log-uniform) written like one of ``AMOUNT_STYLES``: (text, value)."""
    style = style or AMOUNT_STYLES[int(rng.integers(len(AMOUNT_STYLES)))]
    whole = int(round(10 ** rng.uniform(0, 5)))
    cents = int(rng.integers(0, 100)) if rng.random() < 0.6 else 0
    digits = str(whole)
    if style == "250,-":
        return f"{digits},-", f"{whole}"
    if style == "1250":
        return digits, f"{whole}"
    thousands = {"1.250,00": ".", "1,250.00": ",", "1 250,00": " "}.get(style, "")
    decimal = "." if style in ("1,250.00", "1250.00") else ","
    text = (_group(digits, thousands) if thousands else digits) + f"{decimal}{cents:02d}"
    return text, f"{whole}.{cents:02d}"


def random_check_field(
    images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, kind: str = "random", **options: Any
) -> Field:
    """A check's date or amount field (``kind``: date, amount or random) drawn from MNIST-style
    ``images``/``labels``, in a check-like layout: on a rule line, in a printed box, or (amounts) in
    a box with a printed currency sign before it. ``Field.options`` holds ``format`` and the true
    ``value`` (ISO date, or the decimal amount)."""
    if kind == "random":
        kind = "date" if rng.random() < 0.5 else "amount"
    if kind not in ("date", "amount"):
        raise ValueError(f"kind must be date, amount or random, not {kind!r}")
    text, value = random_date(rng) if kind == "date" else random_amount(rng)
    by_class = [np.flatnonzero(labels == d) for d in range(10)]
    idx = np.array([rng.choice(by_class[int(c)]) for c in text if c.isdigit()])
    layout = ("rule", "box", "currency")[int(rng.integers(3 if kind == "amount" else 2))]
    options.setdefault("rule", 1.0 if layout == "rule" else 0.0)
    if layout == "box":
        options.setdefault("frame", True)
    if layout == "currency":
        options.setdefault("currency", ("$", "EUR", "CHF", "USD")[int(rng.integers(4))])
    f = make_field(images[idx], labels[idx], rng, text=text, **options)
    f.options.update({"format": kind, "value": value, "layout": layout})
    return f
