"""Inference on a saved run: the ``Predictor`` used by evaluate, predict, read, serve and bench.

A Predictor loads the model once and turns uint8 images (N, H, W) shaped like the training data into
class probabilities, with the run's own scaler; files and photos go through ``digitlab.preprocess``
first, the way MNIST was made. ``runtime="onnx"`` runs the exported ONNX graph with onnxruntime
instead of PyTorch (the scaler is part of that graph, see ``digitlab.export``).

Predictions whose confidence is below the run's threshold (chosen on validation data at training
time, stored in model.json) are marked ``unsure``: they are the ones to send to a human.

Reading fields (a check's date or amount) is ``digitlab.fields.read_field``, built on this class.
"""

from __future__ import annotations

import textwrap
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digitlab.errors import ConfigError, ImageError
from digitlab.runs import load_model, resolve_run

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
RUNTIMES = ("torch", "onnx")


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


@dataclass
class FileResult:
    """The outcome for one image file: a prediction and the model's input, or the error's sentence."""

    source: str
    prediction: Prediction | None = None
    input: np.ndarray | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.prediction is not None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.source}
        if self.prediction is not None:
            out.update(self.prediction.to_dict())
        out["error"] = self.error
        return out


class Predictor:
    """A trained model ready for inference; safe to share between threads."""

    def __init__(
        self,
        model: torch.nn.Module,
        meta: dict[str, Any],
        device: str | torch.device = "cpu",
        threshold: float | None = None,
        path: Path | None = None,
        runtime: str = "torch",
    ) -> None:
        from digitlab.data import Scaler

        if runtime not in RUNTIMES:
            raise ConfigError(f"Unknown runtime '{runtime}'; choose torch or onnx.")
        # channels_last lets oneDNN pick its blocked convolution kernels: 2-3x the images/s on CPU
        # for the conv models, still fp32 (sums may round in another order); a no-op for MLPs.
        self.model = model.eval().to(memory_format=torch.channels_last)
        self._infer = _fold_batchnorm(self.model)
        self.meta = meta
        self.path = path
        self.device = torch.device(device)
        self.classes: list[str] = list(meta["classes"])
        self.scaler = Scaler.from_dict(meta["scaler"])
        self.target: str = meta.get("preprocess", {}).get("target", "mnist")
        self.input_shape = tuple(meta["spec"]["input_shape"])
        default = meta.get("threshold")
        self.threshold: float = float(threshold if threshold is not None else (default if default is not None else 0.5))
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"The threshold {self.threshold} is not a probability; give a value from 0 to 1.")
        # Temperature scaling fitted on validation data (digitlab.calibration); 1 for uncalibrated runs.
        self.temperature: float = float(meta.get("temperature") or 1.0)
        # Test-time augmentation chosen for this model (model.json "tta"): "shift" averages the image
        # and its four 1-pixel shifts in one batch; the temperature is fitted on (and applied to) that average.
        self.tta: str | None = meta.get("tta") or None
        if self.tta not in (None, "shift"):
            raise ConfigError(f"model.json asks for test-time augmentation '{self.tta}', which this digitlab does not "
                              "know; use 'shift' or remove the key.")
        self.runtime = runtime
        self._session: Any = None
        if runtime == "onnx":
            from digitlab.export import onnx_session

            self._session = onnx_session(model, meta, path)
        self._lock = threading.Lock()

    @classmethod
    def from_run(
        cls,
        run: str | Path,
        device: str | torch.device = "cpu",
        threshold: float | None = None,
        runtime: str = "torch",
    ) -> Predictor:
        path = resolve_run(run)
        model, meta = load_model(path, device)
        return cls(model, meta, device, threshold, path, runtime)

    @property
    def name(self) -> str:
        return self.meta["spec"]["name"]

    def predict_proba(self, images: np.ndarray | torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """Probabilities (N, K) for uint8 images (N, H, W) (or one (H, W) image) in the training format."""
        x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
        if x.ndim == 2:
            x = x.unsqueeze(0)
        elif x.ndim == 4 and x.shape[1] == 1:
            x = x[:, 0]
        if tuple(x.shape[1:]) != tuple(self.input_shape[1:]):
            raise ImageError(
                f"The images are {tuple(x.shape[1:])} but the model takes {tuple(self.input_shape[1:])}; "
                "preprocess them with Predictor.preprocess first."
            )
        # One forward pass at a time: the server's batching thread and /v1/read's threads share one model.
        with self._lock:
            if self.tta == "shift" and len(x):
                views = shifted_views(x)  # (5N, H, W): one forward pass for all five
                mean = self._proba(views, batch_size * 5, 1.0).reshape(5, len(x), -1).mean(0, dtype=np.float64)
                return apply_temperature(mean.astype(np.float32), self.temperature)
            return self._proba(x, batch_size, self.temperature)

    def _proba(self, x: torch.Tensor, batch_size: int, temperature: float) -> np.ndarray:
        if self._session is not None:
            return self._onnx_proba(x.numpy().astype(np.float32), batch_size, temperature)
        out = []
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                xb = self.scaler.transform(x[i : i + batch_size].to(self.device)).unsqueeze(1)
                xb = xb.contiguous(memory_format=torch.channels_last)
                out.append(torch.softmax(self._infer(xb).float() / temperature, 1).cpu())
        if not out:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return torch.cat(out).numpy()

    def _onnx_proba(self, x: np.ndarray, batch_size: int, temperature: float) -> np.ndarray:
        parts = [
            self._session.run(["probabilities"], {"images": x[i : i + batch_size]})[0]
            for i in range(0, len(x), batch_size)
        ]
        if not parts:
            return np.zeros((0, len(self.classes)), np.float32)
        return apply_temperature(np.concatenate(parts), temperature)

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

    # --- files and photos ---------------------------------------------------------------------

    def preprocess(self, source: Any, name: str | None = None) -> np.ndarray:
        """Any image (path, bytes, file, PIL image, array) -> this model's uint8 input."""
        from digitlab.preprocess import preprocess

        return preprocess(source, self.target, name)

    def predict_image(self, source: Any, name: str | None = None) -> tuple[Prediction, np.ndarray]:
        """One image -> (its prediction, the preprocessed input the model saw)."""
        x = self.preprocess(source, name)
        return self.predict(x[None])[0], x

    def predict_files(self, sources: Iterable[str | Path], batch_size: int = 256) -> Iterator[FileResult]:
        """Predict image files in batches, yielding one result per file in order.

        A file that cannot be used yields its error sentence instead of stopping the others.
        """
        batch: list[FileResult] = []
        for src in sources:
            result = FileResult(str(src))
            try:
                result.input = self.preprocess(src)
            except ImageError as exc:
                result.error = str(exc)
            batch.append(result)
            if len(batch) >= batch_size:
                yield from self._finish(batch)
                batch = []
        yield from self._finish(batch)

    def _finish(self, batch: list[FileResult]) -> list[FileResult]:
        good = [r for r in batch if r.input is not None]
        if good:
            preds = self.predict(np.stack([r.input for r in good]))
            for r, p in zip(good, preds, strict=True):
                r.prediction = p
        return batch


def expand_sources(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders replaced by the image files inside them (recursively, sorted).

    A path that does not exist is kept, so it is reported on its own line with the others.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ImageError(
                    f"Folder '{p}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); give another folder."
                )
            out.extend(files)
        else:
            out.append(p)
    return out


def predict_images(
    run: str | Path | Predictor,
    paths: Sequence[str | Path],
    threshold: float | None = None,
    runtime: str = "torch",
    batch_size: int = 256,
) -> list[FileResult]:
    """The Python side of ``digitlab predict``: image files and folders -> one FileResult per image."""
    predictor = run if isinstance(run, Predictor) else Predictor.from_run(run, threshold=threshold, runtime=runtime)
    return list(predictor.predict_files(expand_sources(paths), batch_size=batch_size))


def contact_sheet(results: Sequence[FileResult], classes: Sequence[str], path: str | Path, limit: int = 40) -> Path:
    """PNG with one row per image: the original, what the model saw, and its probability bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from digitlab.preprocess import open_image
    from digitlab.utils import atomic_write

    rows = list(results)[:limit]
    if not rows:
        raise ImageError("There is nothing to draw: no image was given.")
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 1.7 * len(rows) + 0.6), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 2.6]})
    fig.suptitle("digitlab predict: original, preprocessed input (28x28), class probabilities", fontsize=11)
    for (ax_o, ax_p, ax_b), r in zip(axes, rows, strict=True):
        name = Path(r.source).name
        try:
            img = open_image(r.source)
            if "A" in img.getbands():
                from PIL import Image

                canvas = Image.new("RGBA", img.size, "white")
                img = Image.alpha_composite(canvas, img.convert("RGBA"))
            ax_o.imshow(np.asarray(img.convert("RGB")))
        except ImageError:
            ax_o.text(0.5, 0.5, "unreadable", ha="center", va="center")
        ax_o.set_title(name if len(name) < 28 else name[:25] + "...", fontsize=8)
        for ax in (ax_o, ax_p):
            ax.set_xticks([])
            ax.set_yticks([])
        if r.prediction is None or r.input is None:
            ax_p.text(0.5, 0.5, "no input", ha="center", va="center")
            ax_b.axis("off")
            ax_b.text(0, 0.5, textwrap.fill(r.error or "", 70), fontsize=8, color="firebrick", va="center")
            continue
        ax_p.imshow(r.input, cmap="gray", vmin=0, vmax=int(r.input.max()) or 1)
        ax_p.set_title("model input", fontsize=8)
        p = r.prediction
        colours = ["tab:orange" if p.unsure else "tab:green" if i == p.label else "tab:gray"
                   for i in range(len(classes))]
        ax_b.bar(range(len(classes)), p.probabilities, color=colours)
        ax_b.set_ylim(0, 1)
        ax_b.set_xticks(range(len(classes)))
        ax_b.set_xticklabels(classes, fontsize=7, rotation=0 if max(map(len, classes)) < 3 else 45)
        ax_b.set_ylabel("probability", fontsize=8)
        ax_b.set_xlabel("class", fontsize=8)
        ax_b.tick_params(axis="y", labelsize=7)
        verdict = "UNSURE " if p.unsure else ""
        ax_b.set_title(f"{verdict}{p.name} ({p.confidence:.1%})", fontsize=9,
                       color="tab:orange" if p.unsure else "black")
    fig.tight_layout()
    out = Path(path)
    atomic_write(out, lambda t: fig.savefig(t, format="png", dpi=100))
    plt.close(fig)
    return out


def _fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` for inference with each BatchNorm that directly follows a convolution folded
    into the convolution's weights: one memory pass less per layer, ~1.8x the images/s of the default
    model on 2 CPU cores, probabilities equal within 1e-6. ``model`` itself is kept for explanations
    (their hooks name the BatchNorm layers). A model torch.fx cannot trace is used as it is."""
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(model).to(memory_format=torch.channels_last)
    except Exception:  # noqa: BLE001 - an untraceable model still predicts, only unfused
        return model


def shifted_views(images: torch.Tensor, shifts: int = 1) -> torch.Tensor:
    """Images (N, H, W) and their copies moved ``shifts`` pixels right, left, down and up (the pixels
    moved in are background), stacked as (5N, H, W) in that order."""
    x = torch.as_tensor(images)
    views = [x]
    for dy, dx in ((0, shifts), (0, -shifts), (shifts, 0), (-shifts, 0)):
        moved = torch.roll(x, (dy, dx), dims=(1, 2))
        if dy > 0:
            moved[:, :dy] = 0
        elif dy < 0:
            moved[:, dy:] = 0
        if dx > 0:
            moved[:, :, :dx] = 0
        elif dx < 0:
            moved[:, :, dx:] = 0
        views.append(moved)
    return torch.cat(views)


def shift_tta_proba(
    predict_proba: Callable[[np.ndarray], np.ndarray], images: np.ndarray, shifts: int = 1
) -> np.ndarray:
    """Test-time augmentation: average the probabilities over the image and its copies shifted by
    ``shifts`` pixels right, left, down and up (5 passes). A Predictor whose model.json asks for
    ``"tta": "shift"`` does this itself, in one batch."""
    x = torch.as_tensor(np.asarray(images))
    views = shifted_views(x, shifts).reshape(5, *x.shape)
    total = sum(predict_proba(v.numpy()).astype(np.float64) for v in views)
    return (total / 5).astype(np.float32)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities (N, K) as the same model would give them with its logits divided by ``temperature``.

    log p differs from the logits by a per-row constant, which softmax ignores: T is fitted
    (``digitlab.calibration``) and applied on probabilities alone, so the ONNX runtime's outputs
    calibrate the same way."""
    if temperature == 1.0:
        return np.asarray(probs)
    z = log_probs(probs) / float(temperature)
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def log_probs(probs: np.ndarray) -> np.ndarray:
    """log p in float64, clipped away from log 0."""
    return np.log(np.clip(np.asarray(probs, np.float64), 1e-30, 1.0))
