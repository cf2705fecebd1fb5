"""What a field's text means: a date, an amount, or plain digits.

The parsers take the reader's text (digits, the separators ``. , / -`` and spaces) and say whether
it fits the format. A text that does not fit is reported invalid with the reason; it is never
"fixed" (a digit dropped, a separator guessed), because a wrong date or amount that looks valid
is worse than one sent to a person.

- **date**: ``21.11.2026``, ``21/11/26``, ``21-11-2026``, ``2026-11-21`` (a four-digit first group
  is a year: year, month, day), ``21 11 2026``, and the digits alone as a date box holds them
  (``211126``, ``21112026``). Day or month first as asked (``day_first``); the two separators must
  be the same. A two-digit year is 1969-2068 (the POSIX ``%y`` rule: 69-99 are 19xx, 00-68 20xx).
  Valid only when the date exists (no 31.04, 29.02 only in leap years) and its year is within
  ``YEARS`` (1900-2099: a check dated 1798 or 2237 is a misread year, not a date to pay).
- **amount**: at most 2 decimals, so the decimal mark is the layout's last separator when 1 or 2
  digits (or ``-``/``--``: no cents) follow it; the other marks group thousands, in groups of
  exactly 3 digits: ``1.250,00``, ``1,250.00``, ``1 250,00``, ``1250,5``, ``250,-``, ``1.250``
  (3 digits after the only mark: thousands, 1250). The thousands mark and the decimal mark
  differ; a slash never belongs in an amount.
- **digits**: the digits alone; the text must hold at least one digit and nothing but digits and
  spaces.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal

from digitlab.errors import ConfigError

FORMATS = ("digits", "date", "amount")
YEARS = (1900, 2099)  # the years a date may have (inclusive); ``parse_date(years=)`` for others
SEPARATORS = ".,/-"


@dataclass(frozen=True)
class Parsed:
    """A text read as a format: ``value`` is the ISO date, the decimal amount as a string, or the
    digits; ``None`` with ``reason`` (one sentence) when the text does not fit."""

    format: str
    value: str | None
    reason: str | None = None

    @property
    def valid(self) -> bool:
        return self.value is not None

    def to_dict(self) -> dict[str, object]:
        return {"format": self.format, "value": self.value, "valid": self.valid, "reason": self.reason}


def check_format(format: str) -> str:
    key = str(format).lower()
    if key not in FORMATS:
        raise ConfigError(f"Unknown field format '{format}'; choose digits, date or amount.")
    return key


def parse(text: str, format: str = "digits", day_first: bool = True) -> Parsed:
    """Read ``text`` as ``format`` (digits, date or amount)."""
    kind = check_format(format)
    if kind == "date":
        return parse_date(text, day_first=day_first)
    if kind == "amount":
        return parse_amount(text)
    return parse_digits(text)


def parse_digits(text: str) -> Parsed:
    digits = text.replace(" ", "")
    if not digits:
        return Parsed("digits", None, "The field holds no digits.")
    if not digits.isdigit():
        return Parsed("digits", None, f"'{text}' holds separators; a digits field holds digits only.")
    return Parsed("digits", digits)


def _year(group: str) -> int:
    y = int(group)
    if len(group) == 2:
        return 1900 + y if y >= 69 else 2000 + y
    return y


def parse_date(text: str, day_first: bool = True, years: tuple[int, int] = YEARS) -> Parsed:
    """``text`` as a calendar date (ISO ``YYYY-MM-DD``); see the module's docstring for the layouts."""
    s = text.strip()
    groups = re.split(r"([./\- ]+)", s)
    numbers, marks = groups[0::2], groups[1::2]
    if len(numbers) == 1:
        digits = numbers[0]
        if not digits.isdigit() or len(digits) not in (6, 8):
            return Parsed("date", None, f"'{text}' is not a date: without separators a date has 6 or 8 digits.")
        numbers = [digits[:2], digits[2:4], digits[4:]]
        marks = ["", ""]
    elif len(numbers) != 3 or not all(n.isdigit() for n in numbers):
        return Parsed("date", None, f"'{text}' is not a date: a date has three groups of digits.")
    elif len(set(marks)) != 1 or len(marks[0]) != 1:
        return Parsed("date", None, f"'{text}' mixes separators; a date uses the same one twice.")
    if len(numbers[0]) == 4:  # year first (ISO and its cousins)
        y, m, d = numbers
        if not (1 <= len(m) <= 2 and 1 <= len(d) <= 2):
            return Parsed("date", None, f"'{text}' is not a date: year first needs 1-2 digit month and day.")
    else:
        first, second, y = numbers
        if not (1 <= len(first) <= 2 and 1 <= len(second) <= 2 and len(y) in (2, 4)):
            return Parsed("date", None, f"'{text}' is not a date: day and month have 1-2 digits, the year 2 or 4.")
        d, m = (first, second) if day_first else (second, first)
    try:
        value = dt.date(_year(y), int(m), int(d))
    except ValueError:
        return Parsed("date", None, f"'{text}' is not a date that exists ({'day' if day_first else 'month'} first).")
    if not years[0] <= value.year <= years[1]:
        return Parsed("date", None, f"'{text}' has the year {value.year}, outside {years[0]}-{years[1]}.")
    return Parsed("date", value.isoformat())


_GROUPED = re.compile(r"\d{1,3}(?:\d{3})*")


def parse_amount(text: str) -> Parsed:
    """``text`` as an amount with at most 2 decimals (a decimal string such as ``1250.00``)."""
    s = text.strip()
    if not s or not s[0].isdigit():
        return Parsed("amount", None, f"'{text}' is not an amount: it must start with a digit.")
    if "/" in s:
        return Parsed("amount", None, f"'{text}' is not an amount: a slash has no place in one.")
    # No cents written as a dash: "250,-" / "250.--".
    dash = re.fullmatch(r"(.*\d)([.,])(-{1,2})", s)
    if dash:
        whole, mark, fraction = dash.group(1), dash.group(2), ""
    elif "-" in s:
        return Parsed("amount", None, f"'{text}' is not an amount: a dash only stands for no cents ('250,-').")
    else:
        last = re.fullmatch(r"(.*?)(?:([.,])(\d{1,2}))?", s)
        assert last is not None  # the pattern matches every string
        whole, mark, fraction = last.group(1), last.group(2), last.group(3) or ""
    if whole and not whole[-1].isdigit():
        return Parsed("amount", None, f"'{text}' is not an amount: two separators in a row.")
    parts = re.split(r"([., ])", whole)
    numbers, marks = parts[0::2], set(parts[1::2])
    if len(marks) > 1 or (mark is not None and mark in marks):
        return Parsed("amount", None, f"'{text}' is not an amount: its separators do not group thousands.")
    if marks and not (len(numbers[0]) <= 3 and all(len(n) == 3 for n in numbers[1:])):
        return Parsed("amount", None, f"'{text}' is not an amount: thousands come in groups of 3 digits.")
    digits = "".join(numbers)
    if not digits.isdigit() or not _GROUPED.fullmatch(digits):
        return Parsed("amount", None, f"'{text}' is not an amount.")
    if len(digits) > 1 and digits[0] == "0":
        return Parsed("amount", None, f"'{text}' is not an amount: a leading zero.")
    value = Decimal(digits + ("." + fraction if fraction else ""))
    return Parsed("amount", str(value))
