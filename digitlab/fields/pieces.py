"""A field's pieces of ink: ``Segment`` (a box and its ink crop, what it is taken for) and the
small geometry both the segmentation (``segment``) and the separator rule (``separators``) use."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Classify = Callable[[list[np.ndarray]], np.ndarray]
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (ends exclusive)
EIGHT = np.ones((3, 3), bool)  # 8-connectivity


def crop_box(a: np.ndarray, level: float = 0.0) -> tuple[slice, slice]:
    rows, cols = np.nonzero((a > level).any(axis=1))[0], np.nonzero((a > level).any(axis=0))[0]
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)




@dataclass
class Segment:
    """One digit's ink: its box in the field and the crop of its own pixels (light on black)."""

    box: Box
    ink: np.ndarray
    merged: bool = False  # joined from pieces: not split again unless too wide for one digit
    kind: str = "digit"  # or the separator it is: ". , / -", or " " (a space: the box is the gap)
    confidence: float = 1.0  # a separator's or space's (a digit's comes from the classifier)
    # The probability that a space was missed just before this piece (a gap nearly wide enough).
    gap_doubt: float = 0.0
    # A separator's readings: each separator it may be, with its probability (``kind`` is the first).
    readings: tuple[tuple[str, float], ...] = ()
    # A separator candidate that may also be a digit (a slanted 1 for a slash, a 1 for a long comma):
    # the classifier reads it too, and the reader settles it with the format's layout.
    may_be_digit: bool = False

    @property
    def separator_odds(self) -> float:
        """For a separator candidate or a space: the probability that it is one (of its readings)."""
        return sum(q for _, q in self.readings) if self.readings else self.confidence

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]


def union(a: Segment, b: Segment) -> Segment:
    x0, y0 = min(a.box[0], b.box[0]), min(a.box[1], b.box[1])
    x1, y1 = max(a.box[2], b.box[2]), max(a.box[3], b.box[3])
    crop = np.zeros((y1 - y0, x1 - x0), np.float32)
    for s in (a, b):
        region = crop[s.box[1] - y0 : s.box[3] - y0, s.box[0] - x0 : s.box[2] - x0]
        np.maximum(region, s.ink, out=region)
    return Segment((x0, y0, x1, y1), crop, merged=True)


def box_gap(a: Segment, b: Segment) -> float:
    dx = max(a.box[0] - b.box[2], b.box[0] - a.box[2], 0)
    dy = max(a.box[1] - b.box[3], b.box[1] - a.box[3], 0)
    return math.hypot(dx, dy)


def ink_distance(a: Segment, b: Segment) -> float:
    """The smallest distance between the ink of two pieces (px), or infinity when their boxes are far."""
    if box_gap(a, b) > 20:
        return math.inf
    pa = np.argwhere(a.ink > 0) + (a.box[1], a.box[0])
    pb = np.argwhere(b.ink > 0) + (b.box[1], b.box[0])
    if not len(pa) or not len(pb):
        return math.inf
    d2 = ((pa[:, None, :] - pb[None, :, :]) ** 2).sum(axis=2)
    return float(np.sqrt(d2.min()))


def logit(bias: float, weights: Sequence[float], features: Sequence[float]) -> float:
    """A fitted logistic rule's score: above 0 means yes (two digits in a piece, one digit in two
    pieces, a space in a gap)."""
    return bias + sum(w * f for w, f in zip(weights, features, strict=True))


# Tracing for fitting the rules (``digitlab.fields.learn``): when a list, each decision appends
# (stage, box, features).
TRACE: list[tuple[str, Box, list[float]]] | None = None
