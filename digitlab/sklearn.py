"""``DigitClassifier``: digitlab's models as a scikit-learn estimator.

It works with ``GridSearchCV``, ``RandomizedSearchCV``, ``cross_val_score``, ``Pipeline`` and
``clone`` (notebook 003's Keras wrapper failed with a cloning error): ``__init__`` only stores its
parameters, everything learned ends in ``_`` and ``fit`` starts from scratch every time.

``X`` is ``(n_samples, n_features)`` (flat images such as scikit-learn's digits or flattened
MNIST, float or uint8) or ``(n_samples, H, W)`` images. Flat rows become images of
``image_shape``, else square images when ``n_features`` is a square, else ``1 x n_features`` (an
MLP sees the same flat vector either way). Labels may be any hashable values (``classes_``).

Fitting is the training engine's ``fit`` on the arrays (``TrainData.from_arrays``) with a constant
learning rate, no augmentation and no label smoothing; early stopping is the engine's, on the
validation loss. Mini-batches are shuffled by a generator seeded from ``random_state``; weights and
dropout use a forked torch RNG, so fitting leaves the caller's random state alone and the same
``random_state`` gives the same model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from digitlab.config import TrainConfig, validate
from digitlab.data import make_scaler
from digitlab.models import MODELS
from digitlab.training import Hooks, TrainData, TrainState, build, fit
from digitlab.utils import resolve_device

_PREDICT_BATCH = 4096


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Use ``n`` torch threads inside the block, then restore the caller's setting."""
    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class DigitClassifier(ClassifierMixin, BaseEstimator):
    """A digitlab model trained on arrays, as a scikit-learn classifier.

    Parameters
    ----------
    model : a registered model name (``mlp``, ``logreg``, ``cnn-small``, ``fast``, ...).
    hidden, activation : the MLP's hidden layer sizes and activation (MLP only).
    dropout : dropout of models that have that option; None keeps the model's default.
    optimizer, lr, momentum, weight_decay : as ``digitlab train`` (constant learning rate).
    epochs, batch_size : passes over the data and mini-batch size (clipped to the sample count).
    early_stopping, patience, validation_fraction : hold out a stratified fraction, stop after
        ``patience`` epochs without a lower validation loss and keep the best epoch's weights.
    scaler : ``standard`` (per feature), ``unit`` (divide by 255 for uint8, else by the largest
        absolute training value), ``symmetric``, ``mean-std``, or None/``none`` to feed X unchanged
        (e.g. after a StandardScaler in a Pipeline).
    image_shape : (H, W) for flat rows; None infers it (see the module docstring).
    random_state : int, RandomState or None (fresh randomness), as everywhere in scikit-learn.
    device : ``cpu``, ``cuda``, ``mps`` or ``auto``.
    threads : torch CPU threads while fitting and predicting (None: leave torch's setting); use 1
        when a search runs several fits in parallel (``n_jobs``).
    verbose : print one line per epoch when > 0.
    """

    def __init__(
        self,
        model: str = "mlp",
        hidden: tuple[int, ...] = (100,),
        activation: str = "relu",
        dropout: float | None = None,
        optimizer: str = "adam",
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        epochs: int = 20,
        batch_size: int = 32,
        early_stopping: bool = False,
        patience: int = 5,
        validation_fraction: float = 0.1,
        scaler: str | None = "standard",
        image_shape: tuple[int, int] | None = None,
        random_state: Any = None,
        device: str = "cpu",
        threads: int | None = None,
        verbose: int = 0,
    ) -> None:
        self.model = model
        self.hidden = hidden
        self.activation = activation
        self.dropout = dropout
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.scaler = scaler
        self.image_shape = image_shape
        self.random_state = random_state
        self.device = device
        self.threads = threads
        self.verbose = verbose

    # --- input ------------------------------------------------------------------------------------

    def _flatten(self, X: Any) -> tuple[Any, tuple[int, int] | None]:
        """(n, H, W) images to (n, H*W) rows, remembering (H, W); anything else passes through."""
        if getattr(X, "ndim", None) == 3:
            arr = np.asarray(X)
            return arr.reshape(len(arr), -1), arr.shape[1:]
        return X, None

    def _as_images(self, X: np.ndarray) -> np.ndarray:
        # A writable, contiguous float32 copy: torch.from_numpy needs one, and read-only or
        # memory-mapped input stays untouched.
        return np.array(X, dtype=np.float32, order="C", copy=True).reshape(len(X), *self.image_shape_)

    def _image_shape(self, n_features: int, given: tuple[int, int] | None) -> tuple[int, int]:
        if self.image_shape is not None:
            shape = tuple(int(v) for v in self.image_shape)
            if len(shape) != 2 or math.prod(shape) != n_features:
                raise ValueError(f"image_shape={self.image_shape} does not hold the {n_features} features of X: "
                                 "give (H, W) with H * W == n_features, or None to infer it.")
            return shape  # type: ignore[return-value]
        if given is not None:
            return given
        side = math.isqrt(n_features)
        return (side, side) if side * side == n_features else (1, n_features)

    # --- fit --------------------------------------------------------------------------------------

    def fit(self, X: Any, y: Any) -> DigitClassifier:
        """Train a fresh model on X, y; returns self."""
        X, shape = self._flatten(X)
        X, y = validate_data(self, X, y, dtype="numeric")
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"DigitClassifier needs at least 2 classes in y, got 1 class ({self.classes_[0]!r}).")
        self.image_shape_ = self._image_shape(X.shape[1], shape)
        images = self._as_images(X)
        self.input_max_ = 255.0 if X.dtype == np.uint8 else float(np.abs(images).max()) or 1.0
        if self.scaler is None or str(self.scaler).lower() == "none":
            self.scaler_ = make_scaler("unit", max_value=1.0)
        else:
            self.scaler_ = make_scaler(str(self.scaler), max_value=self.input_max_)

        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        train_idx, val_idx = self._validation_split(y_index, seed)
        self.scaler_.fit(images[train_idx])
        config = TrainConfig(
            model=self.model, model_options=self._options(), optimizer=self.optimizer, lr=float(self.lr),
            momentum=float(self.momentum), weight_decay=float(self.weight_decay), schedule="constant",
            epochs=int(self.epochs), batch_size=max(1, min(int(self.batch_size), len(train_idx))),
            label_smoothing=0.0, early_stopping=len(val_idx) > 0, monitor="val_loss", patience=int(self.patience),
            device=self.device, seed=seed,
        )
        validate(config)
        self.config_ = config.to_dict()
        device = resolve_device(config.device)
        val = (images[val_idx], y_index[val_idx]) if len(val_idx) else None
        data = TrainData.from_arrays((images[train_idx], y_index[train_idx]), val, self.scaler_,
                                     list(self.classes_), device)
        with torch.random.fork_rng(devices=[]), _threads(self.threads):
            torch.manual_seed(seed)  # the initial weights and dropout: the caller's generator is left alone
            model = build(config, data)
            state = fit(model, data, config, Hooks(epoch_end=[self._print_epoch] if self.verbose else []))
        self.loss_curve_ = [row["train_loss"] for row in state.history]
        self.validation_scores_ = [row["val_acc"] for row in state.history] if val is not None else []
        self.best_epoch_ = state.best_epoch if val is not None else None
        self.n_iter_ = len(state.history)
        self.model_ = model.eval()
        return self

    def _print_epoch(self, state: TrainState) -> None:
        row = state.history[-1]
        line = f"epoch {state.epoch}/{state.config.epochs}  loss {row['train_loss']:.4f}"
        if not math.isnan(row["val_loss"]):
            line += f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}"
        print(line)

    def _validation_split(self, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        index = np.arange(len(y))
        if not self.early_stopping:
            return index, index[:0]
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction={self.validation_fraction} must lie strictly between 0 and 1.")
        try:
            return train_test_split(index, test_size=self.validation_fraction, stratify=y, random_state=seed)
        except ValueError:  # too few samples of some class to stratify
            return train_test_split(index, test_size=self.validation_fraction, random_state=seed)

    def _options(self) -> dict[str, Any]:
        """The model options this estimator's parameters set (only those the model has)."""
        info = MODELS.get(str(self.model).strip().lower().replace("_", "-"))
        defaults = info.defaults if info else {}  # unknown names: validate says which exist
        options: dict[str, Any] = {}
        if isinstance(defaults.get("hidden"), tuple):
            options["hidden"] = [int(h) for h in np.atleast_1d(self.hidden)]
        if "activation" in defaults:
            options["activation"] = self.activation
        if self.dropout is not None and "dropout" in defaults:
            options["dropout"] = self.dropout
        return options

    # --- predict ----------------------------------------------------------------------------------

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self)
        X, shape = self._flatten(X)
        if shape is not None and tuple(shape) != tuple(self.image_shape_):
            raise ValueError(f"X holds {shape[0]}x{shape[1]} images but the model was fitted on "
                             f"{self.image_shape_[0]}x{self.image_shape_[1]}.")
        X = validate_data(self, X, reset=False, dtype="numeric")
        images = self._as_images(X)
        device = next(self.model_.parameters()).device
        out = []
        with torch.inference_mode(), _threads(self.threads):
            for i in range(0, len(images), _PREDICT_BATCH):
                xb = torch.from_numpy(images[i : i + _PREDICT_BATCH]).to(device)
                logits = self.model_(self.scaler_.transform(xb).unsqueeze(1))
                out.append(torch.softmax(logits.double(), 1).cpu().numpy())
        return np.concatenate(out) if out else np.empty((0, len(self.classes_)))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each sample (values from ``classes_``)."""
        proba = self.predict_proba(X)  # first: it raises NotFittedError before classes_ is needed
        return self.classes_[np.argmax(proba, axis=1)]
