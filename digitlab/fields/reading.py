"""Reading a field: segment it (``digitlab.fields.segment``), classify the digits, parse the text.

``read_field(predictor, image, format=...)`` returns a ``FieldReading``: the text with its
separators, each symbol with its box (in the caller's pixels, whatever the image's size) and
confidence, the field's confidence (the product of its symbols'), the text read as a date, an
amount or digits (``digitlab.fields.formats``), and whether the field should go to a person
(``review``: the confidence is below the review threshold, or the text does not fit its format).
``read_files`` reads many image files with one loaded model, one record per file.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from digitlab.errors import ConfigError, ImageError
from digitlab.fields.formats import Parsed, check_format, parse, parse_amount, parse_date
from digitlab.fields.pieces import Box, Segment
from digitlab.fields.segment import segment_field
from digitlab.fields.separators import SLASH_DOUBT, SPACE_BESIDE
from digitlab.predict import Predictor, shift_tta_proba

# Field confidence below which a reading is marked for review unless the caller picks another
# operating point. A round default, not fitted: the confidence is a product of probabilities, so
# 0.9 asks every symbol to be clearly read. The benchmark's ``operating_points`` give the threshold
# reaching a target field error on generated fields (docs/real-images.md).
REVIEW_THRESHOLD = 0.9
# The separators each format looks for; a digits field has none (every piece is a digit), as before.
FORMAT_SEPARATORS = {"digits": "", "date": "./- ", "amount": ".,- "}


@dataclass
class SymbolReading:
    """One symbol of a field: a digit, a separator (``. , / -``) or a space between digit groups,
    with its confidence, box (x0, y0, x1, y1; a space's box is the gap) and the digit's top 3."""

    char: str
    kind: str  # "digit", "separator" or "space"
    confidence: float
    box: Box
    unsure: bool
    top: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "char": self.char,
            "kind": self.kind,
            "confidence": self.confidence,
            "box": list(self.box),
            "unsure": self.unsure,
        }
        if self.kind == "digit":
            out["digit"] = self.char
            out["top3"] = [{"class": c, "probability": p} for c, p in self.top]
        return out


# The name before separators existed: every symbol was a digit.
DigitReading = SymbolReading


@dataclass
class FieldReading:
    """A field read left to right. ``marked`` has '?' at the unsure digits."""

    text: str
    symbols: list[SymbolReading]
    threshold: float
    inputs: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 28, 28), np.uint8))
    parsed: Parsed = field(default_factory=lambda: Parsed("digits", None, "Nothing was read."))
    review_threshold: float = REVIEW_THRESHOLD
    size: tuple[int, int] = (0, 0)  # the image's width and height: the boxes' coordinates
    # The probability that the candidates left out (specks taken for dots at first) were not symbols
    # and that no gap nearly wide enough for a space was one.
    dropped: float = 1.0

    @property
    def digits(self) -> list[SymbolReading]:
        return [s for s in self.symbols if s.kind == "digit"]

    @property
    def marked(self) -> str:
        return "".join("?" if s.unsure else s.char for s in self.symbols)

    @property
    def unsure_positions(self) -> list[int]:
        return [i for i, s in enumerate(self.symbols) if s.unsure]

    @property
    def confidence(self) -> float:
        """Probability that every symbol is right (and nothing left out was one), if their errors were
        independent."""
        return float(self.dropped * np.prod([s.confidence for s in self.symbols])) if self.symbols else 0.0

    @property
    def format(self) -> str:
        return self.parsed.format

    @property
    def value(self) -> str | None:
        return self.parsed.value

    @property
    def valid(self) -> bool:
        return self.parsed.valid

    @property
    def review(self) -> bool:
        """Send to a person: not confident enough, or the text does not fit its format."""
        return self.confidence < self.review_threshold or not self.valid

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "marked": self.marked,
            **self.parsed.to_dict(),
            "confidence": self.confidence,
            "review": self.review,
            "review_threshold": self.review_threshold,
            "unsure_positions": self.unsure_positions,
            "threshold": self.threshold,
            "size": list(self.size),
            "symbols": [s.to_dict() for s in self.symbols],
            "digits": [s.to_dict() for s in self.digits],
        }

    def draw(self, image: Any, title: str | None = None) -> Image.Image:
        """A PIL picture of the field with boxes, readings and the model's inputs."""
        shown = [s for s in self.symbols if s.kind != "space"]
        verdict = f"{self.format} {self.value}" if self.valid else f"{self.format}: invalid"
        return draw_reading(
            image,
            [s.box for s in shown],
            [s.char for s in shown],
            [s.confidence for s in shown],
            [s.unsure for s in shown],
            title=title if title is not None else f"read {self.marked}  ({verdict}, confidence {self.confidence:.1%})",
            inputs=list(self.inputs),
        )


def _check_digit_model(predictor: Predictor) -> None:
    if predictor.target not in ("mnist", "digits") or not all(c.isdigit() for c in predictor.classes):
        raise ConfigError(
            f"The model of run '{predictor.path}' does not classify digits (classes {', '.join(predictor.classes[:3])}"
            "...); read fields with a model trained on mnist or digits."
        )


def _check_threshold(threshold: float | None) -> float:
    value = REVIEW_THRESHOLD if threshold is None else float(threshold)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"The review threshold {value} is not a probability; give a value from 0 to 1.")
    return value


def read_field(
    predictor: Predictor,
    image: Any,
    name: str | None = None,
    tta: bool = True,
    format: str = "digits",
    day_first: bool = True,
    threshold: float | None = None,
) -> FieldReading:
    """Read a field: segment it, classify each digit, parse the text as ``format``.

    ``threshold`` is the field confidence below which the reading is marked for review (default
    ``REVIEW_THRESHOLD``); digits below the predictor's own threshold are marked unsure. With
    ``tta`` the probabilities of each 28x28 digit are averaged over 1-pixel shifts
    (``shift_tta_proba``): a digit cut from a field is centred less reliably than a scanned MNIST
    digit (measured on 1,701 field digits with session 2's default model: 98.5% right alone, 98.9%
    with the shifts)."""
    from digitlab.preprocess import ink_to_input, open_image

    _check_digit_model(predictor)
    kind = check_format(format)
    review = _check_threshold(threshold)
    if name is None and isinstance(image, (str, Path)):
        name = f"Field image '{image}'"
    picture = open_image(image, name)

    def classify(crops: list[np.ndarray]) -> np.ndarray:
        return predictor.predict_proba(np.stack([ink_to_input(c, predictor.target) for c in crops]))

    segments = segment_field(picture, classify, name, FORMAT_SEPARATORS[kind])
    # Separator candidates that may be digits (a slanted 1, a long comma) are classified as digits too.
    to_read = [i for i, s in enumerate(segments) if s.kind == "digit" or s.may_be_digit]
    inputs = (np.stack([ink_to_input(segments[i].ink, predictor.target) for i in to_read]) if to_read
              else np.zeros((0, *predictor.input_shape[1:]), np.uint8))
    if not len(inputs):
        probs = np.zeros((0, len(predictor.classes)), np.float32)
    elif tta and not predictor.tta and inputs.shape[1:] == (28, 28):  # a TTA model does it itself
        probs = shift_tta_proba(predictor.predict_proba, inputs)
    else:
        probs = predictor.predict_proba(inputs)
    preds = dict(zip(to_read, predictor.explain_probs(probs), strict=True))
    choice = _choose(segments, preds, kind, day_first)
    symbols, shown, dropped = [], [], 1.0
    for i, s in enumerate(segments):
        box = tuple(int(v) for v in s.box)
        dropped *= 1.0 - s.gap_doubt
        what = choice.get(i, "keep")
        if what == "drop":
            dropped *= 1.0 - s.separator_odds
        elif s.kind == "digit" or what == "digit":
            p = preds[i]
            conf = p.confidence * (1.0 - s.confidence if s.may_be_digit else 1.0)
            symbols.append(SymbolReading(p.name, "digit", conf, box, conf < predictor.threshold, p.top))
            shown.append(to_read.index(i))
        else:
            char, conf = (s.kind, s.confidence) if what == "keep" else (what, dict(s.readings)[what])
            kind_name = "space" if char == " " else "separator"
            symbols.append(SymbolReading(char, kind_name, conf, box, conf < predictor.threshold))
    text = "".join(s.char for s in symbols)
    return FieldReading(text, symbols, predictor.threshold, inputs[shown] if shown else inputs[:0],
                        parse(text, kind, day_first), review, picture.size, dropped)


_DATE_SHAPE = re.compile(r"\d{1,2}([./\- ])\d{1,2}\1(\d{2}|\d{4})|\d{4}([./\- ])\d{1,2}\3\d{1,2}")
# Hypotheses tried at most: 2 ** MAX_DOUBTS.
MAX_DOUBTS = 10
DOUBT = 0.1


def _fits(text: str, kind: str, day_first: bool = True) -> int:
    """How well ``text`` fits its format: 3 for a valid date or amount written with separators,
    2 for a date written as digits alone (``21112026``), 1 for a date's shape with separators but a
    day that does not exist, 0 otherwise. A date's digits alone are a layout to fall back on, not
    to aim for: reaching them drops every separator seen."""
    if kind == "date":
        shaped = _DATE_SHAPE.fullmatch(text) is not None
        valid = parse_date(text, day_first=day_first).valid
        return 3 if shaped and valid else 2 if valid else int(shaped)
    if kind == "amount":
        return 3 * parse_amount(text).valid
    return 3


def _choose(segments: Sequence[Segment], preds: dict[int, Any], kind: str, day_first: bool = True
            ) -> dict[int, str]:
    """What each separator candidate is: kept ("keep"), not a separator after all ("drop": a speck;
    "digit": a slash candidate that is a slanted 1).

    Each candidate's own evidence gives it a probability (its geometric confidence ``p`` against
    ``1 - p``; for a slash against ``(1 - p)`` times the digit reading's confidence). The most
    likely choice is taken, except that when it does not fit the format's shape and another
    choice does, the most likely choice that fits wins: the layout of a date or an amount settles
    what the stroke alone cannot. The text is never changed beyond these hypotheses."""
    doubts = [i for i, s in enumerate(segments) if s.kind != "digit"]
    if not doubts:
        return {}

    def options(i: int) -> list[tuple[str, float]]:
        s = segments[i]
        if s.readings:  # each separator it may be, or a speck
            rest = 1.0 - sum(q for _, q in s.readings)
            return [("keep" if c == s.kind else c, q) for c, q in s.readings] + [("drop", max(rest, 1e-9))]
        p = min(max(s.confidence, 1e-9), 1.0 - 1e-9)
        other = ("digit", (1.0 - p) * preds[i].confidence) if s.may_be_digit else ("drop", 1.0 - p)
        return [("keep", p), other]

    def text_of(pick: dict[int, str]) -> str:
        out = []
        for i, s in enumerate(segments):
            what = pick.get(i, "keep")
            if s.kind == "digit" or what == "digit":
                out.append(preds[i].name)
            elif what == "keep":
                out.append(s.kind)
            elif what != "drop":
                out.append(what)
        return "".join(out)

    alone = {i: max(options(i), key=lambda o: o[1])[0] for i in doubts}

    # Only a reading that keeps at least DOUBT of the odds is open to the layout: a clear dot is
    # never dropped to make a text fit (it makes the text invalid instead). A slash and the 1 it
    # may be are settled by the date's layout from SLASH_DOUBT on: a date's separators are alike. So
    # are its spaces: a gap beside a clear space may be taken for one from SPACE_BESIDE on (never the
    # other way: a clear space is not dropped).
    def open_options(i: int) -> list[tuple[str, float]]:
        opts = options(i)
        total = sum(q for _, q in opts)
        bar = SLASH_DOUBT if segments[i].may_be_digit else DOUBT
        space = segments[i].kind == " "
        return [o for o in opts if o[1] / total >= bar or (space and o[0] == "keep" and o[1] / total >= SPACE_BESIDE)]

    open_ = [i for i in doubts if len(open_options(i)) > 1]
    if kind not in ("date", "amount") or not open_ or len(open_) > MAX_DOUBTS:
        return alone
    fit_alone = _fits(text_of(alone), kind, day_first)
    if fit_alone == 3:
        return alone
    # The most likely choice among those that fit best.
    best, best_key = alone, (fit_alone, -math.inf)
    for combo in itertools.product(*(open_options(i) for i in open_)):
        score = sum(math.log(max(q, 1e-12)) for _, q in combo)
        if (3, score) <= best_key:
            continue
        pick = {**alone, **{i: what for i, (what, _) in zip(open_, combo, strict=True)}}
        fit = _fits(text_of(pick), kind, day_first)
        if fit and (fit, score) > best_key:
            best, best_key = pick, (fit, score)
    return best


# --- many files -------------------------------------------------------------------------------


@dataclass
class FileReading:
    """The outcome for one file: its reading, or the sentence saying why it could not be read."""

    source: str
    reading: FieldReading | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.reading is not None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.source}
        if self.reading is not None:
            out.update(self.reading.to_dict())
        out["error"] = self.error
        return out


def read_files(
    predictor: Predictor,
    sources: Iterable[str | Path],
    format: str = "digits",
    day_first: bool = True,
    threshold: float | None = None,
) -> Iterator[FileReading]:
    """Read image files one by one with one loaded model, yielding a record per file in order; a
    file that cannot be read (damaged, not an image, blank) yields its error sentence instead of
    stopping the others. Options are checked before the first file is opened."""
    _check_digit_model(predictor)
    check_format(format)
    _check_threshold(threshold)
    for src in sources:
        try:
            yield FileReading(str(src), read_field(predictor, src, format=format, day_first=day_first,
                                                   threshold=threshold))
        except ImageError as exc:
            yield FileReading(str(src), error=str(exc))


def expand_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given (whatever their suffix, so a non-image is reported, not skipped); folders
    replaced by every file inside them, recursively, sorted. Hidden files are left out."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and not any(
                part.startswith(".") for part in f.relative_to(p).parts))
            if not files:
                raise ImageError(f"Folder '{p}' holds no files; give a folder of field images.")
            out.extend(files)
        else:
            out.append(p)
    return out


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
    """The field with a box and its reading over each symbol (green: sure, orange: unsure) and,
    below it, the 28x28 input the model saw for each digit. ``boxes`` are in the image's pixels."""
    from digitlab.preprocess import open_image

    img = open_image(image).convert("RGB")
    zoom = max(1.0, 140.0 / img.height)
    img = img.resize((round(img.width * zoom), round(img.height * zoom)), Image.Resampling.LANCZOS)
    font = ImageFont.load_default(size=max(14, int(16 * zoom / 2)))
    small = ImageFont.load_default(size=13)
    head, tile = 30, 56
    n_inputs = len(inputs) if inputs is not None else 0
    rows = head + img.height + 34 + (tile + 8 if n_inputs else 0)
    sheet = Image.new("RGB", (max(img.width, 20 + (tile + 6) * n_inputs), rows + 22), "white")
    sheet.paste(img, (0, head))
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), title, fill=(0, 0, 0), font=ImageFont.load_default(size=16))
    for (x0, y0, x1, y1), lab, conf, uns in zip(boxes, labels, confidences, unsure, strict=True):
        colour = (230, 120, 0) if uns else (0, 150, 60)
        box = [x0 * zoom, head + y0 * zoom, x1 * zoom, head + y1 * zoom]
        draw.rectangle(box, outline=colour, width=2)
        draw.text((box[0], head + img.height + 2), lab, fill=colour, font=font)
        draw.text((box[0], head + img.height + 20), f"{conf:.0%}", fill=colour, font=small)
    if n_inputs:
        y = head + img.height + 40
        draw.text((6, y + tile + 4), "what the model saw (28x28 inputs)", fill=(90, 90, 90), font=small)
        for k, a in enumerate(inputs or []):
            thumb = Image.fromarray(np.asarray(a, np.uint8)).resize((tile, tile), Image.Resampling.NEAREST)
            sheet.paste(thumb, (10 + k * (tile + 6), y))
    return sheet
