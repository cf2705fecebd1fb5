"""Fitting the segmentation's learned rules on generated fields (a developer's tool, not run by the
reader): ``python -m digitlab.fields.learn`` rewrites ``symbols.json`` beside ``separators.py`` (the
separator rule) and prints the split and space rules' weights (``segment.SPLIT_WEIGHTS``,
``separators.GAP_WEIGHTS``); about 25 minutes.

Fields are drawn by the generator (``synth``) from MNIST *training* digits with seeds the
benchmarks never use, read with the bundled reader while ``pieces.TRACE`` records each decision,
and every traced piece is labelled by the generator's own symbol boxes. The fitted network is
stored as plain numbers (no pickle); scikit-learn is needed only here.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.fields import pieces, separators
from digitlab.fields.pieces import Box
from digitlab.fields.separators import SYMBOL_CLASSES

SEEDS = range(5000, 5008)  # the benchmarks use seeds below 3000
DIGIT_SEEDS = range(5100, 5106)


def _area(b: Box) -> int:
    return max(0, b[2] - b[0]) * max(0, b[3] - b[1])


def _overlap(a: Box, b: Box) -> int:
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def piece_label(box: Box, symbols: Sequence[tuple[str, Box]]) -> str:
    """The class of a traced piece: the symbol whose box covers most of it (a digit, or the separator
    it is), or junk when no symbol's box covers 30% of it."""
    best, cover = "junk", 0.3 * _area(box)
    for char, b in symbols:
        o = _overlap(box, b)
        if o > cover:
            best, cover = ("digit" if char.isdigit() else char), o
    return best


def digits_inside(box: Box, symbols: Sequence[tuple[str, Box]]) -> int:
    """How many digits' box centres lie inside ``box``."""
    return sum(char.isdigit() and box[0] <= (b[0] + b[2]) / 2 < box[2] and box[1] <= (b[1] + b[3]) / 2 < box[3]
               for char, b in symbols)


def collect(n: int, seeds: Sequence[int] = SEEDS, run: Any = None, digits: bool = False) -> dict[str, list]:
    """Trace the reading of ``n`` generated check fields per seed (dates and amounts in turn; with
    ``digits``, rows of digits, every other one with 30% touching digits, tightly spaced) and label
    each decision: {"piece": [(features, label)], "split": [(features, holds two)], "gap": [(features,
    is a space)]}."""
    from digitlab.data import load_dataset
    from digitlab.fields.reading import read_field
    from digitlab.fields.synth import random_check_field, random_field
    from digitlab.predict import Predictor
    from digitlab.reader import load_reader

    predictor = Predictor.from_run(run) if run is not None else load_reader()
    ds = load_dataset("mnist")
    out: dict[str, list] = {"piece": [], "split": [], "gap": []}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for k in range(n):
            kind = "digits" if digits else ("date", "amount")[k % 2]
            if digits:
                tight = {"overlap": 0.3, "spacing": (0.05, 0.3)} if k % 2 else {}
                f = random_field(ds.train_images, ds.train_labels, rng, **tight)
            else:
                f = random_check_field(ds.train_images, ds.train_labels, rng, kind=kind)
            symbols = list(zip([c for c in f.text if c != " "], f.boxes, strict=True))
            spaces, k = [], 0  # each space's gap: from the symbol before it to the one after
            for ch in f.text:
                if ch == " ":
                    spaces.append((f.boxes[k - 1][2], f.boxes[k][0]))
                else:
                    k += 1
            pieces.TRACE = []
            try:
                read_field(predictor, f.image, format=kind)
            finally:
                trace, pieces.TRACE = pieces.TRACE, None
            for stage, box, features in trace:
                if stage == "piece":
                    out["piece"].append((features, piece_label(box, symbols)))
                elif stage == "split":
                    out["split"].append((features, digits_inside(box, symbols) >= 2))
                elif stage == "gap":
                    middle = (box[0] + box[2]) / 2
                    out["gap"].append((features, any(lo - 2 <= middle <= hi + 2 for lo, hi in spaces)))
    return out


def fit_symbols(rows: Sequence[tuple[list[float], str]], hidden: int = 32, seed: int = 0) -> dict[str, Any]:
    """A one-hidden-layer network over ``piece_features`` -> ``SYMBOL_CLASSES``, as plain numbers."""
    from sklearn.neural_network import MLPClassifier

    x = np.array([r[0] for r in rows], np.float64)
    y = np.array([SYMBOL_CLASSES.index(r[1]) for r in rows])
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    net = MLPClassifier(hidden_layer_sizes=(hidden,), alpha=1e-3, max_iter=3000, random_state=seed)
    net.fit((x - mean) / scale, y)
    w2 = np.zeros((hidden, len(SYMBOL_CLASSES)))
    b2 = np.full(len(SYMBOL_CLASSES), -30.0)  # a class never seen is never chosen
    w2[:, net.classes_] = net.coefs_[1]
    b2[net.classes_] = net.intercepts_[1]
    return {"classes": list(SYMBOL_CLASSES), "mean": mean.tolist(), "scale": scale.tolist(),
            "w1": net.coefs_[0].tolist(), "b1": net.intercepts_[0].tolist(), "w2": w2.tolist(), "b2": b2.tolist()}


def fit_split(rows: Sequence[tuple[list[float], bool]], c: float = 100.0) -> tuple[list[float], float]:
    """A logistic rule (weights, bias): over ``_split_features`` for ``segment.SPLIT_WEIGHTS``, over
    ``gap_features`` for ``separators.GAP_WEIGHTS``."""
    from sklearn.linear_model import LogisticRegression

    x = np.array([r[0] for r in rows], np.float64)
    y = np.array([r[1] for r in rows], bool)
    lr = LogisticRegression(C=c, max_iter=20000).fit(x, y)
    return [round(float(v), 2) for v in lr.coef_[0]], round(float(lr.intercept_[0]), 2)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=250, help="generated fields per seed")
    parser.add_argument("--out", default=str(Path(separators.__file__).with_name("symbols.json")))
    parser.add_argument("--split-run", action="append", default=[], metavar="RUN",
                        help="also fit the split rule on the decisions of this run's model (repeatable; "
                             "session 11 used a fresh 'digitlab train', so that users' runs split as well)")
    args = parser.parse_args(argv)
    # 1. The separator rule, on the raw pieces (traced before any rule decides about them).
    rule, separators._symbol_rule = separators._symbol_rule, lambda: None
    try:
        rows = collect(args.fields)["piece"]
    finally:
        separators._symbol_rule = rule
    counts = {c: sum(r[1] == c for r in rows) for c in SYMBOL_CLASSES}
    spec = fit_symbols(rows)
    spec["fitted_on"] = (f"{len(rows)} pieces of {args.fields * len(SEEDS)} generated check fields "
                         f"(seeds {SEEDS.start}-{SEEDS.stop - 1}, MNIST training digits): {counts}")
    tmp = Path(args.out + ".tmp")
    tmp.write_text(json.dumps(spec))
    tmp.replace(args.out)
    separators._symbol_rule.cache_clear()
    print(spec["fitted_on"])
    # 2. The split rule, with the new separator rule: check fields and rows of digits.
    checks = collect(args.fields)
    splits = checks["split"] + collect(args.fields, seeds=DIGIT_SEEDS, digits=True)["split"]
    for run in args.split_run:
        splits += collect(args.fields, run=run)["split"]
        splits += collect(args.fields, seeds=DIGIT_SEEDS, digits=True, run=run)["split"]
    weights, bias = fit_split(splits)
    print(f"{len(splits)} split decisions, {sum(r[1] for r in splits)} of them two digits:")
    print(f"SPLIT_WEIGHTS = {tuple(weights)}\nSPLIT_BIAS = {bias}")
    # 3. The space rule, on the gaps between digits of the same check fields.
    gaps = checks["gap"]
    weights, bias = fit_split(gaps, c=10.0)
    print(f"{len(gaps)} gaps between digits, {sum(r[1] for r in gaps)} of them spaces:")
    print(f"GAP_WEIGHTS = {tuple(weights)}\nGAP_BIAS = {bias}")


if __name__ == "__main__":
    main()
