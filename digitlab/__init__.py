"""digitlab: handwritten-digit classifiers end to end.

The Python API is the same as the command line:

    >>> import digitlab
    >>> run = digitlab.train(digitlab.TrainConfig(epochs=1))
    >>> run.metrics["test"]["accuracy"]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Lazy attributes keep `import digitlab` (and so `digitlab --help`) fast: torch loads on first use.
_LAZY = {
    "load_dataset": "digitlab.data",
    "split": "digitlab.data",
    "build_model": "digitlab.models",
    "list_models": "digitlab.models",
    "TrainConfig": "digitlab.training",
    "train": "digitlab.training",
    "Run": "digitlab.runs",
    "Predictor": "digitlab.predict",
    "load_reader": "digitlab.reader",
}

if TYPE_CHECKING:  # pragma: no cover
    from digitlab.data import load_dataset, split  # noqa: F401
    from digitlab.models import build_model, list_models  # noqa: F401
    from digitlab.predict import Predictor  # noqa: F401
    from digitlab.reader import load_reader  # noqa: F401
    from digitlab.runs import Run  # noqa: F401
    from digitlab.training import TrainConfig, train  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'digitlab' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
