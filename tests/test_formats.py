"""The date, amount and digits parsers of ``digitlab.fields.formats``: valid, ambiguous and invalid texts."""

from __future__ import annotations

import pytest

from digitlab.errors import ConfigError
from digitlab.fields.formats import parse, parse_amount, parse_date, parse_digits


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("21.11.2026", "2026-11-21"),
        ("21/11/26", "2026-11-21"),
        ("21-11-2026", "2026-11-21"),
        ("2026-11-21", "2026-11-21"),
        ("2026/11/21", "2026-11-21"),
        ("21 11 2026", "2026-11-21"),
        ("1.2.2026", "2026-02-01"),
        ("01.02.26", "2026-02-01"),
        ("211126", "2026-11-21"),
        ("21112026", "2026-11-21"),
        ("29.02.2024", "2024-02-29"),  # a leap year
        ("31.12.99", "1999-12-31"),  # 69-99: 19xx
        ("01.01.68", "2068-01-01"),  # 00-68: 20xx
        ("01.01.69", "1969-01-01"),
        (" 21.11.2026 ", "2026-11-21"),
    ],
)
def test_dates_day_first(text, iso):
    parsed = parse_date(text)
    assert parsed.valid and parsed.value == iso and parsed.reason is None


@pytest.mark.parametrize(
    ("text", "iso"),
    [("11/21/2026", "2026-11-21"), ("11.21.26", "2026-11-21"), ("112126", "2026-11-21"), ("2026-11-21", "2026-11-21")],
)
def test_dates_month_first(text, iso):
    assert parse_date(text, day_first=False).value == iso


def test_the_years_a_date_may_have_can_be_widened():
    assert "outside 1900-2099" in parse_date("28.08.1798").reason
    assert parse_date("28.08.1798", years=(1700, 2099)).value == "1798-08-28"
    assert parse_date("01.01.1900").valid and parse_date("31.12.2099").valid


def test_ambiguous_dates_follow_the_order_asked_for():
    assert parse_date("03.04.2026").value == "2026-04-03"
    assert parse_date("03.04.2026", day_first=False).value == "2026-03-04"
    # Day first, 21.11 exists; month first there is no month 21.
    assert parse_date("21.11.2026", day_first=False).valid is False


@pytest.mark.parametrize(
    "text",
    [
        "31.04.2026",  # April has 30 days
        "29.02.2025",  # not a leap year
        "00.01.2026",
        "12.13.2026",  # month 13
        "21.11/2026",  # mixed separators
        "21..11.2026",  # a doubled separator
        "21.11",  # two groups
        "21.11.2026.1",  # four groups
        "2111202",  # 7 digits
        "211.11.2026",  # a three-digit day
        "21.11.202",  # a three-digit year
        "2026-11-211",
        "21,11,2026",  # no comma in a date
        "",
        ".21.11.2026",
        "21.11.2026-",
        "28.08.1798",  # a misread 1998: outside the years a check may have
        "16.05.2237",
    ],
)
def test_invalid_dates_are_flagged_never_fixed(text):
    parsed = parse_date(text)
    assert not parsed.valid and parsed.value is None
    assert parsed.reason and parsed.reason.endswith(".")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1.250,00", "1250.00"),
        ("1,250.00", "1250.00"),
        ("1 250,00", "1250.00"),
        ("1 250.00", "1250.00"),
        ("1250,00", "1250.00"),
        ("1250.00", "1250.00"),
        ("250,-", "250"),
        ("250.-", "250"),
        ("250,--", "250"),
        ("1.250,-", "1250"),
        ("1250", "1250"),
        ("1250,5", "1250.5"),
        ("0,50", "0.50"),
        ("1.250", "1250"),  # 3 digits after the only mark: thousands (at most 2 decimals)
        ("1,250", "1250"),
        ("12,34", "12.34"),
        ("12.34", "12.34"),
        ("1.234.567,89", "1234567.89"),
        ("1,234,567.89", "1234567.89"),
        ("1 234 567", "1234567"),
        ("7", "7"),
    ],
)
def test_amounts(text, value):
    parsed = parse_amount(text)
    assert parsed.valid and parsed.value == value


@pytest.mark.parametrize(
    "text",
    [
        "1.25.00",  # groups of 2
        "12,345,67",
        "1.2345,00",  # a group of 4
        "1,250,00",  # the same mark for thousands and decimals
        "1.250.00",
        "1250,000",  # 3 digits after the mark, but 1250 cannot head a thousands group
        "1250.",  # a trailing mark
        ",50",  # starts with a separator
        "-250",
        "250-",  # a dash not after a decimal mark
        "12/50",  # a slash
        "1..250",
        "1. 250",
        "01,50",  # a leading zero
        "",
        "1,2,3",
    ],
)
def test_invalid_amounts_are_flagged(text):
    parsed = parse_amount(text)
    assert not parsed.valid and parsed.value is None and parsed.reason


def test_a_three_digit_tail_is_thousands_only_in_whole_groups():
    assert parse_amount("12.345").value == "12345"
    assert parse_amount("1250,000").valid is False  # 1250 is not a thousands group's head


def test_digits_and_dispatch():
    assert parse_digits("0123").value == "0123"
    assert parse_digits("12 34").value == "1234"
    assert not parse_digits("12.34").valid
    assert not parse_digits("").valid
    assert parse("21/11/26", "date").value == "2026-11-21"
    assert parse("03/04/26", "date", day_first=False).value == "2026-03-04"
    assert parse("1.250,00", "AMOUNT").value == "1250.00"
    assert parse("123", "digits").to_dict() == {"format": "digits", "value": "123", "valid": True, "reason": None}
    with pytest.raises(ConfigError, match="digits, date or amount"):
        parse("123", "time")
