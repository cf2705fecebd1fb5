"""The field benchmark: generated fields read by a run's model, scored against their truth."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.fields.synth import random_field


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
    from digitlab.fields.reading import read_field
    from digitlab.predict import Predictor

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
