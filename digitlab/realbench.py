"""The reader benchmark: a model on handwriting that is not MNIST's, through the paths users take.

``bench_reader(predictor)`` measures, each on data no training run of digitlab sees:

- ``mnist_test``: accuracy on the 10,000 MNIST test digits (already 28x28, no preprocessing);
- ``usps_files``: the 1,500 held-out USPS digits (``digitlab.data.usps_split``) rendered as photo-like
  PNG or JPEG files (``render_file``: dark ink on paper at 48-112 px), read by ``Predictor.predict_files``
  (so through ``preprocess``, like ``digitlab predict``);
- ``digits8_files``: scikit-learn's 1,797 8x8 digits, upscaled smoothly to 40-96 px as a user would
  photograph them off a screen or printout, rendered and read the same way;
- ``usps_fields``: fields of 2-12 held-out USPS digits drawn by ``fields.random_field`` (seed
  ``FIELD_SEED``, never used for anything else) and read by ``read_field``; whole-field accuracy, and
  the accept rates at <= 1% and <= 0.1% field error when the fields are ranked by their confidence;
- ``ece``: the expected calibration error of the USPS and 8x8 files, with the model's temperature and
  without it (T = 1).

The renderings are deliberately simpler than ``digitlab.realism``'s training renders, so the benchmark
does not reward a model for having seen its own test generator.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

FIELD_SEED = 1717  # held out: no training, ablation or calibration uses it
FILE_SEED = 0


def render_file(ink: np.ndarray, rng: np.random.Generator, low: int, high: int) -> tuple[bytes, str]:
    """A grey ink image (0..1, any size) -> a photo-like file of it (PNG or JPEG bytes, and the suffix).

    Dark ink on light paper, ``low``-``high`` px for the digit's longest side, margins, a small tilt,
    uneven light, camera blur, sensor grain and, for half of them, JPEG compression.
    """
    import io
    import math

    from PIL import Image, ImageFilter

    side = int(rng.integers(low, high + 1))
    h, w = ink.shape
    f = side / max(h, w)
    img = Image.fromarray(np.round(np.clip(ink, 0, 1) * 255).astype(np.uint8))
    up = img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BICUBIC)
    up = up.rotate(float(rng.uniform(-5, 5)), Image.Resampling.BILINEAR, expand=True)
    a = np.pad(np.asarray(up, np.float32) / 255.0, int(rng.integers(side // 6, side // 2 + 1)))
    yy, xx = np.mgrid[0 : a.shape[0], 0 : a.shape[1]].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (xx * math.cos(angle) + yy * math.sin(angle)) / max(a.shape)
    paper = rng.uniform(200, 250) * (1.0 - rng.uniform(0, 0.2) * (ramp - ramp.min()))
    ink_level = rng.uniform(10, 80)
    grey = paper - (paper - ink_level) * a
    out = Image.fromarray(np.clip(grey, 0, 255).round().astype(np.uint8))
    out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 1.0)) * side / 50))
    noisy = np.asarray(out, np.float32) + rng.normal(0, rng.uniform(1.0, 6.0), (out.size[1], out.size[0]))
    rgb = Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8)).convert("RGB")
    buf = io.BytesIO()
    if rng.random() < 0.5:
        rgb.save(buf, format="JPEG", quality=int(rng.integers(50, 96)))
        return buf.getvalue(), ".jpg"
    rgb.save(buf, format="PNG")
    return buf.getvalue(), ".png"


def _files_accuracy(predictor: Any, inks: np.ndarray, labels: np.ndarray, folder: Path, low: int, high: int,
                    seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ink in enumerate(inks):
        data, suffix = render_file(ink, rng, low, high)
        path = folder / f"{i:05d}_{int(labels[i])}{suffix}"
        path.write_bytes(data)
        paths.append(path)
    t0 = time.perf_counter()
    results = list(predictor.predict_files(paths))
    seconds = time.perf_counter() - t0
    probs = np.stack([np.asarray(r.prediction.probabilities) if r.ok else np.full(10, 0.1) for r in results])
    pred = probs.argmax(1)
    return {"n": len(labels), "accuracy": float((pred == labels).mean()), "unreadable": sum(not r.ok for r in results),
            "files_per_second": len(labels) / seconds, "probs": probs}


def accept_rates(correct: np.ndarray, confidence: np.ndarray, targets: tuple[float, ...] = (0.01, 0.001)
                 ) -> dict[str, float]:
    """The largest share of fields that can be accepted (most confident first) with error <= each target,
    keyed like ``'1.0%'`` (``fields.bench.operating_points``, which also gives the thresholds)."""
    from digitlab.fields.bench import operating_points

    return {f"{p['max_error']:.1%}": p["accept_rate"] for p in operating_points(confidence, correct, targets)}


def _fields(predictor: Any, images: np.ndarray, labels: np.ndarray, n: int, seed: int) -> dict[str, Any]:
    from digitlab.fields import edit_distance, random_field, read_field

    rng = np.random.default_rng(seed)
    correct, confidence, digits, errors = [], [], 0, 0
    for _ in range(n):
        f = random_field(images, labels, rng)
        reading = read_field(predictor, f.image)
        dist = edit_distance(f.text, reading.text)
        correct.append(dist == 0)
        confidence.append(reading.confidence)
        digits += len(f.text)
        errors += dist
    correct_a, conf_a = np.asarray(correct), np.asarray(confidence)
    return {"n": n, "seed": seed, "field_accuracy": float(correct_a.mean()), "digit_accuracy": 1 - errors / digits,
            "accept_rate": accept_rates(correct_a, conf_a)}


def bench_reader(predictor: Any, fields: int = 300, field_seed: int = FIELD_SEED, data_dir: str | None = None,
                 work_dir: str | Path | None = None, parts: tuple[str, ...] = ("mnist", "usps", "digits8", "fields")
                 ) -> dict[str, Any]:
    """Run the benchmark of the module docstring on a ``Predictor``; figures as a dict."""
    from sklearn.datasets import load_digits

    from digitlab.calibration import apply_temperature
    from digitlab.data import load_dataset, load_usps, usps_val_raw
    from digitlab.evaluate import expected_calibration_error

    out: dict[str, Any] = {"model": str(predictor.path) if predictor.path else None,
                           "temperature": predictor.temperature}
    t_model = predictor.temperature
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        if "mnist" in parts:
            ds = load_dataset("mnist")
            probs = predictor.predict_proba(ds.test_images)
            accuracy = float((probs.argmax(1) == ds.test_labels).mean())
            out["mnist_test"] = {"n": len(ds.test_labels), "accuracy": accuracy}
        eces = {}
        if "usps" in parts:
            grey, labels = usps_val_raw(data_dir)
            r = _files_accuracy(predictor, grey, labels, Path(tmp) / "usps", 48, 112, FILE_SEED)
            eces["usps_files"] = (labels, r.pop("probs"))
            out["usps_files"] = r
        if "digits8" in parts:
            d = load_digits()
            r = _files_accuracy(predictor, d.images / 16.0, d.target, Path(tmp) / "digits8", 40, 96, FILE_SEED + 1)
            eces["digits8_files"] = (d.target, r.pop("probs"))
            out["digits8_files"] = r
        if "fields" in parts:
            usps = load_usps(data_dir)
            out["usps_fields"] = _fields(predictor, usps.test_images, usps.test_labels, fields, field_seed)
    for key, (y, probs) in eces.items():
        before = apply_temperature(probs, 1.0 / t_model) if t_model != 1.0 else probs  # undo the model's T
        out[key]["ece"] = float(expected_calibration_error(y, probs)[0])
        out[key]["ece_uncalibrated"] = float(expected_calibration_error(y, before)[0])
    return out


def print_reader(result: dict[str, Any], console: Any) -> None:
    """The benchmark as a few lines of text."""
    console.print(f"model: {result['model'] or 'bundled reader'} (temperature {result['temperature']:.3f})",
                  highlight=False)
    if "mnist_test" in result:
        console.print(f"MNIST test                 {result['mnist_test']['accuracy']:.2%}", highlight=False)
    for key, title in (("usps_files", "USPS held-out, as files"), ("digits8_files", "8x8 digits, as files")):
        if key in result:
            r = result[key]
            console.print(f"{title:<26} {r['accuracy']:.2%}  ECE {r['ece']:.2%} "
                          f"(uncalibrated {r['ece_uncalibrated']:.2%}); "
                          f"{r['n']} files, {r['unreadable']} unreadable", highlight=False)
    if "usps_fields" in result:
        r = result["usps_fields"]
        rates = ", ".join(f"{v:.1%} at <= {k} error" for k, v in r["accept_rate"].items())
        console.print(f"USPS fields (seed {r['seed']})     {r['field_accuracy']:.2%} whole-field, "
                      f"{r['digit_accuracy']:.2%} digits; accept {rates}; {r['n']} fields", highlight=False)
