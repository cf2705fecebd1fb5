"""digitlab.evaluate against scikit-learn and hand computations."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    log_loss,
    top_k_accuracy_score,
)

from digitlab.evaluate import (
    choose_threshold,
    evaluate_predictions,
    expected_calibration_error,
    format_report,
    hardest_examples,
    most_confused,
)

MNIST = Path(__file__).resolve().parents[1] / "digitlab" / "_data" / "mnist"
DIGITS = [str(i) for i in range(10)]


def _read(name: str, offset: int) -> np.ndarray:
    with gzip.open(MNIST / name) as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


@pytest.fixture(scope="module")
def predictions() -> tuple[np.ndarray, np.ndarray]:
    """Real, imperfect predictions: a nearest-centroid classifier with softmax over distances,
    fitted on 3,000 MNIST test images and applied to the next 2,000."""
    x = _read("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 784).astype(np.float64) / 255
    y = _read("t10k-labels-idx1-ubyte.gz", 8).astype(np.int64)
    centroids = np.stack([x[:3000][y[:3000] == c].mean(axis=0) for c in range(10)])
    dist = ((x[3000:5000, None, :] - centroids[None]) ** 2).sum(axis=2)
    logits = -dist / 4.0
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return y[3000:5000], probs


def test_metrics_equal_scikit_learn(predictions):
    y, probs = predictions
    pred = probs.argmax(axis=1)
    m = evaluate_predictions(y, probs, DIGITS)
    assert 0.6 < m["accuracy"] < 0.95  # a real classifier with real mistakes
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["top_k_accuracy"]["1"] == m["accuracy"]
    for k in (3, 5):
        assert m["top_k_accuracy"][str(k)] == pytest.approx(top_k_accuracy_score(y, probs, k=k))
    assert m["top_k_accuracy"]["3"] > m["accuracy"]
    assert m["log_loss"] == pytest.approx(log_loss(y, probs))
    assert m["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    ref = classification_report(y, pred, target_names=DIGITS, output_dict=True, zero_division=0)
    for name in [*DIGITS, "macro avg", "weighted avg"]:
        for key in ("precision", "recall", "f1-score", "support"):
            assert m["report"][name][key] == pytest.approx(ref[name][key]), (name, key)
    assert m["report"]["accuracy"] == pytest.approx(ref["accuracy"])
    norm = np.array(m["confusion_matrix_normalized"])
    np.testing.assert_allclose(norm.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.diag(norm), [m["report"][c]["recall"] for c in DIGITS])
    assert len(m["hardest"]) == 25
    # Plain JSON: the dict survives a round trip unchanged (no numpy types, no NaN).
    assert json.loads(json.dumps(m, allow_nan=False)) == m


def test_confusion_matrix_rows_are_true_classes():
    # Every true 0 is predicted as 1: the count must be in row 0, column 1.
    y = np.zeros(7, dtype=np.int64)
    probs = np.tile([0.1, 0.8, 0.1], (7, 1))
    m = evaluate_predictions(y, probs, ["zero", "one", "two"])
    assert m["confusion_matrix"] == [[0, 7, 0], [0, 0, 0], [0, 0, 0]]
    assert m["confusion_matrix_normalized"][0] == [0.0, 1.0, 0.0]
    assert m["confusion_matrix_normalized"][1] == [0.0, 0.0, 0.0]  # no samples: zeros, not NaN
    assert m["most_confused"] == [["zero", "one", 7]]
    assert m["report"]["zero"]["recall"] == 0.0 and m["report"]["zero"]["support"] == 7
    # top-k only for k < number of classes
    assert list(m["top_k_accuracy"]) == ["1"]


def test_log_loss_clips_certain_mistakes():
    y = np.array([0, 1])
    probs = np.array([[0.0, 1.0], [0.0, 1.0]])  # the first one is certain and wrong
    loss = evaluate_predictions(y, probs, ["a", "b"])["log_loss"]
    assert np.isfinite(loss) and loss == pytest.approx(-np.log(1e-15) / 2, rel=1e-6)


def test_expected_calibration_error_by_hand():
    y = np.array([0, 1, 0, 0])
    probs = np.array([[0.90, 0.10], [0.90, 0.10], [0.58, 0.42], [0.55, 0.45]])
    ece, bins = expected_calibration_error(y, probs, n_bins=15)
    # bin (0.867, 0.933]: confidence 0.9, accuracy 1/2; bin (0.533, 0.6]: confidence 0.565, accuracy 1
    assert ece == pytest.approx(2 / 4 * abs(0.5 - 0.9) + 2 / 4 * abs(1.0 - 0.565))
    assert len(bins) == 15 and sum(b["count"] for b in bins) == 4
    assert bins[13]["count"] == 2 and bins[13]["accuracy"] == 0.5
    assert bins[13]["confidence"] == pytest.approx(0.9)
    assert bins[8]["count"] == 2 and bins[8]["confidence"] == pytest.approx(0.565)
    assert bins[0]["confidence"] is None and bins[0]["accuracy"] is None
    assert bins[0]["lower"] == 0.0 and bins[-1]["upper"] == 1.0


def test_calibration_bins_are_closed_on_the_right():
    y = np.array([0, 0, 1])
    probs = np.array([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]])
    ece, bins = expected_calibration_error(y, probs, n_bins=2)
    assert [b["count"] for b in bins] == [1, 2]  # 0.5 in (0, 0.5]; 1.0 in (0.5, 1]
    assert ece == pytest.approx(1 / 3 * abs(1.0 - 0.5) + 2 / 3 * abs(1.0 - 0.875))


def test_perfectly_calibrated_predictions_have_zero_ece():
    rng = np.random.default_rng(0)
    n = 20_000
    conf = rng.uniform(0.5, 1.0, n)
    y = (rng.uniform(size=n) > conf).astype(np.int64)  # class 0 is right with probability conf
    probs = np.stack([conf, 1 - conf], axis=1)
    ece, _ = expected_calibration_error(y, probs)
    assert ece < 0.02
    overconfident, _ = expected_calibration_error(y, np.stack([np.full(n, 0.99), np.full(n, 0.01)], axis=1))
    assert overconfident > 0.2


def test_hardest_examples_order():
    y = np.array([0, 1, 2, 1])
    probs = np.array([[0.2, 0.7, 0.1], [0.3, 0.6, 0.1], [0.5, 0.3, 0.2], [0.7, 0.2, 0.1]])
    hard = hardest_examples(y, probs, n=3)
    # p(true): 0.2, 0.6, 0.2, 0.2 -> the three 0.2 in input order
    assert [h["index"] for h in hard] == [0, 2, 3]
    assert hard[0] == {"index": 0, "true": 0, "pred": 1, "prob_true": 0.2, "prob_pred": 0.7}
    assert hard[1]["pred"] == 0 and hard[1]["prob_pred"] == 0.5
    assert len(hardest_examples(y, probs, n=10)) == 4


def test_hardest_examples_on_real_predictions(predictions):
    y, probs = predictions
    hard = hardest_examples(y, probs, n=50)
    p_true = [h["prob_true"] for h in hard]
    assert p_true == sorted(p_true)
    assert p_true[-1] <= np.sort(probs[np.arange(len(y)), y])[50]
    assert all(h["true"] != h["pred"] for h in hard[:10])


def test_most_confused_order_and_min_count():
    cm = np.array([[5, 2, 0], [4, 9, 2], [1, 7, 3]])
    assert most_confused(cm, ["a", "b", "c"]) == [
        ("c", "b", 7),
        ("b", "a", 4),
        ("a", "b", 2),  # ties keep row-major order
        ("b", "c", 2),
        ("c", "a", 1),
    ]
    assert most_confused(cm, ["a", "b", "c"], min_count=3) == [("c", "b", 7), ("b", "a", 4)]
    with pytest.raises(ValueError, match="square"):
        most_confused(cm, ["a", "b"])


def _probs_with_confidence(conf: list[float], right: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    probs = np.array([[c, 1 - c] for c in conf])
    y = np.array([0 if r else 1 for r in right])
    return y, probs


def test_choose_threshold_takes_the_lowest_that_reaches_the_target():
    y, probs = _probs_with_confidence([0.99, 0.95, 0.9, 0.8, 0.7, 0.6], [True, True, False, True, False, True])
    assert choose_threshold(y, probs, target=1.0) == 0.95  # only 0.99 and 0.95 are all right
    assert choose_threshold(y, probs, target=0.75) == 0.8  # 3 of the 4 >= 0.8 are right; 3/5 below
    assert choose_threshold(y, probs, target=0.7) == 0.8  # 0.7 gives 3/5, 0.6 gives 4/6
    # Precision is not monotonic: 0.6 (4/6) reaches 0.65 although 0.7 (3/5) does not; the rule
    # is "the lowest threshold that reaches the target", so 0.6 wins.
    assert choose_threshold(y, probs, target=0.65) == 0.6


def test_choose_threshold_keeps_equal_confidences_together():
    # Two predictions at 0.9, one of them wrong: a threshold cannot keep only the right one.
    y, probs = _probs_with_confidence([0.95, 0.9, 0.9, 0.8], [True, True, False, True])
    assert choose_threshold(y, probs, target=1.0) == 0.95


def test_choose_threshold_falls_back_to_the_best_precision():
    y, probs = _probs_with_confidence([0.9, 0.8, 0.7], [False, True, True])  # precision 0, 1/2, 2/3
    assert choose_threshold(y, probs, target=0.99) == 0.7


def test_choose_threshold_on_real_predictions(predictions):
    y, probs = predictions
    conf = probs.max(axis=1)
    right = probs.argmax(axis=1) == y
    for target in (0.9, 0.97, 0.99):
        t = choose_threshold(y, probs, target=target)
        assert right[conf >= t].mean() >= target
        for lower in np.unique(conf[conf < t]):  # every lower threshold misses the target
            assert right[conf >= lower].mean() < target
    with pytest.raises(ValueError, match="target"):
        choose_threshold(y, probs, target=0.0)


def test_format_report_matches_scikit_learn_text(predictions):
    y, probs = predictions
    m = evaluate_predictions(y, probs, DIGITS)
    text = format_report(json.loads(json.dumps(m)))  # works on metrics read back from JSON
    assert f"accuracy:  {m['accuracy']:.2%}" in text
    assert "top-3:" in text and "log loss:" in text and "ECE:" in text
    ref = classification_report(y, probs.argmax(axis=1), target_names=DIGITS, digits=4, zero_division=0)
    ours = [line.rstrip() for line in text.splitlines()]
    for line in ref.rstrip().splitlines():
        assert line.rstrip() in ours, line
    t, p, count = m["most_confused"][0]
    assert f"{t} -> {p}: {count}" in text
    pair_lines = [line for line in ours if line.startswith("  ") and " -> " in line]
    assert len(pair_lines) == 10


@pytest.mark.parametrize(
    ("y", "probs", "classes", "match"),
    [
        ([0, 1], [0.5, 0.5], ["a", "b"], "2-D"),
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], ["a", "b", "c"], "3 class names"),
        ([0], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], "2 labels"),
        ([0, 2], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], "outside 0..1"),
        ([0, -1], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], "outside"),
        ([0, 1], [[2.0, -1.0], [0.5, 0.5]], ["a", "b"], "non-negative"),
        ([0, 1], [[3.0, 1.0], [0.5, 0.5]], ["a", "b"], "not logits"),
        ([0, 1], [[np.nan, 1.0], [0.5, 0.5]], ["a", "b"], "finite"),
        ([0.5, 1], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], "integer"),
        ([], np.zeros((0, 2)), ["a", "b"], "at least one"),
    ],
)
def test_invalid_inputs_raise_value_error(y, probs, classes, match):
    with pytest.raises(ValueError, match=match):
        evaluate_predictions(np.array(y), np.array(probs), classes)


# --- a saved run ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny real MNIST run of the default model (BatchNorm, channels-last at training time; 300
    training images, 1 epoch) as written by 'digitlab train'."""
    from digitlab.config import TrainConfig
    from digitlab.training import train

    root = tmp_path_factory.mktemp("evaluate-runs")
    return train(
        TrainConfig(model="fast", train_subset=300, val_size=500, epochs=1, batch_size=32, threads=1,
                    optimizer="adam", lr=3e-3, schedule="constant", label_smoothing=0.0, report=False,
                    name="tiny", runs_dir=str(root)),
        progress="quiet",
    )


def test_evaluate_run_reproduces_the_recorded_test_accuracy(tiny_run):
    from digitlab.data import load_dataset, split
    from digitlab.evaluate import evaluate_run

    m = evaluate_run(tiny_run.path)
    recorded = tiny_run.metrics["test"]
    # Exactly the same predictions: the same number right (training stores a float32 mean) and
    # the same confusion matrix and log loss as the full evaluation written at training time.
    assert m["n"] == 10_000 and m["matches_recorded"] is True
    assert round(m["accuracy"] * m["n"]) == round(recorded["accuracy"] * m["n"])
    assert m["accuracy"] == pytest.approx(recorded["accuracy"], abs=1e-7)
    assert m["confusion_matrix"] == recorded["confusion_matrix"]
    assert m["log_loss"] == pytest.approx(recorded["log_loss"], rel=1e-4)
    # The split is rebuilt from config.json the way training built it.
    cfg = json.loads((tiny_run.path / "config.json").read_text())
    sp = split(load_dataset(cfg["dataset"], cfg.get("data_dir")), cfg["split"], cfg["val_size"], seed=42)
    assert np.bincount(sp.test_y, minlength=10).tolist() == np.array(m["confusion_matrix"]).sum(axis=1).tolist()
    expected = {"confusion_matrix", "confusion_matrix_normalized", "f1_per_class", "reliability",
                "hardest_examples", "predictions"}
    assert set(m["figures"]) == expected
    for path in m["figures"].values():
        assert Path(path).parent == tiny_run.path / "figures" and Path(path).stat().st_size > 5_000


def test_evaluate_run_other_splits_tta_and_errors(tiny_run, tmp_path):
    from digitlab.errors import ConfigError, RunError
    from digitlab.evaluate import evaluate_run, load_split

    val = evaluate_run(tiny_run.path, split="val", out=tmp_path)
    assert val["n"] == 500 and val["matches_recorded"] is True
    assert (tmp_path / "val_confusion_matrix.png").is_file()
    # The whole training split (the run trained on 300 of its images); not scored here, it is slow.
    x, y, classes = load_split(tiny_run.path, "train")
    assert x.shape == (59_500, 28, 28) and x.dtype == np.uint8 and len(y) == 59_500 and classes == DIGITS
    tta = evaluate_run(tiny_run.path, split="val", tta=True, figures=False)
    assert tta["tta"] is True and tta["n"] == 500 and 0.1 < tta["accuracy"] <= 1.0 and "figures" not in tta
    assert tta["log_loss"] != pytest.approx(val["log_loss"])
    with pytest.raises(ConfigError, match="Unknown split"):
        evaluate_run(tiny_run.path, split="holdout")
    with pytest.raises(RunError, match="No run found"):
        evaluate_run(tmp_path / "nothing-here")


def test_cli_evaluate(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from digitlab.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(tiny_run.path), "--split", "val", "--json", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["matches_recorded"] is True and len(data["hardest"]) == 25
    assert {"report", "confusion_matrix", "most_confused", "ece", "reliability", "top_k_accuracy"} <= set(data)
    text = runner.invoke(app, ["evaluate", str(tiny_run.path), "--split", "val", "--out", str(tmp_path)])
    assert text.exit_code == 0, text.output
    assert "macro avg" in text.stdout and "matches the" in text.stdout and "hardest examples" in text.stdout
    bad = runner.invoke(app, ["evaluate", str(tiny_run.path), "--split", "nope"])
    assert bad.exit_code == 2 and "Unknown split" in bad.output
