"""Metrics of a classifier from its predicted probabilities: pure functions over arrays.

Everything returned by ``evaluate_predictions`` is plain JSON (lists, floats, ints, strings, None),
so it can be written to ``metrics.json`` and read back unchanged. The conventions are
scikit-learn's: the confusion matrix has one row per *true* class and one column per *predicted*
class (notebook 000 swapped the arguments of ``confusion_matrix``; we do not).

The four metrics scikit-learn would give (top-k accuracy, log loss, confusion matrix, classification
report) are computed here with numpy, and the tests check them against scikit-learn's: importing
scikit-learn costs ~1.5 s of CPU, which on two cores is a sixth of the 10 s `digitlab train` budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Probabilities are clipped to [EPS, 1] before the log loss so that one confident mistake
# costs a large but finite amount instead of infinity.
EPS = 1e-15


def _check(y_true: Any, probs: Any, classes: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert the inputs; mistakes here are programming errors, hence ValueError."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be a 2-D array (N samples, K classes), got shape {p.shape}")
    n, k = p.shape
    if n == 0 or k == 0:
        raise ValueError(f"probs must have at least one sample and one class, got shape {p.shape}")
    if classes is not None and k != len(classes):
        raise ValueError(f"probs has {k} columns but {len(classes)} class names were given")
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"y_true must be a 1-D array of {n} labels (one per row of probs), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError("y_true must hold integer class indices")
        y = y.astype(np.int64)
    y = y.astype(np.int64, copy=False)
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"y_true holds labels outside 0..{k - 1}: min {y.min()}, max {y.max()}")
    if not np.all(np.isfinite(p)) or p.min() < 0:
        raise ValueError("probs must be finite and non-negative")
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("each row of probs must sum to 1: pass softmax probabilities, not logits")
    return y, p


def _plain(obj: Any) -> Any:
    """Numpy scalars and arrays to Python numbers and lists (JSON without a custom encoder)."""
    if isinstance(obj, dict):
        return {str(key): _plain(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


def expected_calibration_error(y_true: Any, probs: Any, n_bins: int = 15) -> tuple[float, list[dict]]:
    """ECE over ``n_bins`` equal-width confidence bins (Guo et al., 2017).

    The confidence of a prediction is its highest probability. Bin b holds the confidences in
    (lower, upper] (the first bin also holds 0). ECE = sum over bins of
    (count / N) * |accuracy - mean confidence|. Returns ``(ece, bins)``; every bin is listed, with
    ``confidence`` and ``accuracy`` None when it is empty.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    y, p = _check(y_true, probs)
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # searchsorted(side="left") on the inner edges puts a confidence equal to an edge in the lower bin.
    which = np.searchsorted(edges[1:-1], confidence, side="left")
    bins, ece = [], 0.0
    for b in range(n_bins):
        members = which == b
        count = int(members.sum())
        mean_conf = float(confidence[members].mean()) if count else None
        accuracy = float(correct[members].mean()) if count else None
        if count:
            ece += count / len(y) * abs(accuracy - mean_conf)
        bins.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "confidence": mean_conf,
                "accuracy": accuracy,
            }
        )
    return float(ece), bins


def most_confused(cm: Any, classes: Sequence[str], min_count: int = 1) -> list[tuple[str, str, int]]:
    """Off-diagonal cells of a confusion matrix (rows true, columns predicted) as
    ``(true class, predicted class, count)``, largest count first, like fastai's ``most_confused``.
    Ties keep row-major order."""
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(classes):
        raise ValueError(f"cm must be a square {len(classes)}x{len(classes)} matrix, got shape {cm.shape}")
    pairs = [
        (classes[i], classes[j], int(cm[i, j]))
        for i in range(len(classes))
        for j in range(len(classes))
        if i != j and cm[i, j] >= min_count
    ]
    return sorted(pairs, key=lambda pair: pair[2], reverse=True)


def hardest_examples(y_true: Any, probs: Any, n: int = 25) -> list[dict]:
    """The ``n`` samples with the lowest probability of their true class (notebook 001), hardest first.

    Each entry: ``index`` (row in the inputs), ``true``, ``pred`` (class indices), ``prob_true``,
    ``prob_pred``. Ties keep input order.
    """
    y, p = _check(y_true, probs)
    prob_true = p[np.arange(len(y)), y]
    order = np.argsort(prob_true, kind="stable")[: max(int(n), 0)]
    pred = p.argmax(axis=1)
    return [
        {
            "index": int(i),
            "true": int(y[i]),
            "pred": int(pred[i]),
            "prob_true": float(prob_true[i]),
            "prob_pred": float(p[i, pred[i]]),
        }
        for i in order
    ]


def choose_threshold(y_true: Any, probs: Any, target: float = 0.99) -> float:
    """A confidence threshold, chosen on validation data, above which predictions can be trusted.

    Rule: among the observed confidences t (the highest probability of each prediction), take the
    lowest t such that the predictions with confidence >= t are right at least ``target`` of the
    time. The lowest such t keeps as many predictions as possible "sure". Predictions below it
    are then marked unsure.

    If no t reaches ``target`` (a weak model or a tiny set), fall back to the t with the best
    precision (the lowest among equals): the most trustworthy slice there is, rather than failing.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target must be in (0, 1], got {target}")
    y, p = _check(y_true, probs)
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    order = np.argsort(-confidence, kind="stable")
    conf_sorted = confidence[order]
    precision = np.cumsum(correct[order]) / np.arange(1, len(y) + 1)
    # Only the last of equal confidences is a real cut: a threshold keeps all of them or none.
    is_cut = np.append(conf_sorted[1:] != conf_sorted[:-1], True)
    cuts = np.flatnonzero(is_cut)
    reached = cuts[precision[cuts] >= target - 1e-12]
    if len(reached):
        return float(conf_sorted[reached[-1]])
    best = cuts[precision[cuts] == precision[cuts].max()]
    return float(conf_sorted[best[-1]])


def evaluate_predictions(
    y_true: Any,
    probs: Any,
    classes: Sequence[str],
    top_k: Sequence[int] = (1, 3, 5),
    n_hardest: int = 25,
    n_bins: int = 15,
) -> dict:
    """All metrics of one set of predictions, as a JSON-ready dict.

    ``y_true``: N integer labels; ``probs``: N x K probabilities (softmax outputs); ``classes``: K
    names. Keys: n, num_classes, classes, accuracy, top_k_accuracy (``{"3": ...}``, only for
    k < K), log_loss, report (scikit-learn's classification report dict), confusion_matrix,
    confusion_matrix_normalized (rows sum to 1; a class without samples is a row of zeros),
    most_confused ([true, pred, count] lists), ece, reliability (bins), hardest (see
    ``hardest_examples``).
    """
    classes = [str(c) for c in classes]
    y, p = _check(y_true, probs, classes)
    k = len(classes)
    pred = p.argmax(axis=1)
    accuracy = float(np.mean(pred == y))

    top = {}
    for kk in sorted(set(int(x) for x in top_k)):
        if kk == 1:
            top["1"] = accuracy  # the same argmax as `accuracy`, so the two always agree
        elif 1 < kk < k:
            best = np.argsort(-p, axis=1, kind="stable")[:, :kk]
            top[str(kk)] = float(np.mean((best == y[:, None]).any(axis=1)))

    clipped = np.clip(p, EPS, 1.0)
    clipped /= clipped.sum(axis=1, keepdims=True)
    loss = float(-np.mean(np.log(clipped[np.arange(len(y)), y])))

    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    report = classification_report(cm, classes)
    row_sums = cm.sum(axis=1, keepdims=True)
    cm_norm = np.divide(cm, row_sums, out=np.zeros(cm.shape, dtype=np.float64), where=row_sums > 0)

    ece, bins = expected_calibration_error(y, p, n_bins=n_bins)
    return _plain(
        {
            "n": len(y),
            "num_classes": k,
            "classes": classes,
            "accuracy": accuracy,
            "top_k_accuracy": top,
            "log_loss": loss,
            "report": report,
            "confusion_matrix": cm,
            "confusion_matrix_normalized": cm_norm,
            "most_confused": most_confused(cm, classes),
            "ece": ece,
            "reliability": bins,
            "hardest": hardest_examples(y, p, n_hardest),
        }
    )


def classification_report(cm: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """scikit-learn's ``classification_report(..., output_dict=True, zero_division=0)`` from a
    confusion matrix (rows: true classes): per class and macro/weighted precision, recall, F1, support."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)

    precision, recall = ratio(tp, predicted), ratio(tp, support)
    f1 = ratio(2 * tp, support + predicted)
    report: dict[str, Any] = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1-score": float(f1[i]),
               "support": int(support[i])}
        for i, name in enumerate(classes)
    }
    total = int(support.sum())
    report["accuracy"] = float(tp.sum() / total) if total else 0.0
    weights = support / total if total else np.zeros(len(support))
    for name, w in (("macro avg", np.full(len(support), 1 / len(support))), ("weighted avg", weights)):
        report[name] = {"precision": float(precision @ w), "recall": float(recall @ w), "f1-score": float(f1 @ w),
                        "support": total}
    return report


def format_report(metrics: dict, max_pairs: int = 10) -> str:
    """A readable text summary of ``evaluate_predictions``' output for the terminal."""
    lines = [f"samples: {metrics['n']}   classes: {metrics['num_classes']}"]
    lines.append(f"accuracy:  {metrics['accuracy']:.2%}")
    for k, value in metrics.get("top_k_accuracy", {}).items():
        if k != "1":
            lines.append(f"top-{k}:     {value:.2%}")
    lines.append(f"log loss:  {metrics['log_loss']:.4f}")
    lines.append(f"ECE:       {metrics['ece']:.2%}  (expected calibration error, {len(metrics['reliability'])} bins)")
    lines.append("")

    # Exactly scikit-learn's text classification report (digits=4), rebuilt from the dict.
    report = metrics["report"]
    names = list(metrics["classes"])
    averages = [a for a in ("macro avg", "weighted avg") if a in report]
    width = max(len("weighted avg"), *(len(name) for name in names))
    headers = ["precision", "recall", "f1-score", "support"]
    lines.append(f"{'':>{width}} " + "".join(f" {h:>9}" for h in headers))
    lines.append("")

    def row(name: str, r: dict) -> str:
        values = "".join(f" {r[h]:>9.4f}" for h in headers[:3])
        return f"{name:>{width}} {values} {r['support']:>9}"

    lines.extend(row(name, report[name]) for name in names)
    lines.append("")
    if "accuracy" in report:
        support = report[averages[0]]["support"] if averages else metrics["n"]
        lines.append(f"{'accuracy':>{width}} {'':>20} {report['accuracy']:>9.4f} {support:>9}")
    lines.extend(row(name, report[name]) for name in averages)

    pairs = metrics.get("most_confused", [])[:max_pairs]
    if pairs:
        lines.append("")
        lines.append(f"most confused (true -> predicted, top {len(pairs)}):")
        name_width = max(len(str(t)) for t, _, _ in pairs)
        lines.extend(f"  {t:>{name_width}} -> {pr}: {count}" for t, pr, count in pairs)
    return "\n".join(lines)


# --- a saved run ----------------------------------------------------------------------------------

SPLITS = ("test", "val", "train")


def split_arrays(splits: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, labels) of one part of a ``digitlab.data.Splits``."""
    if split not in SPLITS:
        from digitlab.errors import ConfigError

        raise ConfigError(f"Unknown split '{split}': use one of {', '.join(SPLITS)}.")
    return getattr(splits, f"{split}_x"), getattr(splits, f"{split}_y")


def run_splits(run: Any) -> Any:
    """The ``digitlab.data.Splits`` of a run, rebuilt from its config.json exactly as training made them
    (same dataset, scheme, validation size and seed 42; ``train_subset`` is not applied)."""
    from digitlab.data import load_dataset
    from digitlab.data import split as make_split
    from digitlab.errors import RunError
    from digitlab.runs import Run

    run = run if isinstance(run, Run) else Run.load(run)
    cfg = run.config
    if "dataset" not in cfg:
        raise RunError(f"Run '{run.path}' has no config.json with its dataset: it cannot be re-evaluated; retrain it.")
    ds = load_dataset(cfg["dataset"], cfg.get("data_dir"))
    return make_split(ds, cfg.get("split", "default"), cfg.get("val_size", 5000), seed=42)


def load_split(run: Any, split: str = "test") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(uint8 images, labels, class names) of a run's ``split`` (see ``run_splits``). ``train`` is the
    whole training split: a ``train_subset`` run saw only part of it."""
    from digitlab.errors import ConfigError
    from digitlab.runs import Run

    run = run if isinstance(run, Run) else Run.load(run)
    sp = run_splits(run)
    x, y = split_arrays(sp, split)
    if len(y) == 0:
        raise ConfigError(f"Run '{run.name}' has no {split} set (split scheme '{sp.scheme}'): evaluate another split.")
    return x, y, list(run.meta.get("classes") or sp.classes)


def write_figures(
    metrics: dict,
    out: str | Path,
    images: Any = None,
    labels: Any = None,
    probs: Any = None,
    prefix: str = "",
) -> dict[str, Path]:
    """The evaluation figures of ``evaluate_predictions``' output as PNGs in ``out``: confusion matrix
    (counts and row-normalized), per-class F1 and reliability; with the ``images`` also the hardest
    examples, and with ``labels`` and ``probs`` a grid of sample predictions."""
    from digitlab import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    classes, hard = metrics["classes"], metrics["hardest"]
    figures = {
        "confusion_matrix": plots.confusion_matrix(
            metrics["confusion_matrix"], classes, out / f"{prefix}confusion_matrix.png"),
        "confusion_matrix_normalized": plots.confusion_matrix(
            metrics["confusion_matrix"], classes, out / f"{prefix}confusion_matrix_normalized.png", normalize=True),
        "f1_per_class": plots.f1_bars(metrics["report"], classes, out / f"{prefix}f1_per_class.png"),
        "reliability": plots.reliability_diagram(metrics["reliability"], metrics["ece"],
                                                 out / f"{prefix}reliability.png"),
    }
    if images is not None:
        images = np.asarray(images)
        if hard:
            figures["hardest_examples"] = plots.hardest_examples(
                images[[h["index"] for h in hard]], [h["true"] for h in hard], [h["pred"] for h in hard],
                [h["prob_true"] for h in hard], classes, out / f"{prefix}hardest_examples.png")
        if labels is not None and probs is not None:
            figures["predictions"] = plots.prediction_grid(
                images, np.asarray(labels), np.asarray(probs).argmax(axis=1), classes, out / f"{prefix}predictions.png")
    return figures


def evaluate_run(
    run: Any,
    split: str = "test",
    tta: bool = False,
    out: str | Path | None = None,
    figures: bool = True,
) -> dict:
    """Evaluate a saved run on one split of its data (rebuilt from config.json).

    Returns ``evaluate_predictions``' dict plus ``run``, ``split``, ``tta``, ``recorded_accuracy``
    (what training wrote to metrics.json for that split, None for train: training scores a sample),
    ``matches_recorded`` (the same number of right answers) and ``figures`` ({name: PNG path}, in
    ``out``, default RUN/figures; non-test splits get a ``val_``/``train_`` prefix).
    ``tta`` averages over 1-pixel shifts (test-time augmentation).
    """
    from digitlab.predict import Predictor
    from digitlab.runs import Run

    if split not in SPLITS:
        from digitlab.errors import ConfigError

        raise ConfigError(f"Unknown split '{split}': use one of {', '.join(SPLITS)}.")
    run = run if isinstance(run, Run) else Run.load(run)
    x, y, classes = load_split(run, split)
    predictor = Predictor.from_run(run.path)
    if tta and not predictor.tta:  # a model with its own TTA (model.json "tta") already averages shifts
        from digitlab.predict import shift_tta_proba

        probs = shift_tta_proba(predictor.predict_proba, x)
    else:
        probs = predictor.predict_proba(x)
    metrics = evaluate_predictions(y, probs, classes)
    recorded = run.metrics.get(split, {}).get("accuracy") if split != "train" else None
    # Training stores a float32 mean; the same predictions give the same count of right answers.
    same = None if recorded is None else round(recorded * len(y)) == round(metrics["accuracy"] * len(y))
    metrics.update({"run": str(run.path), "split": split, "tta": tta, "recorded_accuracy": recorded,
                    "matches_recorded": same})
    if figures:
        prefix = "" if split == "test" else f"{split}_"
        from digitlab.plots import for_display

        images = for_display(x, float(run.meta.get("max_value", 255)))
        written = write_figures(metrics, out or run.path / "figures", images, y, probs, prefix)
        metrics["figures"] = {name: str(path) for name, path in written.items()}
    return metrics
