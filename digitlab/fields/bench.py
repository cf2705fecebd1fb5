"""The field benchmark: generated fields read by a run's model, scored against their truth."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.errors import ConfigError
from digitlab.fields.synth import random_check_field, random_field


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions and substitutions of single characters)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def operating_points(confidences: Sequence[float], right: Sequence[bool],
                     targets: Sequence[float] = (0.01, 0.001)) -> list[dict[str, Any]]:
    """For each target field error rate: the largest share of fields that can be accepted (the most
    confident first) with at most that error among them, and the confidence threshold doing it."""
    order = np.argsort(-np.asarray(confidences, np.float64), kind="stable")
    conf = np.asarray(confidences, np.float64)[order]
    wrong = np.cumsum(~np.asarray(right, bool)[order])
    n = len(order)
    out = []
    for target in targets:
        best = 0
        for k in range(1, n + 1):
            # Only cut between distinct confidences: a threshold cannot split equal values.
            if wrong[k - 1] <= target * k and (k == n or conf[k] < conf[k - 1]):
                best = k
        out.append({
            "max_error": target,
            "accept_rate": best / n if n else 0.0,
            "threshold": float(conf[best - 1]) if best else 1.0,
            "errors_accepted": int(wrong[best - 1]) if best else 0,
        })
    return out


def fields_benchmark(
    run: Any,
    n: int = 200,
    seed: int = 0,
    save_examples: str | Path | None = None,
    examples: int = 6,
    kind: str = "digits",
    threshold: float | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Generate ``n`` fields from MNIST *test* digits and read them with ``run``'s model.

    ``kind``: digits (rows of 2 to 12 digits, ``random_field``), date, amount, or checks (dates and
    amounts in turn, ``random_check_field``). ``char_accuracy`` is 1 - (edit distance / characters),
    so a missed or extra symbol counts as an error (``digit_accuracy`` for digit fields);
    ``field_accuracy`` counts exact strings. For dates and amounts, ``valid_rate`` is the share of
    fields read as valid and ``valid_right`` the share of those whose value is the true one.
    ``operating_points``: the accept rate at <= 1% and <= 0.1% field error, by field confidence;
    ``review_threshold`` (default ``REVIEW_THRESHOLD``) is scored as well. ``run`` is a run
    folder/name or a Predictor. ``save_examples`` writes the first ``examples`` readings as PNGs.
    """
    from digitlab.data import load_dataset
    from digitlab.fields.reading import REVIEW_THRESHOLD, read_field
    from digitlab.predict import Predictor

    if kind not in ("digits", "date", "amount", "checks"):
        raise ConfigError(f"Unknown kind of generated field '{kind}'; choose digits, date, amount or checks.")
    predictor = run if isinstance(run, Predictor) else Predictor.from_run(run)
    review = REVIEW_THRESHOLD if threshold is None else threshold
    ds = load_dataset("mnist")
    rng = np.random.default_rng(seed)
    errors = chars = exact = count_ok = flagged = sure_fields = sure_right = 0
    valid = valid_right = 0
    confidences, rights = [], []
    failures = []
    t0 = time.perf_counter()
    for k in range(n):
        if kind == "digits":
            f = random_field(ds.test_images, ds.test_labels, rng, **options)
            fmt = "digits"
        else:
            which = ("date", "amount")[k % 2] if kind == "checks" else kind
            f = random_check_field(ds.test_images, ds.test_labels, rng, kind=which, **options)
            fmt = which
        reading = read_field(predictor, f.image, format=fmt, threshold=review)
        dist = edit_distance(f.text, reading.text)
        errors += dist
        chars += len(f.text)
        exact += dist == 0
        count_ok += len(reading.text) == len(f.text)
        unsure = any(s.unsure for s in reading.symbols)
        flagged += unsure
        if not unsure:
            sure_fields += 1
            sure_right += dist == 0
        if fmt != "digits" and reading.valid:
            valid += 1
            valid_right += reading.value == f.options["value"]
        confidences.append(reading.confidence if reading.valid else 0.0)
        rights.append(dist == 0)
        if dist and len(failures) < 20:
            failures.append({"index": k, "truth": f.text, "read": reading.text, "confidence": reading.confidence})
        if save_examples is not None and k < examples:
            out = Path(save_examples) / f"field_{k:03d}.png"
            from digitlab.utils import atomic_write

            sheet = reading.draw(f.image, title=f"truth {f.text}   read {reading.marked}")
            atomic_write(out, lambda p, s=sheet: s.save(p, format="PNG"))
    seconds = time.perf_counter() - t0
    accepted = [c >= review for c in confidences]
    n_acc = sum(accepted)
    result: dict[str, Any] = {
        "run": str(predictor.path) if predictor.path else None,
        "kind": kind,
        "fields": n,
        "seed": seed,
        "characters": chars,
        "char_accuracy": 1.0 - errors / max(chars, 1),
        "field_accuracy": exact / max(n, 1),
        "count_accuracy": count_ok / max(n, 1),
        "fields_flagged_unsure": flagged / max(n, 1),
        "accuracy_of_unflagged_fields": sure_right / sure_fields if sure_fields else None,
        "operating_points": operating_points(confidences, rights),
        "review_threshold": review,
        "accepted_at_review_threshold": n_acc / max(n, 1),
        "error_of_accepted": (sum(a and not r for a, r in zip(accepted, rights, strict=True)) / n_acc
                              if n_acc else None),
        "seconds_per_field": seconds / max(n, 1),
        "failures": failures,
    }
    if kind == "digits":
        result["digits"] = chars
        result["digit_accuracy"] = result["char_accuracy"]
    else:
        result["valid_rate"] = valid / max(n, 1)
        result["valid_right"] = valid_right / valid if valid else None
    return result
