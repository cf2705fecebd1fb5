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


def test_a_shift_tta_model_averages_five_views_in_one_pass_and_tempers_the_average(quick_run, tmp_path):
    import shutil

    from digitlab.data import load_dataset
    from digitlab.predict import Predictor, shift_tta_proba

    run = tmp_path / "run"
    shutil.copytree(quick_run, run)
    x = load_dataset("mnist").test_images[:100]
    untouched = Predictor.from_run(run)
    expected = apply_temperature(shift_tta_proba(untouched.predict_proba, x), 1.7)
    meta = json.loads((run / "model.json").read_text())
    meta.update(tta="shift", temperature=1.7)
    (run / "model.json").write_text(json.dumps(meta))
    tta = Predictor.from_run(run)
    assert tta.tta == "shift"
    got = tta.predict_proba(x)
    assert got.shape == (100, 10) and np.allclose(got, expected, atol=1e-5)
    assert not np.allclose(got, apply_temperature(untouched.predict_proba(x), 1.7), atol=1e-3)
    assert tta.predict_proba(x[:0]).shape == (0, 10)


def test_calibrate_with_tta_stores_it_and_fits_on_the_averaged_probabilities(quick_run, tmp_path):
    import shutil

    from digitlab.calibration import calibrate_run
    from digitlab.predict import Predictor

    run = tmp_path / "run"
    shutil.copytree(quick_run, run)
    with_tta = calibrate_run(run, rendered=False, tta="shift")
    meta = json.loads((run / "model.json").read_text())
    assert meta["tta"] == "shift" and with_tta["tta"] == "shift"
    assert Predictor.from_run(run).tta == "shift"
    without = calibrate_run(run, rendered=False, tta="none")
    assert "tta" not in json.loads((run / "model.json").read_text()) and without["tta"] is None
    assert with_tta["nll_before"] != without["nll_before"]  # fitted on different probabilities
    kept = calibrate_run(run, rendered=False)  # None keeps what model.json says
    assert kept["tta"] is None
    with pytest.raises(ConfigError, match="Unknown test-time augmentation"):
        calibrate_run(run, rendered=False, tta="flip")


def test_an_unknown_tta_in_model_json_is_one_clear_error(quick_run, tmp_path):
    import shutil

    from digitlab.predict import Predictor

    run = tmp_path / "run"
    shutil.copytree(quick_run, run)
    meta = json.loads((run / "model.json").read_text())
    meta["tta"] = "rotate"
    (run / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="test-time augmentation 'rotate'"):
        Predictor.from_run(run)
