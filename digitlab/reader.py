"""The reader shipped inside the package, and how commands choose between it and a trained run.

``digitlab/_reader/`` holds ``model.safetensors`` and ``model.json`` of a model trained with the
``reader`` recipe (see ``docs/reader.md``, its model card). ``model.json`` records the SHA-256 of the
weights, so a damaged or truncated install is caught before the weights are used.

``load_reader()`` returns a ``Predictor`` over it (also ``digitlab.load_reader``). ``resolve_model_arg``
is what ``digitlab predict``, ``read`` and ``serve`` use to make RUN optional: when the first
argument is not a run, every argument is an input and the bundled reader reads them.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from digitlab.errors import DigitlabError, RunError

READER_NAME = "bundled reader"
MODEL_META_NAME = "model.json"


class ReaderError(DigitlabError):
    """The bundled reader is missing or damaged."""


def reader_dir() -> Path:
    """The folder of the bundled reader inside the installed package."""
    return Path(str(resources.files("digitlab") / "_reader"))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_reader(path: str | Path | None = None, device: str = "cpu", threshold: float | None = None,
                runtime: str = "torch") -> Any:
    """The bundled reader as a ``Predictor``; ``path`` picks another copy of the folder (tests, a mirror).

    Raises ``ReaderError`` (one sentence) when its files are missing, damaged or do not match.
    """
    from digitlab.predict import Predictor
    from digitlab.runs import MODEL_META, MODEL_WEIGHTS, load_model

    folder = Path(path) if path is not None else reader_dir()
    meta_path, weights = folder / MODEL_META, folder / MODEL_WEIGHTS
    fix = "reinstall digitlab (pip install --force-reinstall digitlab) or give a RUN folder"
    if not meta_path.is_file() or not weights.is_file():
        raise ReaderError(f"The bundled reader is missing from {folder} ({MODEL_META} and {MODEL_WEIGHTS}): {fix}.")
    try:
        expected = json.loads(meta_path.read_text(encoding="utf-8"))["weights_sha256"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise ReaderError(f"The bundled reader's {meta_path} is damaged (not the JSON it shipped with): "
                          f"{fix}.") from None
    if sha256_file(weights) != expected:
        raise ReaderError(f"The bundled reader's weights {weights} are damaged (their SHA-256 does not match the one "
                          f"in {MODEL_META}): {fix}.")
    try:
        model, meta = load_model(folder, device)
    except RunError:
        raise ReaderError(f"The bundled reader in {folder} cannot be loaded by this digitlab: {fix}.") from None
    predictor = Predictor(model, meta, device, threshold, folder, runtime)
    predictor.display_name = READER_NAME
    return predictor


def is_run(arg: str) -> bool:
    """Whether a command-line argument names a run (a run folder, a run name, or 'latest') rather than an input."""
    from digitlab.runs import resolve_run

    p = Path(arg)
    if p.is_file() or (p.is_dir() and not ((p / "model.json").is_file() or (p / "config.json").is_file())):
        return False  # an image, or a folder of images
    try:
        resolve_run(arg)
    except RunError:
        return False
    return True


def resolve_model_arg(args: list[str] | None) -> tuple[str | None, list[str]]:
    """Split ``[RUN] INPUT...`` into ``(run or None, inputs)``: RUN is there only when the first argument is a run.

    A first argument that is neither a run nor an existing file or folder, and is not named like an
    image, is a mistyped run: its ``RunError`` says so, instead of a "file not found" for each input.
    """
    from digitlab.predict import IMAGE_SUFFIXES
    from digitlab.runs import resolve_run

    args = list(args or [])
    if args and is_run(args[0]):
        return args[0], args[1:]
    if len(args) > 1 and not Path(args[0]).exists() and Path(args[0]).suffix.lower() not in IMAGE_SUFFIXES:
        resolve_run(args[0])  # raises the one-sentence RunError naming the run
    return None, args


def load_predictor(run: str | None, threshold: float | None = None, runtime: str = "torch") -> Any:
    """A trained run's Predictor, or the bundled reader's when ``run`` is None."""
    from digitlab.predict import Predictor

    if run is None:
        return load_reader(threshold=threshold, runtime=runtime)
    predictor = Predictor.from_run(run, threshold=threshold, runtime=runtime)
    predictor.display_name = f"run {predictor.path}"
    return predictor


def describe(predictor: Any) -> str:
    """Which model reads: 'bundled reader (best, sha256 0123abcd...)' or 'run runs/NAME'."""
    name = getattr(predictor, "display_name", None) or f"run {predictor.path}"
    if name == READER_NAME:
        return f"{READER_NAME} ({predictor.name}, sha256 {predictor.meta.get('weights_sha256', '?')[:12]})"
    return name


def combine(runs: list[str | Path], out: str | Path, validation_from: str | Path | None = None,
            escalate_below: float | None = None) -> dict[str, Any]:
    """Average several trained runs into one model (``models.Ensemble``), saved as a run folder at ``out``.

    ``escalate_below`` (e.g. 0.9) makes it a cascade: the first run's model answers alone where its
    top probability (before any temperature) reaches that, the average of all answers the rest.

    The members must predict the same classes from the same input shape and preprocessing. Each keeps
    its own input scaling inside the ensemble. ``validation_from`` (default: the last run) lends its
    ``config.json``, so ``digitlab calibrate OUT`` fits a temperature on that run's validation split.
    Returns the new model.json.
    """
    import shutil

    import numpy as np
    import torch

    from digitlab.data import Scaler
    from digitlab.models import ensemble_of
    from digitlab.runs import load_model, resolve_run, save_model

    paths = [resolve_run(r) for r in runs]
    if len(paths) < 2:
        raise RunError(f"Combining needs two or more runs, got {len(paths)}.")
    loaded = [load_model(p) for p in paths]
    first = loaded[0][1]
    for (_, meta), path in zip(loaded[1:], paths[1:], strict=True):
        for key in ("classes", "max_value", "preprocess"):
            if meta.get(key) != first.get(key):
                raise RunError(f"Run '{path}' differs from '{paths[0]}' in {key}: only models of the same task "
                               "combine.")
        if meta["spec"]["input_shape"] != first["spec"]["input_shape"]:
            raise RunError(f"Run '{path}' takes another input shape than '{paths[0]}'.")
    model = ensemble_of([m for m, _ in loaded], escalate_below)
    max_value = float(first.get("max_value", 255))
    for i, (_, meta) in enumerate(loaded):
        a, b = Scaler.from_dict(meta["scaler"]).affine()
        if np.ndim(a) or np.ndim(b):
            raise RunError(f"Run '{paths[i]}' scales each pixel its own way ({meta['scaler']['name']}); an ensemble "
                           "takes models with one scale for all pixels (unit, mean-std, symmetric).")
        # the ensemble's own scaler is 'unit' (x / max_value): member i sees x * a_i + b_i in raw pixels
        getattr(model, f"scale{i}").fill_(float(a) * max_value)
        getattr(model, f"shift{i}").fill_(float(b))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = resolve_run(validation_from) if validation_from is not None else paths[-1]
    # the dataset named is the validation run's (its test part is what evaluate and bench use); the
    # members' own are listed under "members"
    dataset = json.loads((source / MODEL_META_NAME).read_text(encoding="utf-8")).get("dataset")
    meta = {"dataset": dataset, "classes": first["classes"],
            "max_value": first.get("max_value", 255), "scaler": {"name": "unit", "max_value": max_value},
            "preprocess": first.get("preprocess", {"target": "mnist"}),
            "members": [{"run": m.get("provenance", {}).get("run") or p.name, "dataset": m.get("dataset"),
                         "test_accuracy": m.get("test_accuracy")} for p, (_, m) in zip(paths, loaded, strict=True)],
            "threshold": 0.5, "test_accuracy": None}
    with torch.no_grad():
        save_model(out, model, meta)
    if (source / "config.json").is_file():
        shutil.copyfile(source / "config.json", out / "config.json")
    return json.loads((out / MODEL_META_NAME).read_text(encoding="utf-8"))


def bundle(run: str | Path, dest: str | Path | None = None, command: str | None = None) -> dict[str, Any]:
    """Copy a (calibrated) run's model into the package folder as the bundled reader; returns its model.json.

    ``model.json`` gains ``weights_sha256`` (checked by ``load_reader``) and where the model came from:
    the run's name, its training config, the git commit it was trained at, and ``command``.
    """
    import shutil
    import subprocess

    from digitlab.runs import MODEL_META, MODEL_WEIGHTS, resolve_run
    from digitlab.utils import atomic_write, atomic_write_json

    src = resolve_run(run)
    folder = Path(dest) if dest is not None else reader_dir()
    meta = json.loads((src / MODEL_META).read_text(encoding="utf-8"))
    if "temperature" not in meta:
        raise RunError(f"Run '{src}' is not calibrated: run 'digitlab calibrate {src}' before bundling it.")
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    config = json.loads((src / "config.json").read_text(encoding="utf-8")) if (src / "config.json").is_file() else {}
    atomic_write(folder / MODEL_WEIGHTS, lambda p: shutil.copyfile(src / MODEL_WEIGHTS, p))
    meta.update(weights_sha256=sha256_file(folder / MODEL_WEIGHTS),
                provenance={"run": src.name, "commit": commit, "command": command, "config": config})
    atomic_write_json(folder / MODEL_META, meta)
    return meta
