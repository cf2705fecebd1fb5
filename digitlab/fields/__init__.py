"""Fields of handwritten symbols: the date and amount boxes of a bank check.

- ``segment``: a field image -> one piece of ink per symbol (digits, separators, spaces); its
  ``separators`` (the learned separator rule, spaces) and ``pieces`` (``Segment``, shared geometry).
- ``learn``: refits the learned rules on generated fields (a developer's tool).
- ``synth``: the synthetic field generator (digits, dates and amounts in check-like layouts).
- ``reading``: ``read_field`` (segment, classify, parse) and ``read_files`` for batches.
- ``formats``: the date, amount and digits parsers.
- ``bench``: ``fields_benchmark`` on generated fields.
"""

from digitlab.fields.bench import edit_distance, fields_benchmark
from digitlab.fields.formats import FORMATS, Parsed, parse, parse_amount, parse_date, parse_digits
from digitlab.fields.reading import (
    REVIEW_THRESHOLD,
    DigitReading,
    FieldReading,
    FileReading,
    SymbolReading,
    draw_reading,
    expand_inputs,
    read_field,
    read_files,
)
from digitlab.fields.segment import Box, Classify, Segment, field_ink, remove_rules, segment_field
from digitlab.fields.synth import INKS, Field, make_field, random_amount, random_check_field, random_date, random_field

__all__ = [
    "FORMATS", "INKS", "REVIEW_THRESHOLD", "Box", "Classify", "DigitReading", "Field", "FieldReading", "FileReading",
    "Parsed", "Segment", "SymbolReading", "draw_reading", "edit_distance", "expand_inputs", "field_ink",
    "fields_benchmark", "make_field", "parse", "parse_amount", "parse_date", "parse_digits", "random_amount",
    "random_check_field", "random_date", "random_field",
    "read_field", "read_files", "remove_rules", "segment_field",
]
