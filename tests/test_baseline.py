"""The scikit-learn baselines: same accuracy as scikit-learn itself, saved as a usable logreg run."""

from __future__ import annotations

import numpy as np
import pytest

from digitlab.baseline import baseline
from digitlab.errors import ConfigError
from digitlab.predict import Predictor


@pytest.mark.parametrize("kind", ["logreg", "linear-svc"])
def test_baseline_matches_sklearn_and_reloads(tmp_path, kind):
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    from digitlab.data import load_dataset, split

    run = baseline("digits", kind, split="default", scaler="unit", max_iter=2000, runs_dir=str(tmp_path),
                   name=kind, report=False)
    sp = split(load_dataset("digits"), "default")
    est = (LogisticRegression(max_iter=2000, random_state=0) if kind == "logreg"
           else LinearSVC(max_iter=2000, random_state=0, dual="auto"))
    est.fit(sp.train_x.reshape(len(sp.train_x), -1) / 16.0, sp.train_y)
    sk_pred = est.predict(sp.test_x.reshape(len(sp.test_x), -1) / 16.0)
    # The run's logreg model reproduces scikit-learn's decisions exactly.
    ours = Predictor.from_run(run.path).predict_proba(sp.test_x).argmax(1)
    np.testing.assert_array_equal(ours, sk_pred)
    assert run.metrics["test"]["accuracy"] == pytest.approx((sk_pred == sp.test_y).mean())
    assert run.metrics["test"]["accuracy"] > 0.9
    assert "confusion_matrix" in run.metrics["test"] or "confusion" in str(run.metrics["test"].keys())


def test_notebook_000_baseline_reaches_about_92_percent(tmp_path):
    # The notebook fits on 60,000 images (~92% on validation); a 10,000-image subset keeps the test fast.
    run = baseline("mnist", "logreg", split="notebook-000", train_subset=10000, runs_dir=str(tmp_path),
                   report=False)
    assert 0.89 <= run.metrics["val"]["accuracy"] <= 0.95


def test_bad_baseline_options():
    with pytest.raises(ConfigError, match="Unknown baseline"):
        baseline("digits", "forest")
    with pytest.raises(ConfigError, match="C must be a positive"):
        baseline("digits", "logreg", C=0)
