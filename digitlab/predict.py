"""Inference on a saved run: the ``Predictor`` used by evaluate, predict, read, serve and bench.

A Predictor loads the model once and turns uint8 images (N, H, W) shaped like the training data into
class probabilities, with the run's own scaler; files and photos go through ``digitlab.preprocess``
first, the way MNIST was made.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digitlab.runs import load_model, resolve_run


@dataclass
class Prediction:
    """One image's answer: class index and name, confidence, top 3, all probabilities, unsure flag."""

    label: int
    name: str
    confidence: float
    top: list[tuple[str, float]]
    probabilities: list[float]
    unsure: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.name,
            "index": self.label,
            "confidence": self.confidence,
            "top3": [{"class": c, "probability": p} for c, p in self.top],
            "probabilities": self.probabilities,
            "unsure": self.unsure,
        }


class Predictor:
    """A trained model ready for inference; safe to share between threads."""

    def __init__(
        self,
        model: torch.nn.Module,
        meta: dict[str, Any],
        device: str | torch.device = "cpu",
        threshold: float | None = None,
        path: Path | None = None,
    ) -> None:
        from digitlab.data import Scaler

        self.model = model.eval()
        self.meta = meta
        self.path = path
        self.device = torch.device(device)
        self.classes: list[str] = list(meta["classes"])
        self.scaler = Scaler.from_dict(meta["scaler"])
        self.target: str = meta.get("preprocess", {}).get("target", "mnist")
        self.input_shape = tuple(meta["spec"]["input_shape"])
        default = meta.get("threshold")
        self.threshold: float = float(threshold if threshold is not None else (default if default is not None else 0.5))
        self._lock = threading.Lock()

    @classmethod
    def from_run(
        cls, run: str | Path, device: str | torch.device = "cpu", threshold: float | None = None
    ) -> Predictor:
        path = resolve_run(run)
        model, meta = load_model(path, device)
        return cls(model, meta, device, threshold, path)

    @property
    def name(self) -> str:
        return self.meta["spec"]["name"]

    def predict_proba(self, images: np.ndarray | torch.Tensor, batch_size: int = 4096) -> np.ndarray:
        """Probabilities (N, K) for uint8 images (N, H, W) (or one (H, W) image) in the training format."""
        x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
        if x.ndim == 2:
            x = x.unsqueeze(0)
        out = []
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                xb = self.scaler.transform(x[i : i + batch_size].to(self.device)).unsqueeze(1)
                out.append(torch.softmax(self.model(xb).float(), 1).cpu())
        if not out:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return torch.cat(out).numpy()

    def explain_probs(self, probs: np.ndarray) -> list[Prediction]:
        """Turn rows of probabilities into Predictions (top 3, unsure below the threshold)."""
        preds = []
        for p in probs:
            order = np.argsort(-p)
            k = int(order[0])
            preds.append(
                Prediction(
                    label=k,
                    name=self.classes[k],
                    confidence=float(p[k]),
                    top=[(self.classes[int(j)], float(p[j])) for j in order[:3]],
                    probabilities=[float(v) for v in p],
                    unsure=bool(p[k] < self.threshold),
                )
            )
        return preds

    def predict(self, images: np.ndarray) -> list[Prediction]:
        return self.explain_probs(self.predict_proba(images))
