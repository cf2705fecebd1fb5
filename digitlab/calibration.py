"""Calibrated confidence: temperature scaling fitted on validation data.

A network trained with label smoothing and augmentation is rarely calibrated: its confidence says
little about how often it is right, so "unsure" means little. Temperature scaling (Guo et al. 2017)
divides the logits by one number T, fitted by minimising the negative log-likelihood on held-out
data; it never changes which class wins, only how sure the model says it is.

``calibrate_run(run)`` fits T on the run's validation split (optionally with a copy of it rendered on
paper and read back through ``digitlab.preprocess``, so that T also fits the images users send), then
stores ``temperature``, a threshold re-chosen on the calibrated probabilities, and the figures of the
fit in ``model.json``. ``Predictor`` applies the stored T to every probability it returns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.errors import ConfigError, RunError
from digitlab.predict import Predictor, apply_temperature, log_probs

T_RANGE = (0.05, 20.0)
RENDERED_SAMPLE = 2000  # validation digits also rendered on paper (preprocess costs ~10-40 ms a digit)


def _nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    s = z / t
    s = s - s.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(s).sum(1)) - s[np.arange(len(y)), y]))


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The T in ``T_RANGE`` that minimises the negative log-likelihood of ``labels`` (a 1-D search on log T)."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(labels, np.int64)
    p = np.asarray(probs)
    if p.ndim != 2 or len(p) != len(y) or len(y) == 0:
        raise ConfigError(f"Temperature scaling needs probabilities (N, K) and N labels, got {p.shape} and "
                          f"{y.shape}: give the validation predictions and their labels.")
    z = log_probs(p)
    lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    res = minimize_scalar(lambda u: _nll(z, y, float(np.exp(u))), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(res.x))


def calibrate_run(run: Any, rendered: bool = True, seed: int = 0, tta: str | None = None) -> dict[str, Any]:
    """Fit T on ``run``'s validation split and store it in its ``model.json``; returns the fit's figures.

    ``tta`` ("shift" or "none") also sets the model's test-time augmentation in model.json first, so
    the temperature is fitted on the probabilities the model will give (None: keep what is there).

    ``rendered`` adds the validation digits drawn on paper and read back by ``preprocess`` (see
    ``digitlab.realism.render_through_preprocess``): the clean validation set alone is what the model
    was trained on, while users send photos and scans.
    """
    from digitlab.evaluate import choose_threshold, expected_calibration_error, run_splits
    from digitlab.runs import MODEL_META, resolve_run
    from digitlab.utils import atomic_write_json

    path = resolve_run(run)
    splits = run_splits(path)
    if len(splits.val_y) == 0:
        raise RunError(f"Run '{path}' has no validation split to fit a temperature on: train it with a validation "
                       "set (any split scheme but 'none').")
    if tta not in (None, "none", "shift"):
        raise ConfigError(f"Unknown test-time augmentation '{tta}'; choose shift or none.")
    predictor = Predictor.from_run(path)
    predictor.temperature = 1.0
    if tta is not None:
        predictor.tta = None if tta == "none" else tta
    x, y = splits.val_x, splits.val_y
    if rendered:
        from digitlab.realism import render_through_preprocess

        x = np.concatenate([x, render_through_preprocess(x[:RENDERED_SAMPLE], seed=seed)])
        y = np.concatenate([y, y[:RENDERED_SAMPLE]])
    probs = predictor.predict_proba(x)
    t = fit_temperature(probs, y)
    calibrated = apply_temperature(probs, t)
    ece_before, _ = expected_calibration_error(y, probs)
    ece_after, _ = expected_calibration_error(y, calibrated)
    meta_path = Path(path) / MODEL_META
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    figures = {
        "temperature": t,
        "fitted_on": f"validation split ({len(splits.val_y)} images)"
        + (f" + {min(RENDERED_SAMPLE, len(splits.val_y))} of them rendered on paper" if rendered else ""),
        "size": int(len(y)),
        "nll_before": _nll(log_probs(probs), y, 1.0),
        "nll_after": _nll(log_probs(probs), y, t),
        "ece_before": float(ece_before),
        "ece_after": float(ece_after),
    }
    meta["temperature"] = t
    meta["calibration"] = figures
    if predictor.tta:
        meta["tta"] = predictor.tta
    else:
        meta.pop("tta", None)
    meta["threshold"] = choose_threshold(y, calibrated)
    atomic_write_json(meta_path, meta)
    return {**figures, "threshold": meta["threshold"], "tta": predictor.tta, "run": str(path)}
