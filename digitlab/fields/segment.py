"""Segmentation: a field image -> one piece of ink per symbol, left to right.

Printed rule lines are removed (strokes crossing them are kept), connected components are found,
separators are taken out (``separators``), pieces of a broken digit are merged, and touching
digits are split along the least-ink path,
choosing the cut whose two halves the classifier recognises most confidently. This module only
sees a classifier as a function ``classify(list of ink crops) -> probabilities (N, K)``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from digitlab.errors import ImageError
from digitlab.fields import pieces
from digitlab.fields.pieces import EIGHT, Box, Classify, Segment, box_gap, crop_box, logit, union
from digitlab.fields.separators import SEPARATOR_CHARS, take_separators, with_spaces
from digitlab.preprocess import WORK_SIDE, extract_ink, load_grey, open_image

__all__ = ["SEPARATOR_CHARS", "Box", "Classify", "Segment", "crop_box", "field_ink", "reduction", "remove_frame",
           "remove_rules", "segment_field"]


# --- segmentation ---------------------------------------------------------------------------------


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
    labels, _ = ndi.label((mask & ~removed) | stroke, EIGHT)
    anchored = np.unique(labels[mask & ~line])
    return stroke & np.isin(labels, anchored[anchored > 0])


# A box's side spans the picture's height less the box's margins: in a field cut tight around a
# small box (39 px tall, 3 px margins) that is 84.6%, so 85% missed it and read the side as a 1.
# A handwritten stroke stays under about 70% (a digit is at most 1.2 digit heights; the margins
# add at least 0.5).
FRAME_SIDE = 0.8


def remove_frame(ink: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove a printed box's sides, and whatever is printed outside them (a currency sign before
    an amount box): only the ink inside the box is the writer's.

    A side is a column holding one vertical run of ink over 80% of the picture's height (``FRAME_SIDE``); no
    handwritten stroke is that straight and that long in a field cut around its box. It takes a
    side in each half of the picture to make a box (a lone line is left alone). The box's top and
    bottom are rule lines (``remove_rules``).
    """
    h, w = mask.shape
    runs, _ = ndi.label(mask, structure=np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], bool))
    lengths = np.bincount(runs.ravel())
    lengths[0] = 0
    side = (lengths[runs] >= FRAME_SIDE * h) & mask
    cols = np.flatnonzero(side.any(axis=0))
    left, right = cols[cols < w / 2], cols[cols >= w / 2]
    if len(left) == 0 or len(right) == 0:
        return ink, mask
    # Inner dividers (a date box's DD | MM | YYYY cells) go with their rims; the outer sides
    # also cut off what lies beyond them.
    rim = ndi.binary_dilation(side, structure=np.ones((1, 5), bool))
    ink, mask = np.where(rim, 0.0, ink).astype(np.float32), mask & ~rim
    # The outer sides: the leftmost side's run of columns, and the rightmost's.
    keep = np.ones(w, bool)
    lo = left[0] + int(np.argmax(np.diff(np.r_[left, w]) > 1))
    hi = right[-1] - int(np.argmax(np.diff(np.r_[-1, right])[::-1] > 1))
    keep[: min(w, lo + 3)] = False  # up to 2 px beyond a side: its anti-aliased edge
    keep[max(0, hi - 2) :] = False
    if not keep.any():
        return ink, mask
    return np.where(keep[None, :], ink, 0.0).astype(np.float32), mask & keep[None, :]


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
    ink, weak = remove_frame(ink, (ink > WEAK_INK) | strong)
    ink, weak = remove_rules(ink, weak)
    labels, n = ndi.label(weak, EIGHT)
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


def _trim(seg: Segment) -> Segment | None:
    """Shrink a segment to its ink, dropping slivers a cut left behind (< 8% of the ink)."""
    m = seg.ink > 0.3
    labels, n = ndi.label(m, EIGHT)
    if n == 0:
        return None
    mass = ndi.sum(seg.ink, labels, index=np.arange(1, n + 1))
    keep = np.isin(labels, 1 + np.flatnonzero(mass >= 0.08 * mass.sum()))
    keep = ndi.binary_dilation(keep, iterations=2) & (seg.ink > 0)
    ink = np.where(keep, seg.ink, 0.0).astype(np.float32)
    if not (ink > 0).any():
        return None
    sy, sx = crop_box(ink)
    x0, y0 = seg.box[0], seg.box[1]
    return Segment((x0 + sx.start, y0 + sy.start, x0 + sx.stop, y0 + sy.stop), ink[sy, sx])


def _cuts(crop: np.ndarray, unit: float, holes: np.ndarray, count: int = 15) -> list[np.ndarray]:
    """Candidate cuts of ``crop`` into left and right: 'left' masks along least-ink paths.

    Each candidate starts from a column between 0.2 and w - 0.2 digit heights and follows the
    cheapest top-to-bottom path (one column sideways per row at most) within a band around it,
    so slanted and touching strokes are cut where they are thinnest; where the crop has loops,
    the same again with a loop's inside costing as much as ink.
    """
    h, w = crop.shape
    lo, hi = max(2, int(0.2 * unit)), w - max(2, int(0.2 * unit))
    if hi <= lo:
        return []
    band = max(2, int(0.2 * unit))
    cost = crop + 0.05  # a little cost per step keeps paths straight through empty space
    costs = [cost]
    if holes.any():  # ``_holes(crop)``
        # The cheapest path often runs through a loop (two thin crossings) rather than along the
        # contact of two round digits, where the strokes run parallel to the cut: paths that pay
        # for crossing a hole as for ink are tried too.
        costs.append(cost + holes)
    paths, masks = set(), []
    starts = np.unique(np.linspace(lo, hi, num=min(count, hi - lo + 1)).round().astype(int))
    for path_cost, x in itertools.product(costs, starts):
        a, b = max(0, x - band), min(w, x + band + 1)
        acc = path_cost[:, a:b].copy()
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
# (a 1 and an 8 the merge step took for one digit), fitted with ``digitlab.fields.learn`` on decisions
# in generated check fields and rows of digits (half of them with 30% touching digits), labelled by the
# generator's boxes. Session 11 added the log-odds of the three confidences and the halves' gain over
# the whole: in probabilities 0.91 and 0.9999 are close, and a 1 touching an 8 reads as an 8 at 0.91
# while its halves read at 0.9999. It is fitted on the decisions of both the bundled reader (18,007)
# and a default `digitlab train` model (18,322) over the same fields, so that a user's run reads fields
# as well: a rule fitted on the reader's alone split 342 single digits of the default model's. Errors
# on the reader's / the default model's decisions: the previous rule (ten features, the reader's
# decisions only) 128 / 139; this one, five-fold cross-validated, 104 / 120 (docs/real-images.md).
SPLIT_WEIGHTS = (24.88, 3.9, 0.5, 0.75, -0.01, 2.38, 2.64, -0.41, -10.74, -14.52, -0.96, -0.81, 1.41, 0.15)
SPLIT_BIAS = -20.94


def _split_features(
    seg: Segment, unit: float, typical: float, confidence: Sequence[float], halves: tuple[Segment, Segment]
) -> list[float]:
    """What decides whether a piece holds two digits: its width and height in digit heights, its ink
    against the field's typical digit, whether it was joined from pieces, how confidently the whole
    and the halves of its best cut read (``confidence``: whole, left, right), the share of its ink
    that neither half keeps (a cut through one digit's strokes leaves slivers that ``_trim`` drops;
    two touching digits come apart whole), the narrower and wider half's width in digit heights, and
    the log-odds of the three confidences and of the halves' gain over the whole."""
    whole, left, right = confidence
    widths = sorted(h.width / unit for h in halves)
    worst, mean = min(left, right), math.sqrt(left * right)
    return [
        seg.width / unit, seg.height / unit, seg.ink.sum() / max(typical, 1e-6), float(seg.merged),
        whole, worst, mean,
        _cut_ink(seg, halves) / max(float(seg.ink.sum()), 1e-6), widths[0], widths[1],
        _log_odds(whole), _log_odds(worst), _log_odds(mean), _log_odds(worst) - _log_odds(whole),
    ]


def _log_odds(p: float) -> float:
    p = min(max(float(p), 1e-4), 1.0 - 1e-4)
    return math.log(p / (1.0 - p))


def _split(seg: Segment, unit: float, classify: Classify | None, typical: float, depth: int = 0) -> list[Segment]:
    """Split a piece of touching digits, recursively, keeping the most confidently read cut.
    ``typical``: the ink of a typical digit of the field (see ``_split_features``)."""
    ratio = seg.width / max(unit, 1.0)
    if depth > 6 or ratio <= MAY_SPLIT or (classify is None and ratio <= MUST_SPLIT):
        return [seg]
    loops = _holes(seg.ink)
    candidates = [p for p in (_split_parts(seg, m) for m in _cuts(seg.ink, unit, loops)) if p is not None]
    if not candidates:
        return [seg]
    if classify is None:  # no classifier: the cut with the least ink across it
        best = min(range(len(candidates)), key=lambda i: _cut_ink(seg, candidates[i]))
    else:
        conf = _confidence(classify, [seg.ink] + [p.ink for pair in candidates for p in pair])
        whole, halves = conf[0], conf[1:].reshape(-1, 2)
        # Only among the cuts that open the fewest loops: two touching digits keep their holes,
        # a cut through a 0's hole leaves a 'C' that reads confidently as 6 (and '0' + '8' as 6 8).
        lost = np.array([loops.sum() - _holes(a.ink).sum() - _holes(b.ink).sum() for a, b in candidates])
        keep = lost <= lost.min() + HOLE_SLACK * unit * unit
        best = int(np.where(keep, halves[:, 0] * halves[:, 1], -1.0).argmax())
        features = _split_features(seg, unit, typical, (whole, *halves[best]), candidates[best])
        if pieces.TRACE is not None and ratio <= MUST_SPLIT:
            pieces.TRACE.append(("split", seg.box, features))
        if ratio <= MUST_SPLIT and logit(SPLIT_BIAS, SPLIT_WEIGHTS, features) <= 0:
            return [seg]
    left, right = candidates[best]
    return _split(left, unit, classify, typical, depth + 1) + _split(right, unit, classify, typical, depth + 1)


# How much more loop area (in square digit heights) a cut may open than the cut opening the least:
# the lens between two overlapping 0s is small, a digit's own hole is not.
HOLE_SLACK = 0.02


def _holes(ink: np.ndarray) -> np.ndarray:
    """The background enclosed by ink: the holes of 0, 6, 8, 9 and closed 4s."""
    mask = ink > 0.3
    return ndi.binary_fill_holes(mask) & ~mask


def _cut_ink(seg: Segment, parts: tuple[Segment, Segment]) -> float:
    return float(seg.ink.sum() - parts[0].ink.sum() - parts[1].ink.sum())


def _digit_height(segs: list[Segment]) -> float:
    """The typical digit height: median height of the pieces holding most of the ink, but at least
    0.8 of the row they span (when every digit is broken into pieces, the pieces are short)."""
    mass = np.array([s.ink.sum() for s in segs])
    big = [s for s, m in zip(segs, mass, strict=True) if m >= 0.3 * mass.max()]
    row = max(s.box[3] for s in big) - min(s.box[1] for s in big)
    return max(float(np.median([s.height for s in big])), 0.8 * row)


def reduction(size: tuple[int, int]) -> int:
    """The factor by which ``preprocess.load_grey`` shrinks a picture of ``size`` (width, height)."""
    return max(1, math.ceil(max(size) / WORK_SIDE))


def segment_field(
    image: Any, classify: Classify | None = None, name: str | None = None, separators: str = ""
) -> list[Segment]:
    """Cut a field image into symbols, left to right; boxes are in ``image``'s own pixels.

    ``classify`` (ink crops -> class probabilities) guides the merging of broken pieces and
    the splitting of touching digits; without it, geometry alone decides. ``separators`` lists
    the separators to look for (any of ``. , / -`` and the space); a piece taken for one is not a
    digit (``Segment.kind`` is its character). With none, every piece is a digit.
    """
    picture = open_image(image, name)
    factor = reduction(picture.size)
    ink, mask = field_ink(picture, name)
    labels, n = ndi.label(mask, EIGHT)
    # Each component also takes the faint anti-aliased ink within 2 px of it.
    dist, (iy, ix) = ndi.distance_transform_edt(labels == 0, return_indices=True)
    grown = np.where((dist <= 2) & (ink > 0), labels[iy, ix], 0)
    segs = _segments_from_labels(ink, grown, range(1, n + 1))
    if not segs:
        raise ImageError(f"{name or 'The field image'} holds no digits; use a picture of the written digits.")
    unit = _digit_height(segs)

    marks: list[Segment] = []
    if set(separators) - {" "}:
        segs, marks = take_separators(segs, unit, separators)
    # Specks first (so dirt is never merged into a digit; a crumb almost touching a digit's ink is
    # taken as the faint end of its stroke), then pieces of one digit stacked
    # above one another and broken-off bars and tips, then what cannot be a digit: flat
    # leftovers of a rule, or pieces far above or below the row.
    segs = _attach_crumbs(segs, unit, classify)
    segs = _absorb_fragments(_merge_stacked(segs, unit), unit)
    tall = [(s.box[1] + s.box[3]) / 2 for s in segs if s.height >= 0.5 * unit]
    if not tall:
        raise ImageError(f"{name or 'The field image'} holds no digits; use a picture of the written digits.")
    centre = float(np.median(tall))
    segs = [
        s for s in segs
        if max(s.height, s.width) >= 0.3 * unit and s.height >= 0.25 * unit
        and abs((s.box[1] + s.box[3]) / 2 - centre) <= 0.9 * unit
    ]
    segs.sort(key=lambda s: s.box[0])
    if classify is not None:
        segs = _merge_broken(segs, unit, classify)
    typical = float(np.median([s.ink.sum() for s in segs])) if segs else 0.0
    out = [p for s in segs for p in _split(s, unit, classify, typical)]
    out.sort(key=lambda s: (s.box[0] + s.box[2]) / 2)
    if not out:
        raise ImageError(f"{name or 'The field image'} holds no digits; use a picture of the written digits.")
    if classify is not None:
        out = _rejoin(out, unit, classify)
    # A digit that might be a slash or a comma (``take_separators``) and came through whole is a candidate.
    out = [Segment(s.box, s.ink, s.merged, s.readings[0][0], s.readings[0][1], may_be_digit=True)
           if s.kind == "digit" and s.readings else s for s in out]
    out = sorted(out + marks, key=lambda s: (s.box[0] + s.box[2]) / 2)
    if " " in separators:
        out = with_spaces(out, unit)
    return [_to_caller(s, factor, picture.size) for s in out]


def _to_caller(seg: Segment, factor: int, size: tuple[int, int]) -> Segment:
    """``seg`` with its box in the caller's pixels (the segmentation ran on a copy ``factor`` times
    smaller; its ink crop stays as it is, at the working size)."""
    if factor == 1:
        return seg
    x0, y0, x1, y1 = seg.box
    box = (x0 * factor, y0 * factor, min(size[0], x1 * factor), min(size[1], y1 * factor))
    return Segment(box, seg.ink, seg.merged, seg.kind, seg.confidence, seg.gap_doubt, seg.readings, seg.may_be_digit)


# A crumb (a piece under a quarter of a digit height) whose ink comes this close (in digit heights) to a
# larger piece may belong to it: the faint arm of a 4 that the ink mask cut off its stem, which dropped
# as a speck turned `74,00` into `71,00`. Dirt comes as close (1.4-2.8 px against 2.0-2.2 px for the
# arms in the selection seeds), so the crumb joins only when the piece then reads clearly more
# confidently (the two arms: 0.49 -> 0.87 and 0.47 -> 0.93; three specks: 1.00 -> 0.50, 0.70 -> 0.50,
# 0.997 -> 0.998, the last then split a 0 in two).
CRUMB_GAP = 0.08
CRUMB_GAIN = 0.1


def _attach_crumbs(segs: list[Segment], unit: float, classify: Classify | None) -> list[Segment]:
    """Drop pieces too small to be a digit, except a crumb nearly touching a larger piece that reads
    clearly more confidently with it (without ``classify`` every crumb goes)."""
    keep = [s for s in segs if max(s.height, s.width) >= 0.25 * unit]
    if not keep or classify is None:
        return keep
    for s in segs:
        if max(s.height, s.width) >= 0.25 * unit or s.ink.sum() <= 0:
            continue
        d = [pieces.ink_distance(s, k) for k in keep]
        j = int(np.argmin(d))
        if d[j] > CRUMB_GAP * unit:
            continue
        joined = union(keep[j], s)
        alone, together = _confidence(classify, [keep[j].ink, joined.ink])
        if together >= alone + CRUMB_GAIN:
            keep[j] = dataclasses.replace(keep[j], box=joined.box, ink=joined.ink)
    return keep


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
                    segs[i] = union(a, b)
                    del segs[j]
                    merged = True
                    break
            if merged:
                break
    return segs


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
        j = min(range(len(segs)), key=lambda k: box_gap(frag, segs[k]))
        if box_gap(frag, segs[j]) <= 0.25 * unit:
            segs[j] = union(segs[j], frag)


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
            j = min((k for k in range(len(segs)) if k != i), key=lambda k: box_gap(a, segs[k]))
            b = segs[j]
            joined = union(a, b)
            if (a.box, b.box) in tried or box_gap(a, b) > 0.2 * unit or joined.width > 1.35 * unit:
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
    one_piece = ndi.label(union(a, b).ink > 0, EIGHT)[1] == 1
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
        pairs = [(segs[i], segs[i + 1], union(segs[i], segs[i + 1])) for i in range(len(segs) - 1)]
        conf = _confidence(classify, [s.ink for s in segs] + [j.ink for _, _, j in pairs])
        single, joined = conf[: len(segs)], conf[len(segs) :]
        scores = [
            logit(
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
