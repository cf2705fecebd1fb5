"""Temperature scaling (digitlab.calibration) and its use by Predictor."""

from __future__ import annotations

import json

import numpy as np
import pytest

from digitlab.calibration import apply_temperature, fit_temperature
from digitlab.errors import ConfigError
from digitlab.evaluate import expected_calibration_error


def _overconfident(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z) (so softmax(z) is calibrated by construction), reported as softmax(4 z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, 10))
    calibrated = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(10, p=row) for row in calibrated])
    hot = np.exp(4 * z - (4 * z).max(1, keepdims=True))
    return hot / hot.sum(1, keepdims=True), y


def test_temperature_scaling_lowers_ece_of_an_overconfident_model():
    probs, y = _overconfident()
    t = fit_temperature(probs[:2000], y[:2000])
    assert 3.0 < t < 5.0  # it finds the factor of 4 back
    before = expected_calibration_error(y[2000:], probs[2000:])[0]
    after = expected_calibration_error(y[2000:], apply_temperature(probs[2000:], t))[0]
    assert before > 0.1 and after < before / 3
    # the winning class never changes
    assert np.array_equal(apply_temperature(probs, t).argmax(1), probs.argmax(1))


def test_apply_temperature_matches_dividing_the_logits():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, (50, 10))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    q = np.exp(z / 2.5) / np.exp(z / 2.5).sum(1, keepdims=True)
    assert np.allclose(apply_temperature(p, 2.5), q, atol=1e-6)
    assert apply_temperature(p, 1.0) is p


def test_fit_temperature_refuses_mismatched_inputs():
    with pytest.raises(ConfigError, match="needs probabilities"):
        fit_temperature(np.ones((3, 10)) / 10, np.zeros(4, int))


def test_predictor_applies_the_stored_temperature(quick_run, tmp_path):
    import shutil

    from digitlab.data import load_dataset
    from digitlab.predict import Predictor

    run = tmp_path / "run"
    shutil.copytree(quick_run, run)
    x = load_dataset("mnist").test_images[:200]
    plain = Predictor.from_run(run).predict_proba(x)
    meta = json.loads((run / "model.json").read_text())
    meta["temperature"] = 2.0
    (run / "model.json").write_text(json.dumps(meta))
    hot = Predictor.from_run(run)
    assert hot.temperature == 2.0
    assert np.allclose(hot.predict_proba(x), apply_temperature(plain, 2.0), atol=1e-4)
