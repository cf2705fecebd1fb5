"""Separators: which pieces of a date or an amount are ``. , / -`` and where the spaces are.

``take_separators`` classifies each piece with a learned rule (``symbol_probabilities``: digit ink,
junk or a separator, fitted by ``digitlab.fields.learn``; the weights are ``symbols.json``) and
keeps the doubtful ones as candidates for the reader to settle with the format's layout
(``reading._choose``); ``with_spaces`` finds the spaces between digit groups.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from digitlab.errors import ImageError
from digitlab.fields import pieces
from digitlab.fields.pieces import Segment, ink_distance, logit

SEPARATOR_CHARS = ".,/-"


def _slant(seg: Segment) -> tuple[float, float]:
    """The ink's main direction in degrees from the vertical (positive: leaning right, like '/')
    and its thickness across that direction relative to its length (a straight stroke: small)."""
    ys, xs = np.nonzero(seg.ink > 0.3)
    if len(ys) < 3:
        return 0.0, 1.0
    w = seg.ink[ys, xs].astype(np.float64)
    cov = np.cov(np.stack([xs, ys]).astype(np.float64), aweights=w)
    values, vectors = np.linalg.eigh(cov)
    vx, vy = vectors[:, 1]
    if vy < 0:
        vx, vy = -vx, -vy
    angle = math.degrees(math.atan2(-vx, vy))  # '/': x falls as y (downwards) grows
    return angle, math.sqrt(max(values[0], 0.0) / max(values[1], 1e-9))


# A tall piece whose likeliest separator reading is a slash, with at least this probability, is
# a slash candidate: the reader settles it against the digit it may also be (a slanted 1).
SLASH_CANDIDATE = 0.2
# A tall piece that reads as a digit but has at least this probability of being a slash stays open
# to the date's layout (as long as it is still whole after merging and splitting).
SLASH_DOUBT = 0.01
# A piece shorter than a digit that reads as one but has at least this probability of a comma
# stays open to an amount's layout ("8,-" against "81").
COMMA_DOUBT = 0.2
# A piece is dropped as junk when the rule gives that at least this probability.
JUNK = 0.8
# ... and still a separator candidate (below even odds) when it has at least this probability of one.
JUNK_DOUBT = 0.1


def _piece_context(segs: list[Segment], unit: float) -> tuple[list[Segment], float, float, float] | None:
    """The pieces a row's digits are made of (taller than 0.55 digit heights), the row's top and
    baseline (medians of theirs) and the ink strength of its strokes (median 90th percentile)."""
    body = [s for s in segs if s.height >= 0.55 * unit]
    if not body:
        return None
    # With two pieces a median is their mean, and a long comma beside a lone digit ("5,-") would
    # pull the row down to half its height: of two pieces of unlike height the taller is the digit.
    core = body
    if len(body) == 2 and min(s.height for s in body) < 0.8 * max(s.height for s in body):
        core = [max(body, key=lambda s: s.height)]
    top = float(np.median([s.box[1] for s in core]))
    base = float(np.median([s.box[3] for s in core]))
    strength = float(np.median([np.percentile(s.ink[s.ink > 0], 90) for s in core]))
    return body, top, base, strength


def piece_features(seg: Segment, unit: float, top: float, base: float, strength: float,
                   body: Sequence[Segment]) -> list[float]:
    """What tells a separator from a digit's ink and from dirt (``symbol_probabilities``): the piece's
    size, where it sits in the row (0: the row's top, 1: its baseline), its slant and thickness
    across its direction, how much ink it holds and how dark it is against the row's strokes, and
    how near its ink comes to a digit's (in digit heights, at most 1)."""
    row = max(base - top, 1.0)
    h, w = seg.height / unit, seg.width / unit
    angle, thickness = _slant(seg)
    on = seg.ink > 0
    dark = float(np.percentile(seg.ink[on], 90)) / max(strength, 1e-6) if on.any() else 0.0
    others = [b for b in body if b is not seg]
    near = min((ink_distance(seg, b) for b in others), default=math.inf)
    # Where it stands between the digits: the gaps to the nearest digit ink left and right (a
    # separator has one on each side) and the share of its width a digit's columns cover.
    left = min((seg.box[0] - b.box[2] for b in others if b.box[0] < seg.box[0]), default=2 * unit) / unit
    right = min((b.box[0] - seg.box[2] for b in others if b.box[2] > seg.box[2]), default=2 * unit) / unit
    cover = max((min(seg.box[2], b.box[2]) - max(seg.box[0], b.box[0]) for b in others), default=0) / max(seg.width, 1)
    return [
        min(max(left, -1.0), 2.0), min(max(right, -1.0), 2.0), max(cover, 0.0),
        h, w, math.log((w + 0.02) / (h + 0.02)),
        ((seg.box[1] + seg.box[3]) / 2 - top) / row, (seg.box[3] - top) / row, (seg.box[1] - top) / row,
        angle / 30, thickness, float(seg.ink.sum()) / unit**2,
        float(seg.ink.sum()) / max(seg.height * seg.width, 1), dark, min(near / unit, 1.0),
    ]


# The classes of the separator rule (``symbol_probabilities``): part of a digit, not ink of the
# writer (dirt, a rule's or box's remnant, a printed sign), or a separator.
SYMBOL_CLASSES = ("digit", "junk", ".", ",", "/", "-")


@functools.lru_cache(maxsize=1)
def _symbol_rule() -> dict[str, np.ndarray] | None:
    path = Path(__file__).with_name("symbols.json")
    if not path.exists():
        return None
    spec = json.loads(path.read_text())
    return {k: np.asarray(spec[k], np.float64) for k in ("mean", "scale", "w1", "b1", "w2", "b2")}


def symbol_probabilities(features: np.ndarray) -> np.ndarray:
    """The separator rule's probabilities of ``SYMBOL_CLASSES`` for rows of ``piece_features``: a small
    network (one hidden layer) fitted on pieces of generated check fields (``digitlab.fields.learn``),
    stored as plain numbers in ``symbols.json`` beside this module."""
    rule = _symbol_rule()
    if rule is None:
        raise ImageError("The separator rule (digitlab/fields/symbols.json) is missing; reinstall digitlab.")
    x = (np.atleast_2d(features) - rule["mean"]) / rule["scale"]
    hidden = np.maximum(x @ rule["w1"] + rule["b1"], 0.0)
    logits = hidden @ rule["w2"] + rule["b2"]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


# How close (in digit heights) a mark's ink comes to a digit's for it to be one of its strokes; never
# under 2 px, the nearest that two separate pieces' ink can be.
PART_GAP = 0.08


def _part_of_digit(mark: Segment, keep: list[Segment], unit: float) -> bool:
    """Whether ``mark`` lies (70% of its width) within the columns of a piece of digit ink at least 0.3
    digit heights tall and touches its ink."""
    for b in keep:
        cover = min(mark.box[2], b.box[2]) - max(mark.box[0], b.box[0])
        if b.height >= 0.3 * unit and cover >= 0.7 * mark.width and ink_distance(mark, b) <= max(PART_GAP * unit, 2.0):
            return True
    return False


def _digit_centres(keep: list[Segment], unit: float) -> list[float]:
    """The x centres of the digits among the pieces kept as digit ink: a column of pieces above one
    another at least 0.55 digit heights tall. A 1 broken in two is one digit (its halves alone are
    too short, and the comma after it was taken for a speck before the first digit)."""
    columns: list[list[float]] = []  # x0, y0, x1, y1 of each column
    for s in sorted(keep, key=lambda s: s.box[0]):
        x0, y0, x1, y1 = s.box
        for c in columns:
            if min(c[2], x1) - max(c[0], x0) >= 0.5 * min(c[2] - c[0], x1 - x0):
                c[:] = [min(c[0], x0), min(c[1], y0), max(c[2], x1), max(c[3], y1)]
                break
        else:
            columns.append([x0, y0, x1, y1])
    return sorted((c[0] + c[2]) / 2 for c in columns if c[3] - c[1] >= 0.55 * unit)


def take_separators(segs: list[Segment], unit: float, allowed: str) -> tuple[list[Segment], list[Segment]]:
    """Split the pieces into digit ink and separators (of ``allowed``).

    Each piece is classified by ``symbol_probabilities`` over a digit's ink, junk (dropped) and
    the allowed separators; a slash is kept as a candidate from ``SLASH_CANDIDATE`` on (the reader
    settles it against the slanted 1 it could also be). A separator separates: one before the first
    digit or after the last is a speck (only a dash may end the field, after a decimal mark:
    ``250,-``), and two pieces side by side with no digit between them are one separator broken in two.
    """
    context = _piece_context(segs, unit)
    if context is None:
        return segs, []
    body, top, base, strength = context
    index = [0, 1] + [2 + SEPARATOR_CHARS.index(c) for c in SEPARATOR_CHARS if c in allowed]
    features = [piece_features(s, unit, top, base, strength, body) for s in segs]
    if pieces.TRACE is not None:
        pieces.TRACE.extend(("piece", s.box, f) for s, f in zip(segs, features, strict=True))
        if _symbol_rule() is None:  # fitting the rule for the first time
            return segs, []
    probs = symbol_probabilities(np.asarray(features))[:, index]
    keep, marks = [], []
    for s, p in zip(segs, probs / probs.sum(axis=1, keepdims=True), strict=True):
        chars = [SYMBOL_CLASSES[i] for i in index]
        seps = sorted(((c, float(q)) for c, q in zip(chars[2:], p[2:], strict=True)), key=lambda o: -o[1])
        tall = s.height >= 0.6 * unit
        if tall and "/" in chars and p[chars.index("/")] >= SLASH_CANDIDATE and seps[0][0] == "/":
            # A slash or the slanted 1 it may be: the reader settles it (``reading._choose``).
            marks.append(Segment(s.box, s.ink, False, "/", seps[0][1], may_be_digit=True))
        elif tall and "/" in chars and p[chars.index("/")] >= SLASH_DOUBT:
            # Most likely a digit, so it stays one; if it is still whole after merging and
            # splitting it becomes a slash candidate the date's layout may take (``segment_field``).
            s.readings = (("/", float(p[chars.index("/")])),)
            keep.append(s)
        elif seps and sum(q for _, q in seps) >= max(p[0], p[1]):
            seps = [(c, q) for c, q in seps if c != "/"] or seps  # not a slash: it would be a candidate
            marks.append(Segment(s.box, s.ink, False, seps[0][0], seps[0][1], readings=tuple(seps)))
        elif p[1] >= JUNK or p[0] < 0.5:
            # Dirt more likely than a digit; one that may be a separator is left to the layout (a
            # faint dot); the rest of the dirt is dropped, and a piece the rule is unsure of stays.
            seps = [(c, q) for c, q in seps if c != "/" and q >= JUNK_DOUBT]
            if seps:
                marks.append(Segment(s.box, s.ink, False, seps[0][0], seps[0][1], readings=tuple(seps)))
            elif p[1] < JUNK:
                keep.append(s)
        else:
            comma = p[chars.index(",")] if "," in chars else 0.0
            if comma >= COMMA_DOUBT and s.height < 0.8 * unit:
                # Most likely a digit (a long comma reads as a 1); if it stays whole it is a comma
                # candidate the amount's layout may take, like a slash candidate (``segment_field``).
                s.readings = ((",", float(comma)),)
            keep.append(s)
    # A mark within a digit's columns that touches its ink is a stroke of that digit: the foot of a 2
    # cut off by a pen skip, the middle of a 6 or a 9, read as dashes (`19-73` for `1993`).
    inside = [m for m in marks if m.kind != "/" and _part_of_digit(m, keep, unit)]
    if inside:
        marks = [m for m in marks if all(m is not i for i in inside)]
        keep += [Segment(m.box, m.ink) for m in inside]
    digits_x = _digit_centres(keep, unit)
    if not digits_x:
        return segs, []
    marks.sort(key=lambda m: m.box[0])
    out: list[Segment] = []
    for m in marks:
        x = (m.box[0] + m.box[2]) / 2
        before = sum(d < x for d in digits_x)
        if out and sum(d < (out[-1].box[0] + out[-1].box[2]) / 2 for d in digits_x) == before:
            prev = out[-1]
            # A slash candidate may be a digit (a 1 before a dot): never merged; nor is "250,-".
            if "/" not in (m.kind, prev.kind) and not (m.kind == "-" and prev.kind in ",."):
                out[-1] = max(prev, m, key=lambda s: s.confidence)
                continue
        out.append(m)
    after = [sum(d < (m.box[0] + m.box[2]) / 2 for d in digits_x) for m in out]
    kept = [m for m, k in zip(out, after, strict=True) if 0 < k < len(digits_x)]
    tail = [m for m, k in zip(out, after, strict=True) if k == len(digits_x)]
    last = max((b for b in keep if b.height >= 0.55 * unit), key=lambda b: b.box[0] + b.box[2], default=keep[-1])
    after_mark = any(m.kind in ",." for m in kept) or bool(last.readings and last.readings[0][0] == ",")
    if [m.kind for m in tail] in (["-"], [",", "-"], [".", "-"]) and (len(tail) == 2 or after_mark):
        kept += tail  # "250,-": no cents
    # A slash candidate out of place is a digit after all (a 1 opening the field).
    keep += [Segment(m.box, m.ink) for m in out if m.kind == "/" and all(m is not k for k in kept)]
    return keep, kept


# A space by a logistic rule on ``gap_features``, fitted (``digitlab.fields.learn``) on the 7,418 gaps
# between digits of 2,000 generated check fields, 307 of them spaces: two-fold cross-validated it
# takes 5 gaps for spaces and misses 11 spaces, where "twice the usual gap and 0.6 digit heights"
# took 26 and missed 15. From SPACE_CANDIDATE on a gap is a doubtful space the layout may take.
GAP_WEIGHTS = (10.4, 0.11, 10.29, 0.2)
GAP_BIAS = -12.81
SPACE_CANDIDATE = 0.1
# A date's separators are alike: beside a clear space, a gap the rule gives at least this is a space
# candidate too (`19 08 2039` read as `1908 2039`, its second space at 0.005), open to the layout
# (``reading._choose``), which takes it only when the text does not fit without it.
SPACE_BESIDE = 0.002


def gap_features(gap: float, usual: float) -> list[float]:
    """What tells a space from the gap between two digits (in digit heights): the gap, the field's
    usual gap between digits, their difference and their ratio."""
    return [gap, usual, gap - usual, gap / max(usual, 0.05)]


def with_spaces(segs: list[Segment], unit: float) -> list[Segment]:
    """Insert a space where the gap between two digits is a space by ``GAP_WEIGHTS`` (groups of
    thousands, ``21 11 2026``), a doubtful one (confidence under 0.5) from ``SPACE_CANDIDATE`` on, and
    from ``SPACE_BESIDE`` on in a field that already has a clear space."""
    # The gaps are between the pieces most likely digits: a slash or comma candidate more likely a 1
    # counts as one (the 1 of `24 10 2039` hid the space before it), and a mark more likely a speck is
    # looked through (a speck in the space of `24 03 1996`). A likely separator separates on its own.
    digit_like = [s.kind == "digit" or (s.may_be_digit and s.confidence < 0.5) for s in segs]
    speck = [not d and not s.may_be_digit and s.separator_odds < 0.5 for s, d in zip(segs, digit_like, strict=True)]
    pairs: list[tuple[int, int]] = []  # (a, b): b the next digit-like piece after a, specks between
    for i in range(len(segs) - 1):
        if not digit_like[i]:
            continue
        j = i + 1
        while j < len(segs) and speck[j]:
            j += 1
        if j < len(segs) and digit_like[j]:
            pairs.append((i, j))
    gaps = [(segs[j].box[0] - segs[i].box[2]) / unit for i, j in pairs]
    usual = float(np.median(gaps)) if len(gaps) >= 2 else 0.35
    odds: dict[int, float] = {}
    for (i, j), g in zip(pairs, gaps, strict=True):
        a, b = segs[i], segs[j]
        features = gap_features(g, usual)
        if pieces.TRACE is not None:
            pieces.TRACE.append(("gap", (a.box[2], a.box[1], b.box[0], b.box[3]), features))
        p = float(1.0 / (1.0 + math.exp(-max(min(logit(GAP_BIAS, GAP_WEIGHTS, features), 50.0), -50.0))))
        # A gap across a mark is a space only if the mark is no separator: so the layout may still
        # take the dot of `23.12.2005` instead.
        odds[i] = p * math.prod(1.0 - s.separator_odds for s in segs[i + 1:j])
    bar = SPACE_BESIDE if any(p >= 0.5 for p in odds.values()) else SPACE_CANDIDATE
    nxt = dict(pairs)
    out = []
    for i, a in enumerate(segs):
        out.append(a)
        p = odds.get(i)
        if p is None:
            continue
        b = segs[nxt[i]]
        if p >= bar:
            box = (a.box[2], min(a.box[1], b.box[1]), b.box[0], max(a.box[3], b.box[3]))
            out.append(Segment(box, np.zeros((0, 0), np.float32), False, " ", p))
        else:
            b.gap_doubt = p
    return out
