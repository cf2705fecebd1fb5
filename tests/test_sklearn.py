"""DigitClassifier: scikit-learn's estimator checks, clone, searches, cross-validation, pipelines, images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import loguniform
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from digitlab.sklearn import DigitClassifier

# Every applicable check passes, so nothing is listed as an expected failure. Two checks skip
# themselves in this environment: check_classifier_data_not_an_array (needs pandas, not installed)
# and check_array_api_input (needs SCIPY_ARRAY_API=1; the estimator converts to numpy anyway).
# Checks about sample_weight, class_weight, partial_fit, decision_function and multi-label
# targets are not generated because the estimator has none of those.
CHECKED = DigitClassifier(epochs=10, hidden=(16,), lr=1e-2, random_state=0, threads=1)


@parametrize_with_checks([CHECKED], expected_failed_checks=lambda est: {})
def test_sklearn_estimator_checks(estimator, check) -> None:
    check(estimator)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    rng = np.random.RandomState(0)
    idx = rng.permutation(len(d.target))[:600]
    return d.data[idx], d.target[idx]


def quick(**kw) -> DigitClassifier:
    return DigitClassifier(**{"epochs": 8, "hidden": (32,), "lr": 3e-3, "random_state": 0, "threads": 1, **kw})


def test_clone_keeps_params_and_drops_fitted_state(digits) -> None:
    X, y = digits
    est = quick(hidden=(24, 12), activation="tanh").fit(X, y)
    twin = clone(est)
    assert twin.get_params() == est.get_params()
    assert not hasattr(twin, "model_") and hasattr(est, "model_")
    twin.set_params(lr=0.05, hidden=(8,))
    assert twin.get_params()["hidden"] == (8,) and est.get_params()["hidden"] == (24, 12)


def test_fit_predict_on_digits_with_inferred_square_images(digits) -> None:
    X, y = digits
    est = quick().fit(X[:450], y[:450])
    assert est.image_shape_ == (8, 8) and est.n_features_in_ == 64
    assert list(est.classes_) == list(range(10))
    proba = est.predict_proba(X[450:])
    assert proba.shape == (150, 10)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-9)
    assert est.score(X[450:], y[450:]) > 0.85
    assert len(est.loss_curve_) == 8 and est.loss_curve_[-1] < est.loss_curve_[0]
    # (n, H, W) images give the same answers as their flat rows
    np.testing.assert_allclose(est.predict_proba(X[450:].reshape(-1, 8, 8)), proba)
    with pytest.raises(ValueError, match="4x16"):
        est.predict_proba(X[450:].reshape(-1, 4, 16))


def test_same_random_state_same_model_and_caller_rng_untouched(digits) -> None:
    X, y = digits
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = quick(dropout=0.2).fit(X, y).predict_proba(X[:50])
    assert torch.equal(torch.get_rng_state(), before)
    b = quick(dropout=0.2).fit(X, y).predict_proba(X[:50])
    np.testing.assert_array_equal(a, b)
    c = quick(dropout=0.2, random_state=1).fit(X, y).predict_proba(X[:50])
    assert not np.array_equal(a, c)


def test_grid_search_over_two_params(digits) -> None:
    X, y = digits
    search = GridSearchCV(quick(epochs=5), {"hidden": [(16,), (48,)], "lr": [1e-3, 1e-2]}, cv=2)
    search.fit(X, y)
    assert set(search.best_params_) == {"hidden", "lr"}
    assert len(search.cv_results_["params"]) == 4
    assert search.best_score_ > 0.85
    assert search.best_estimator_.score(X, y) > 0.9


def test_randomized_search_and_cross_val_score(digits) -> None:
    X, y = digits
    # notebook 003's distributions: layers, neurons and a reciprocal (log-uniform) learning rate
    dists = {"hidden": [(50,), (50, 50)], "lr": loguniform(3e-4, 3e-2)}
    search = RandomizedSearchCV(quick(epochs=4), dists, n_iter=2, cv=2, random_state=0).fit(X, y)
    assert 3e-4 <= search.best_params_["lr"] <= 3e-2
    scores = cross_val_score(quick(), X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.85


def test_pipeline_with_external_scaler_and_string_labels(digits) -> None:
    X, y = digits
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    pipe = make_pipeline(StandardScaler(), quick(scaler=None)).fit(X[:450], names[y[:450]])
    pred = pipe.predict(X[450:])
    assert pred.dtype == names.dtype and set(pred) <= set(names)
    assert pipe.score(X[450:], names[y[450:]]) > 0.85


def test_early_stopping_keeps_best_epoch(digits) -> None:
    X, y = digits
    est = quick(epochs=40, lr=3e-2, early_stopping=True, patience=2, validation_fraction=0.2).fit(X, y)
    assert est.n_iter_ < 40 and len(est.validation_scores_) == est.n_iter_
    assert 1 <= est.best_epoch_ <= est.n_iter_ - 2


def test_uint8_mnist_images_with_a_cnn(shared_data) -> None:
    from digitlab.data import load_dataset

    ds = load_dataset("mnist")
    X, y = ds.train_images[:400], ds.train_labels[:400]
    est = quick(model="cnn-small", epochs=3, scaler="unit", lr=3e-3).fit(X.reshape(400, -1), y)
    assert est.image_shape_ == (28, 28) and est.input_max_ == 255.0
    assert est.score(ds.test_images[:200].reshape(200, -1), ds.test_labels[:200]) > 0.5


def test_non_square_features_and_bad_image_shape() -> None:
    rng = np.random.RandomState(0)
    X, y = rng.normal(size=(60, 10)), np.repeat([0, 1, 2], 20)
    assert quick(epochs=2).fit(X, y).image_shape_ == (1, 10)
    assert quick(epochs=2, image_shape=(2, 5)).fit(X, y).image_shape_ == (2, 5)
    with pytest.raises(ValueError, match="image_shape"):
        quick(image_shape=(3, 3)).fit(X, y)
    with pytest.raises(ValueError, match="2 classes"):
        quick().fit(X, np.zeros(60))
