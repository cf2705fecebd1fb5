"""scikit-learn baselines on raw scaled pixels (notebook 000's ~92% logistic regression, 003's linear SVC).

A fitted linear classifier is stored as the ``logreg`` model (784 -> 10, the same 7,850 parameters),
so evaluate, explain, predict and serve work on a baseline run like on any other run.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import torch

from digitlab import data as dl
from digitlab.config import TrainConfig, validate
from digitlab.errors import ConfigError
from digitlab.models import build_model
from digitlab.runs import Run, save_model, write_history
from digitlab.training import new_run_dir, preprocess_target
from digitlab.utils import atomic_write_json

BASELINES = {
    "logreg": "scikit-learn LogisticRegression (lbfgs, multinomial), as in notebook 000",
    "linear-svc": "scikit-learn LinearSVC (one-vs-rest, squared hinge), notebook 003's extra",
}


def _fit(kind: str, x: np.ndarray, y: np.ndarray, C: float, max_iter: int, seed: int) -> Any:
    # scikit-learn: imported only here, as in the rest of digitlab (a sixth of a fast training's start-up)
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    if kind == "logreg":
        clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    else:
        clf = LinearSVC(C=C, max_iter=max_iter, random_state=seed, dual="auto")
    # The notebook's default max_iter stops lbfgs before convergence; that is its recipe, not a fault.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf


def baseline(
    dataset: str = "mnist",
    kind: str = "logreg",
    split: str = "notebook-000",
    scaler: str = "unit",
    C: float = 1.0,
    max_iter: int = 100,
    train_subset: int | None = None,
    seed: int = 0,
    runs_dir: str | None = None,
    name: str | None = None,
    data_dir: str | None = None,
    report: bool = True,
) -> Run:
    """Fit a linear scikit-learn baseline and save it as a run folder."""
    from digitlab.evaluate import choose_threshold, evaluate_predictions  # scikit-learn

    if kind not in BASELINES:
        raise ConfigError(f"Unknown baseline '{kind}': choose one of {', '.join(BASELINES)}.")
    if not (C > 0):
        raise ConfigError(f"C must be a positive number, got {C}.")
    cfg = TrainConfig(
        dataset=dataset, split=split, scaler=scaler, model="logreg", train_subset=train_subset, seed=seed,
        runs_dir=runs_dir, name=name or None, data_dir=data_dir, recipe=f"baseline-{kind}", epochs=1,
    )
    validate(cfg)
    ds = dl.load_dataset(dataset, data_dir=data_dir)
    sp = dl.split(ds, scheme=split, seed=42)
    train_x, train_y = sp.train_x, sp.train_y
    if train_subset is not None and train_subset < len(train_x):
        keep = np.random.default_rng(seed).permutation(len(train_x))[:train_subset]
        train_x, train_y = train_x[keep], train_y[keep]
    sc = dl.make_scaler(scaler, max_value=ds.max_value).fit(train_x)

    def flat(x: np.ndarray) -> np.ndarray:
        return sc.transform(x).reshape(len(x), -1).numpy()

    run_dir = new_run_dir(cfg.replace(model=f"baseline-{kind}"))
    t0 = time.perf_counter()
    clf = _fit(kind, flat(train_x), train_y, C, max_iter, seed)
    fit_seconds = time.perf_counter() - t0

    # Store the linear map as the logreg model: logits = x W^T + b. Classes absent from a tiny training
    # set get a very negative bias so they are never predicted.
    model = build_model("logreg", ds.input_shape, ds.num_classes)
    weight = np.zeros((ds.num_classes, int(np.prod(ds.input_shape))), np.float32)
    bias = np.full(ds.num_classes, -1e4, np.float32)
    coef = clf.coef_ if clf.coef_.shape[0] > 1 else np.vstack([-clf.coef_, clf.coef_])
    intercept = np.atleast_1d(clf.intercept_)
    if len(intercept) == 1:
        intercept = np.array([-intercept[0], intercept[0]])
    weight[clf.classes_] = coef
    bias[clf.classes_] = intercept
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight))
        linear.bias.copy_(torch.from_numpy(bias))
    model.eval()

    def probs(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(model(sc.transform(x).unsqueeze(1)), 1).numpy()

    metrics: dict[str, Any] = {"train_seconds": fit_seconds, "epochs": 1, "baseline": kind}
    split_probs = {}
    parts = {"train": (train_x, train_y), "val": (sp.val_x, sp.val_y), "test": (sp.test_x, sp.test_y)}
    for part, (x, y) in parts.items():
        if len(y) == 0:
            continue
        p = probs(x)
        split_probs[part] = p
        loss = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))
        metrics[part] = {"accuracy": float((p.argmax(1) == y).mean()), "loss": loss, "size": len(y)}
    full = evaluate_predictions(sp.test_y, split_probs["test"], ds.classes)
    metrics["test"].update({k: v for k, v in full.items() if k != "accuracy"})
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", {**cfg.to_dict(), "baseline": kind, "C": C, "max_iter": max_iter})
    row = {"epoch": 1, "train_loss": metrics["train"]["loss"], "train_acc": metrics["train"]["accuracy"],
           "val_loss": metrics.get("val", {}).get("loss", float("nan")),
           "val_acc": metrics.get("val", {}).get("accuracy", float("nan")), "lr": float("nan"),
           "seconds": fit_seconds, "train_seconds": fit_seconds}
    write_history(run_dir, [row])
    threshold = choose_threshold(sp.val_y, split_probs["val"]) if "val" in split_probs else None
    save_model(run_dir, model, {
        "dataset": ds.name, "classes": list(ds.classes), "max_value": ds.max_value, "scaler": sc.to_dict(),
        "preprocess": {"target": preprocess_target(ds.name)}, "threshold": threshold,
        "test_accuracy": metrics["test"]["accuracy"], "val_accuracy": metrics.get("val", {}).get("accuracy"),
        "baseline": kind,
    })
    atomic_write_json(run_dir / "metrics.json", metrics)
    run = Run.load(run_dir)
    if report:
        try:
            from digitlab.report import write_report  # matplotlib
        except ImportError:
            write_report = None
        if write_report is not None:
            write_report(run, test_probs=split_probs["test"], splits=sp)
    return run
