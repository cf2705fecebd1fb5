"""Fields holding a row of handwritten digits (the date and amount boxes of a bank check).

Two halves:

- ``make_field`` draws a synthetic field from MNIST digits the way a check looks: blue or black
  ink on off-white paper with grain, specks and uneven light, a printed rule line, digits of
  varying size and spacing, sometimes touching or overlapping, sometimes with a broken stroke.
  Deterministic given a ``numpy.random.Generator``; used by the tests and ``fields_benchmark``.
- ``segment_field`` cuts a field image into one piece of ink per digit: printed rule lines are
  removed (strokes crossing them are kept), connected components are found, pieces of a broken
  digit are merged, and touching digits are split along the least-ink path, choosing the cut
  whose two halves the classifier recognises most confidently.

Reading (segment, then classify each piece) is ``digitlab.predict.read_field``; this module
only sees a classifier as a function ``classify(list of ink crops) -> probabilities (N, K)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from digitlab.errors import ImageError
from digitlab.preprocess import extract_ink, load_grey

Classify = Callable[[list[np.ndarray]], np.ndarray]
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (ends exclusive)

# Synthetic ink colours (RGB): ballpoint blues and black pens.
INKS = {
    "blue": [(25, 45, 150), (20, 35, 115), (45, 75, 175), (30, 30, 130)],
    "black": [(22, 22, 28), (45, 45, 50), (30, 28, 40)],
}
_EIGHT = np.ones((3, 3), bool)


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


def _crop_box(a: np.ndarray, level: float = 0.0) -> tuple[slice, slice]:
    rows, cols = np.nonzero((a > level).any(axis=1))[0], np.nonzero((a > level).any(axis=0))[0]
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


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
        a = a[_crop_box(a, 0.05)]
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
        sy, sx = _crop_box(a, 0.2) if (a > 0.2).any() else (slice(0, h), slice(0, w))
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


# --- segmentation ---------------------------------------------------------------------------------


@dataclass
class Segment:
    """One digit's ink: its box in the field and the crop of its own pixels (light on black)."""

    box: Box
    ink: np.ndarray
    merged: bool = False  # joined from pieces: not split again unless too wide for one digit

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]


def _runs_at_least(mask: np.ndarray, length: int) -> np.ndarray:
    """Pixels lying on a horizontal run of at least ``length`` True pixels (a 1 x length opening)."""
    m = mask.astype(np.float32)
    full = ndi.uniform_filter1d(m, length, axis=1, mode="constant") > 1.0 - 0.5 / length
    return (ndi.uniform_filter1d(full.astype(np.float32), length, axis=1, mode="constant") > 0.5 / length) & mask


def remove_rules(ink: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove printed horizontal lines (longer than half the field) but keep the strokes touching them.

    A slight tilt is tolerated (the run test looks one row up and down).
    """
    h, w = mask.shape
    length = max(15, int(0.5 * w)) | 1  # odd: the two centred filters below then cover the same window
    near = mask | np.roll(mask, 1, axis=0) | np.roll(mask, -1, axis=0)
    line = ndi.binary_dilation(_runs_at_least(near, length), structure=np.ones((3, 1), bool)) & mask
    if not line.any():
        return ink, mask
    # Vertical runs of ink through the line: a run no longer than the rule's own thickness is the
    # rule alone and goes (with its anti-aliased rims); a longer one is a stroke crossing or
    # resting on the rule and stays, so a 7's stem or a 0 sitting on the line keeps its pixels
    # while a rule passing through the belly of a 0 is cut out.
    runs, _ = ndi.label(mask, structure=np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], bool))
    run_len = np.bincount(runs.ravel())[runs]
    thickness = float(np.median(run_len[line]))
    removed = line & (run_len < thickness + 2)
    removed &= ~_resting_strokes(ink, mask, line, removed, thickness)
    rim = ndi.binary_dilation(removed, structure=np.ones((5, 1), bool)) & ~mask
    return np.where(removed | rim, 0.0, ink).astype(np.float32), mask & ~removed


def _resting_strokes(
    ink: np.ndarray, mask: np.ndarray, line: np.ndarray, removed: np.ndarray, thickness: float
) -> np.ndarray:
    """The pixels of ``removed`` that belong to a stroke lying along the rule (the bottom of a 0 or
    a 2 written on the line), not to the rule itself.

    The rule's own profile across its width is measured in the columns where it is alone: its
    centre row (a straight fit, so a tilted rule works) and its median ink at each quarter-pixel
    offset from that centre. A removed pixel holding clearly more ink than the rule has at that
    offset is a stroke's; the rule's core rows between a stroke's pixels above and below it (give
    or take a column) are given back too, so a 0 resting on the rule stays closed. Only pixels
    connected to ink outside the rule band count.
    """
    h, w = mask.shape
    alone = removed.any(axis=0) & ~(line & ~removed).any(axis=0)
    xs = np.flatnonzero(alone)
    if len(xs) < 10:
        return np.zeros_like(mask)
    rows = np.arange(h, dtype=np.float64)[:, None]
    weight = np.where(removed[:, xs], ink[:, xs], 0.0).astype(np.float64)
    centre = (weight * rows).sum(axis=0) / np.maximum(weight.sum(axis=0), 1e-6)
    slope, intercept = np.polyfit(xs, centre, 1)
    reach = int(math.ceil(thickness)) + 2
    cols = np.arange(w)
    fit = intercept + slope * cols
    yy = np.floor(fit).astype(int)[None, :] + np.arange(-reach, reach + 2)[:, None]  # (rows, w)
    inside = (yy >= 0) & (yy < h)
    yy = np.clip(yy, 0, h - 1)
    band = np.where(inside, ink[yy, cols[None, :]], 0.0)
    band_mask = inside & mask[yy, cols[None, :]]
    # The rule's ink by distance from its centre, in quarter pixels: a straight rule's centre sits
    # at a fraction of a row that a tilted one changes along its length.
    offset = np.rint(4 * (yy - fit[None, :])).astype(int)
    alone_offset, alone_ink = offset[:, xs], band[:, xs]
    seen = np.unique(alone_offset)
    medians = np.array([np.median(alone_ink[alone_offset == q]) for q in seen])
    profile = np.interp(offset, seen, medians)
    # Excess over the rule, averaged over 3 columns: a stroke is wider than one pixel of noise.
    excess = ndi.uniform_filter1d(band - profile, 3, axis=1)
    stroke_band = (excess > 0.2) & band_mask
    # Core rows sandwiched between stroke pixels of the same column.
    wide = ndi.binary_dilation(stroke_band, structure=np.ones((1, 3), bool))
    above = np.maximum.accumulate(wide, axis=0)
    below = np.maximum.accumulate(wide[::-1], axis=0)[::-1]
    stroke_band |= above & below & band_mask
    stroke = np.zeros_like(mask)
    stroke[yy[stroke_band], np.nonzero(stroke_band)[1]] = True
    stroke &= removed
    if not stroke.any():
        return stroke
    # Keep only what joins a stroke leaving the band (not a thicker patch of the rule itself).
    labels, _ = ndi.label((mask & ~removed) | stroke, _EIGHT)
    anchored = np.unique(labels[mask & ~line])
    return stroke & np.isin(labels, anchored[anchored > 0])


# Hysteresis: a stroke is ink above WEAK_INK connected to some ink above Otsu's threshold, so the
# faint thin parts of a pen stroke do not break a digit in two, and faint dirt is not ink.
WEAK_INK = 0.1


def field_ink(image: Any, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Field image -> (ink in [0, 1], light on black; ink mask by hysteresis), rule lines removed."""
    grey = load_grey(image, name)
    ink, strong = extract_ink(grey)
    if not strong.any():
        raise ImageError(
            f"{name or 'The field image'} is blank (no ink stands out from the paper); "
            "use a picture of the written digits."
        )
    ink, weak = remove_rules(ink, (ink > WEAK_INK) | strong)
    labels, n = ndi.label(weak, _EIGHT)
    hit = np.zeros(n + 1, bool)
    hit[labels[strong & weak]] = True
    hit[0] = False
    return ink, hit[labels]


def _segments_from_labels(ink: np.ndarray, labels: np.ndarray, keep: Sequence[int]) -> list[Segment]:
    out = []
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None or i not in keep:
            continue
        sy, sx = sl
        crop = np.where(labels[sl] == i, ink[sl], 0.0).astype(np.float32)
        out.append(Segment((sx.start, sy.start, sx.stop, sy.stop), crop))
    return out


def _union(a: Segment, b: Segment) -> Segment:
    x0, y0 = min(a.box[0], b.box[0]), min(a.box[1], b.box[1])
    x1, y1 = max(a.box[2], b.box[2]), max(a.box[3], b.box[3])
    crop = np.zeros((y1 - y0, x1 - x0), np.float32)
    for s in (a, b):
        region = crop[s.box[1] - y0 : s.box[3] - y0, s.box[0] - x0 : s.box[2] - x0]
        np.maximum(region, s.ink, out=region)
    return Segment((x0, y0, x1, y1), crop, merged=True)


def _trim(seg: Segment) -> Segment | None:
    """Shrink a segment to its ink, dropping slivers a cut left behind (< 8% of the ink)."""
    m = seg.ink > 0.3
    labels, n = ndi.label(m, _EIGHT)
    if n == 0:
        return None
    mass = ndi.sum(seg.ink, labels, index=np.arange(1, n + 1))
    keep = np.isin(labels, 1 + np.flatnonzero(mass >= 0.08 * mass.sum()))
    keep = ndi.binary_dilation(keep, iterations=2) & (seg.ink > 0)
    ink = np.where(keep, seg.ink, 0.0).astype(np.float32)
    if not (ink > 0).any():
        return None
    sy, sx = _crop_box(ink)
    x0, y0 = seg.box[0], seg.box[1]
    return Segment((x0 + sx.start, y0 + sy.start, x0 + sx.stop, y0 + sy.stop), ink[sy, sx])


def _cuts(crop: np.ndarray, unit: float, count: int = 15) -> list[np.ndarray]:
    """Candidate cuts of ``crop`` into left and right: 'left' masks along least-ink paths.

    Each candidate starts from a column between 0.2 and w - 0.2 digit heights and follows the
    cheapest top-to-bottom path (one column sideways per row at most) within a band around it,
    so slanted and touching strokes are cut where they are thinnest.
    """
    h, w = crop.shape
    lo, hi = max(2, int(0.2 * unit)), w - max(2, int(0.2 * unit))
    if hi <= lo:
        return []
    band = max(2, int(0.2 * unit))
    cost = crop + 0.05  # a little cost per step keeps paths straight through empty space
    paths, masks = set(), []
    for x in np.unique(np.linspace(lo, hi, num=min(count, hi - lo + 1)).round().astype(int)):
        a, b = max(0, x - band), min(w, x + band + 1)
        acc = cost[:, a:b].copy()
        back = np.zeros(acc.shape, np.int64)
        for r in range(1, h):
            prev = acc[r - 1]
            options = np.stack([np.r_[np.inf, prev[:-1]], prev, np.r_[prev[1:], np.inf]])
            k = options.argmin(axis=0)
            acc[r] += options[k, np.arange(len(prev))]
            back[r] = k - 1
        col = int(acc[-1].argmin())
        path = [col]
        for r in range(h - 1, 0, -1):
            col += int(back[r, col])
            path.append(col)
        path_arr = a + np.array(path[::-1])
        key = path_arr.tobytes()
        if key in paths:
            continue
        paths.add(key)
        masks.append(np.arange(w)[None, :] < path_arr[:, None])
    return masks


def _split_parts(seg: Segment, left: np.ndarray) -> tuple[Segment, Segment] | None:
    """The two halves of a cut, or None when one of them holds too little ink to be a digit."""
    parts = []
    for m in (left, ~left):
        part = _trim(Segment(seg.box, np.where(m, seg.ink, 0.0).astype(np.float32)))
        if part is None or part.ink.sum() < 0.12 * seg.ink.sum():
            return None
        parts.append(part)
    return parts[0], parts[1]


def _confidence(classify: Classify, crops: list[np.ndarray]) -> np.ndarray:
    if not crops:
        return np.zeros(0)
    return np.asarray(classify(crops)).max(axis=1)


# Width / height (in digit heights) above which a piece is tried as touching digits, and above
# which it must hold at least two.
MAY_SPLIT = 0.6
MUST_SPLIT = 1.3
# Between the two, a logistic rule on ``_split_features`` decides, also for pieces joined earlier
# (a 1 and an 8 the merge step took for one digit). Fitted on the 15,177 pieces of that width in
# 3,000 generated fields (seeds 10 to 29, half of them with 30% touching digits and tight spacing),
# labelled by the generator's digit boxes, read by the default fast model (top=12). Cross-validated
# over 4 groups of seeds it splits 32 single digits and misses 75 of 412 pairs, where the rule
# before it (without the slivers' ink and the halves' widths) split 40 and missed 102.
SPLIT_WEIGHTS = (24.12, 2.59, 1.11, 1.22, -7.86, -7.67, 27.98, 3.12, -11.8, -13.95)
SPLIT_BIAS = -26.47


def _split_features(
    seg: Segment, unit: float, typical: float, confidence: Sequence[float], halves: tuple[Segment, Segment]
) -> list[float]:
    """What decides whether a piece holds two digits: its width and height in digit heights, its ink
    against the field's typical digit, whether it was joined from pieces, how confidently the whole
    and the halves of its best cut read (``confidence``: whole, left, right), the share of its ink
    that neither half keeps (a cut through one digit's strokes leaves slivers that ``_trim`` drops;
    two touching digits come apart whole), and the narrower and wider half's width in digit heights."""
    whole, left, right = confidence
    widths = sorted(h.width / unit for h in halves)
    return [
        seg.width / unit, seg.height / unit, seg.ink.sum() / max(typical, 1e-6), float(seg.merged),
        whole, min(left, right), math.sqrt(left * right),
        _cut_ink(seg, halves) / max(float(seg.ink.sum()), 1e-6), widths[0], widths[1],
    ]


def _logit(bias: float, weights: Sequence[float], features: Sequence[float]) -> float:
    """A fitted logistic rule's score: above 0 means yes (two digits in a piece; one digit in two)."""
    return bias + sum(w * f for w, f in zip(weights, features, strict=True))


def _split(seg: Segment, unit: float, classify: Classify | None, typical: float, depth: int = 0) -> list[Segment]:
    """Split a piece of touching digits, recursively, keeping the most confidently read cut.
    ``typical``: the ink of a typical digit of the field (see ``_split_features``)."""
    ratio = seg.width / max(unit, 1.0)
    if depth > 6 or ratio <= MAY_SPLIT or (classify is None and ratio <= MUST_SPLIT):
        return [seg]
    candidates = [p for p in (_split_parts(seg, m) for m in _cuts(seg.ink, unit)) if p is not None]
    if not candidates:
        return [seg]
    if classify is None:  # no classifier: the cut with the least ink across it
        best = min(range(len(candidates)), key=lambda i: _cut_ink(seg, candidates[i]))
    else:
        conf = _confidence(classify, [seg.ink] + [p.ink for pair in candidates for p in pair])
        whole, halves = conf[0], conf[1:].reshape(-1, 2)
        best = int((halves[:, 0] * halves[:, 1]).argmax())
        features = _split_features(seg, unit, typical, (whole, *halves[best]), candidates[best])
        if ratio <= MUST_SPLIT and _logit(SPLIT_BIAS, SPLIT_WEIGHTS, features) <= 0:
            return [seg]
    left, right = candidates[best]
    return _split(left, unit, classify, typical, depth + 1) + _split(right, unit, classify, typical, depth + 1)


def _cut_ink(seg: Segment, parts: tuple[Segment, Segment]) -> float:
    return float(seg.ink.sum() - parts[0].ink.sum() - parts[1].ink.sum())


def _digit_height(segs: list[Segment]) -> float:
    """The typical digit height: median height of the pieces holding most of the ink, but at least
    0.8 of the row they span (when every digit is broken into pieces, the pieces are short)."""
    mass = np.array([s.ink.sum() for s in segs])
    big = [s for s, m in zip(segs, mass, strict=True) if m >= 0.3 * mass.max()]
    row = max(s.box[3] for s in big) - min(s.box[1] for s in big)
    return max(float(np.median([s.height for s in big])), 0.8 * row)


def segment_field(image: Any, classify: Classify | None = None, name: str | None = None) -> list[Segment]:
    """Cut a field image into digits, left to right.

    ``classify`` (ink crops -> class probabilities) guides the merging of broken pieces and
    the splitting of touching digits; without it, geometry alone decides.
    """
    ink, mask = field_ink(image, name)
    labels, n = ndi.label(mask, _EIGHT)
    # Each component also takes the faint anti-aliased ink within 2 px of it.
    dist, (iy, ix) = ndi.distance_transform_edt(labels == 0, return_indices=True)
    grown = np.where((dist <= 2) & (ink > 0), labels[iy, ix], 0)
    segs = _segments_from_labels(ink, grown, range(1, n + 1))
    if not segs:
        raise ImageError(f"{name or 'The field image'} holds no digits; use a picture of the written digits.")
    unit = _digit_height(segs)

    # Specks first (so dirt is never merged into a digit), then pieces of one digit stacked
    # above one another and broken-off bars and tips, then what cannot be a digit: flat
    # leftovers of a rule, or pieces far above or below the row.
    segs = [s for s in segs if max(s.height, s.width) >= 0.25 * unit]
    segs = _absorb_fragments(_merge_stacked(segs, unit), unit)
    centre = float(np.median([(s.box[1] + s.box[3]) / 2 for s in segs if s.height >= 0.5 * unit]))
    segs = [
        s for s in segs
        if max(s.height, s.width) >= 0.3 * unit and s.height >= 0.25 * unit
        and abs((s.box[1] + s.box[3]) / 2 - centre) <= 0.9 * unit
    ]
    segs.sort(key=lambda s: s.box[0])
    if classify is not None:
        segs = _merge_broken(segs, unit, classify)
    typical = float(np.median([s.ink.sum() for s in segs]))
    out = [p for s in segs for p in _split(s, unit, classify, typical)]
    out.sort(key=lambda s: (s.box[0] + s.box[2]) / 2)
    if not out:
        raise ImageError(f"{name or 'The field image'} holds no digits; use a picture of the written digits.")
    return _rejoin(out, unit, classify) if classify is not None else out


def _merge_stacked(segs: list[Segment], unit: float) -> list[Segment]:
    """Merge pieces lying above one another (a broken 5's bar, a 4's detached arm)."""
    segs = sorted(segs, key=lambda s: s.box[0])
    merged = True
    while merged:
        merged = False
        for i in range(len(segs)):
            for j in range(i + 1, len(segs)):
                a, b = segs[i], segs[j]
                overlap = min(a.box[2], b.box[2]) - max(a.box[0], b.box[0])
                width = max(a.box[2], b.box[2]) - min(a.box[0], b.box[0])
                height = max(a.box[3], b.box[3]) - min(a.box[1], b.box[1])
                v_overlap = min(a.box[3], b.box[3]) - max(a.box[1], b.box[1])
                stacked = overlap >= 0.5 * min(a.width, b.width) and v_overlap <= 0.5 * min(a.height, b.height)
                if stacked and width <= 1.35 * unit and height <= 1.35 * unit:
                    segs[i] = _union(a, b)
                    del segs[j]
                    merged = True
                    break
            if merged:
                break
    return segs


def _box_gap(a: Segment, b: Segment) -> float:
    dx = max(a.box[0] - b.box[2], b.box[0] - a.box[2], 0)
    dy = max(a.box[1] - b.box[3], b.box[1] - a.box[3], 0)
    return math.hypot(dx, dy)


def _absorb_fragments(segs: list[Segment], unit: float) -> list[Segment]:
    """Pieces too short and too light to be a digit (a broken-off bar or tip) join their nearest
    neighbour when it is close, and are dropped when it is not."""
    if len(segs) < 2:
        return segs
    typical = float(np.median([s.ink.sum() for s in segs]))
    while True:
        frags = [
            i for i, s in enumerate(segs)
            if s.height < 0.3 * unit or (s.height < 0.55 * unit and s.ink.sum() < 0.35 * typical)
        ]
        if not frags or len(segs) < 2:
            return segs
        i = min(frags, key=lambda k: segs[k].ink.sum())
        frag = segs.pop(i)
        j = min(range(len(segs)), key=lambda k: _box_gap(frag, segs[k]))
        if _box_gap(frag, segs[j]) <= 0.25 * unit:
            segs[j] = _union(segs[j], frag)


def _merge_broken(segs: list[Segment], unit: float, classify: Classify) -> list[Segment]:
    """Join the pieces of a digit broken by a pen skip (the halves of a 0, the tips of a 3).

    Each piece, lightest first, is tried with its nearest neighbour. They join when the joined
    piece reads better than either alone, when they reach into each other's columns and joined
    still read as a digit, or when the piece is a light scrap that reads as nothing and joining
    it hardly changes how the neighbour reads. Two complete digits fail all three tests.
    """
    typical = float(np.median([s.ink.sum() for s in segs])) if segs else 0.0
    tried: set[tuple[Box, Box]] = set()
    changed = True
    while changed and len(segs) > 1:
        changed = False
        for i in sorted(range(len(segs)), key=lambda k: segs[k].ink.sum()):
            a = segs[i]
            j = min((k for k in range(len(segs)) if k != i), key=lambda k: _box_gap(a, segs[k]))
            b = segs[j]
            joined = _union(a, b)
            if (a.box, b.box) in tried or _box_gap(a, b) > 0.2 * unit or joined.width > 1.35 * unit:
                continue
            tried.add((a.box, b.box))
            pa, pb, pj = _confidence(classify, [a.ink, b.ink, joined.ink])
            overlap = min(a.box[2], b.box[2]) - max(a.box[0], b.box[0])
            interleaved = overlap >= 0.3 * min(a.width, b.width)
            scrap = a.ink.sum() < 0.6 * typical and pa < 0.6
            if (pj >= 0.6 and pj > max(pa, pb)) or (interleaved and pj >= 0.5) or (scrap and pj >= pb - 0.05):
                segs[min(i, j)] = joined
                del segs[max(i, j)]
                changed = True
                break
    return segs


def _pair_features(a: Segment, b: Segment, unit: float, typical: float, conf: Sequence[float]) -> list[float]:
    """What decides whether neighbours ``a`` (left) and ``b`` are one digit: whether their ink touches,
    how confidently each and their union read, and where they sit (gap, shared columns, sizes, ink)
    in digit heights."""
    pa, pb, pj = conf
    overlap = min(a.box[2], b.box[2]) - max(a.box[0], b.box[0])
    joined_w = max(a.box[2], b.box[2]) - min(a.box[0], b.box[0])
    small, big = sorted((a, b), key=lambda s: s.ink.sum())
    # Halves of one cut stroke (touching digits the splitter separated) touch each other.
    one_piece = ndi.label(_union(a, b).ink > 0, _EIGHT)[1] == 1
    return [
        float(one_piece),
        pj - max(pa, pb), pj - min(pa, pb), min(pa, pb), pj,
        overlap / unit, overlap / max(1, min(a.width, b.width)), joined_w / unit,
        small.height / unit, small.width / unit, small.ink.sum() / max(typical, 1e-6),
        big.height / unit, abs((a.box[1] + a.box[3]) - (b.box[1] + b.box[3])) / (2 * unit),
    ]


# Neighbouring pieces left after merging and splitting are joined when a logistic rule on
# ``_pair_features`` says they are one digit (a 4 whose stem came apart, a 0 split in two, a 1
# next to its faint serif). Fitted on the final pieces of 1,800 generated fields (seeds 1 to 9,
# default options, the default fast model), labelled by the generator's digit boxes; it found
# 56 of the 72 pieces of a broken digit there and joined 5 of 10,873 pairs of digits, cross-validated.
MERGE_WEIGHTS = (0.89, 1.3, 1.27, -1.04, 0.23, 4.68, 2.02, -6.91, -3.95, -1.29, -1.27, 0.15, 1.59)
MERGE_BIAS = 10.4


def _rejoin(segs: list[Segment], unit: float, classify: Classify) -> list[Segment]:
    """Join neighbours that read as one digit, the most certain pair first, until none does."""
    typical = float(np.median([s.ink.sum() for s in segs]))
    while len(segs) > 1:
        pairs = [(segs[i], segs[i + 1], _union(segs[i], segs[i + 1])) for i in range(len(segs) - 1)]
        conf = _confidence(classify, [s.ink for s in segs] + [j.ink for _, _, j in pairs])
        single, joined = conf[: len(segs)], conf[len(segs) :]
        scores = [
            _logit(
                MERGE_BIAS, MERGE_WEIGHTS,
                _pair_features(a, b, unit, typical, (single[i], single[i + 1], joined[i])),
            )
            for i, (a, b, _) in enumerate(pairs)
        ]
        best = int(np.argmax(scores))
        if scores[best] <= 0:
            break
        segs[best : best + 2] = [pairs[best][2]]
    return segs


# --- pictures -----------------------------------------------------------------------------------


def draw_reading(
    image: Any,
    boxes: Sequence[Box],
    labels: Sequence[str],
    confidences: Sequence[float],
    unsure: Sequence[bool],
    title: str = "",
    inputs: Sequence[np.ndarray] | None = None,
) -> Image.Image:
    """The field with a box and its reading over each digit (green: sure, orange: unsure) and,
    below it, the 28x28 input the model saw for each digit."""
    from digitlab.preprocess import open_image

    img = open_image(image).convert("RGB")
    zoom = max(1.0, 140.0 / img.height)
    img = img.resize((round(img.width * zoom), round(img.height * zoom)), Image.Resampling.LANCZOS)
    font = ImageFont.load_default(size=max(14, int(16 * zoom / 2)))
    small = ImageFont.load_default(size=13)
    head, tile = 30, 56
    rows = head + img.height + 34 + (tile + 8 if inputs is not None else 0)
    sheet = Image.new("RGB", (max(img.width, 20 + (tile + 6) * len(boxes)), rows + 22), "white")
    sheet.paste(img, (0, head))
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), title, fill=(0, 0, 0), font=ImageFont.load_default(size=16))
    for (x0, y0, x1, y1), lab, conf, uns in zip(boxes, labels, confidences, unsure, strict=True):
        colour = (230, 120, 0) if uns else (0, 150, 60)
        box = [x0 * zoom, head + y0 * zoom, x1 * zoom, head + y1 * zoom]
        draw.rectangle(box, outline=colour, width=2)
        draw.text((box[0], head + img.height + 2), lab, fill=colour, font=font)
        draw.text((box[0], head + img.height + 20), f"{conf:.0%}", fill=colour, font=small)
    if inputs is not None:
        y = head + img.height + 40
        draw.text((6, y + tile + 4), "what the model saw (28x28 inputs)", fill=(90, 90, 90), font=small)
        for k, a in enumerate(inputs):
            thumb = Image.fromarray(np.asarray(a, np.uint8)).resize((tile, tile), Image.Resampling.NEAREST)
            sheet.paste(thumb, (10 + k * (tile + 6), y))
    return sheet


# --- benchmark ----------------------------------------------------------------------------------


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions and substitutions of single characters)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def fields_benchmark(
    run: Any,
    n: int = 200,
    seed: int = 0,
    save_examples: str | Path | None = None,
    examples: int = 6,
    **options: Any,
) -> dict[str, Any]:
    """Generate ``n`` fields from MNIST *test* digits and read them with ``run``'s model.

    ``digit_accuracy`` is 1 - (edit distance / digits), so a missed or extra digit counts as an
    error; ``field_accuracy`` counts exact strings. ``run`` is a run folder/name or a Predictor.
    ``save_examples`` writes the first ``examples`` fields with their readings drawn as PNGs.
    """
    from digitlab.data import load_dataset
    from digitlab.predict import Predictor, read_field

    predictor = run if isinstance(run, Predictor) else Predictor.from_run(run)
    ds = load_dataset("mnist")
    rng = np.random.default_rng(seed)
    errors = digits = exact = count_ok = flagged = sure_fields = sure_right = 0
    failures = []
    t0 = time.perf_counter()
    for k in range(n):
        f = random_field(ds.test_images, ds.test_labels, rng, **options)
        reading = read_field(predictor, f.image)
        dist = edit_distance(f.text, reading.text)
        errors += dist
        digits += len(f.text)
        exact += dist == 0
        count_ok += len(reading.text) == len(f.text)
        unsure = any(d.unsure for d in reading.digits)
        flagged += unsure
        if not unsure:
            sure_fields += 1
            sure_right += dist == 0
        if dist and len(failures) < 20:
            failures.append({"index": k, "truth": f.text, "read": reading.text})
        if save_examples is not None and k < examples:
            out = Path(save_examples) / f"field_{k:03d}.png"
            from digitlab.utils import atomic_write

            sheet = reading.draw(f.image, title=f"truth {f.text}   read {reading.marked}")
            atomic_write(out, lambda p, s=sheet: s.save(p, format="PNG"))
    seconds = time.perf_counter() - t0
    return {
        "run": str(predictor.path) if predictor.path else None,
        "fields": n,
        "seed": seed,
        "digits": digits,
        "digit_accuracy": 1.0 - errors / max(digits, 1),
        "field_accuracy": exact / max(n, 1),
        "count_accuracy": count_ok / max(n, 1),
        "fields_flagged_unsure": flagged / max(n, 1),
        "accuracy_of_unflagged_fields": sure_right / sure_fields if sure_fields else None,
        "seconds_per_field": seconds / max(n, 1),
        "failures": failures,
    }
