"""The run folder: configuration, history, metrics and a self-describing, pickle-free model.

``model.safetensors`` holds the weights; ``model.json`` says how to rebuild the module (model spec),
which classes it predicts, how inputs were scaled and preprocessed, and which digitlab wrote it.
Loading needs no pickle: ``build_model(**spec)`` then ``load_state_dict``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from digitlab.errors import RunError
from digitlab.utils import atomic_write, atomic_write_json, atomic_write_text

MODEL_WEIGHTS = "model.safetensors"
MODEL_META = "model.json"
HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "train_seconds"]


def default_runs_dir() -> Path:
    return Path(os.environ.get("DIGITLAB_RUNS_DIR", "runs"))


def resolve_run(name_or_path: str | Path) -> Path:
    """Accept a run folder path, or a run name under the runs directory; 'latest' picks the newest."""
    p = Path(name_or_path)
    candidates = [p, default_runs_dir() / p]
    if str(name_or_path) == "latest":
        runs = [d for d in default_runs_dir().glob("*") if (d / MODEL_META).is_file()]
        if runs:
            candidates.insert(0, max(runs, key=lambda d: (d / MODEL_META).stat().st_mtime))
    for c in candidates:
        if (c / MODEL_META).is_file() or (c / "config.json").is_file():
            return c
    raise RunError(
        f"No run found at '{name_or_path}': give a run folder (with model.json) or a run name "
        f"under '{default_runs_dir()}' (train one with 'digitlab train')."
    )


def save_model(run_dir: str | Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Write weights (safetensors) and the JSON description, each atomically."""
    run_dir = Path(run_dir)
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("model was not made by build_model (it has no .spec)")
    # safetensors refuses shared or non-contiguous storage; clone makes every tensor its own.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(run_dir / MODEL_WEIGHTS, lambda p: save_file(state, str(p)))
    from digitlab import __version__

    atomic_write_json(run_dir / MODEL_META, {"spec": spec, **meta, "digitlab_version": __version__})


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a model from ``model.json`` and load its safetensors weights (no pickle)."""
    from digitlab.models import build_ensemble, build_model

    run_dir = Path(run_dir)
    meta_path, weights_path = run_dir / MODEL_META, run_dir / MODEL_WEIGHTS
    if not meta_path.is_file() or not weights_path.is_file():
        raise RunError(
            f"Run '{run_dir}' has no saved model ({MODEL_META} + {MODEL_WEIGHTS}): "
            "it may still be training or was interrupted; finish it with 'digitlab train --resume'."
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        spec = meta["spec"]
        if spec["name"] == "ensemble":
            model = build_ensemble(spec["members"], spec.get("escalate_below"))
        else:
            model = build_model(spec["name"], tuple(spec["input_shape"]), spec["num_classes"], **spec["options"])
        state = load_file(str(weights_path))
        model.load_state_dict(state)
    except (json.JSONDecodeError, KeyError, RuntimeError, OSError) as exc:
        raise RunError(f"Run '{run_dir}' has a damaged model ({exc.__class__.__name__}): retrain it.") from exc
    model.to(device).eval()
    return model, meta


def write_history(run_dir: str | Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in HISTORY_FIELDS})
    atomic_write_text(Path(run_dir) / "history.csv", buf.getvalue())


def read_history(run_dir: str | Path) -> list[dict[str, float]]:
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rows.append({k: (float(v) if v not in ("", None) else float("nan")) for k, v in row.items()})
            rows[-1]["epoch"] = int(rows[-1]["epoch"])
    return rows


@dataclass
class Run:
    """A finished (or resumable) training run, as a folder on disk.

    ``history`` has one dict per epoch, ``metrics`` the final train/val/test figures;
    ``model`` is loaded on first use.
    """

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    _model: torch.nn.Module | None = None

    @classmethod
    def load(cls, name_or_path: str | Path) -> Run:
        path = resolve_run(name_or_path)

        def read_json(name: str) -> dict:
            p = path / name
            if not p.is_file():
                return {}
            try:
                return json.loads(p.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise RunError(f"'{p}' is not valid JSON ({exc.msg}): the run folder is damaged.") from exc

        return cls(
            path=path,
            config=read_json("config.json"),
            history=read_history(path),
            metrics=read_json("metrics.json"),
            meta=read_json(MODEL_META),
        )

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            self._model, self.meta = load_model(self.path)
        return self._model

    @property
    def test_accuracy(self) -> float | None:
        return self.metrics.get("test", {}).get("accuracy")

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    def __repr__(self) -> str:
        acc = self.test_accuracy
        acc_s = f", test_accuracy={acc:.4f}" if acc is not None else ""
        return f"Run('{self.path}', model={self.config.get('model')!r}, epochs={len(self.history)}{acc_s})"

    # --- Jupyter display ---------------------------------------------------------------------------

    def _repr_html_(self) -> str:
        """Jupyter's view of a run: what was trained, a table of final metrics and the learning curves."""
        import html

        cfg, esc = self.config, html.escape
        model = cfg.get("model", "?")
        options = (self.meta.get("spec") or {}).get("options") or cfg.get("model_options") or {}
        what = ", ".join(f"{k}={v}" for k, v in options.items())
        facts = [
            ("model", f"{model}" + (f" ({what})" if what else "")),
            ("dataset", f"{cfg.get('dataset', '?')} (split {cfg.get('split', '?')})"),
            ("recipe", cfg.get("recipe")),
            ("optimizer", f"{cfg.get('optimizer')} lr {cfg.get('lr')}, batch {cfg.get('batch_size')}"
             if "optimizer" in cfg and not cfg.get("baseline") else cfg.get("baseline")),
            ("epochs", f"{len(self.history)}" + (f" of {cfg['epochs']}" if cfg.get("epochs", 0) > len(self.history)
                                                  else "")),
            ("training time", f"{self.metrics['train_seconds']:.1f} s" if "train_seconds" in self.metrics else None),
        ]
        facts_html = "".join(f"<tr><th style='text-align:left'>{esc(k)}</th><td style='text-align:left'>{esc(str(v))}"
                             "</td></tr>" for k, v in facts if v is not None)
        rows = []
        for split in ("train", "val", "test"):
            m = self.metrics.get(split)
            if not isinstance(m, dict) or "accuracy" not in m:
                continue
            loss = m.get("loss")
            rows.append(f"<tr><td>{split}</td><td>{m['accuracy']:.2%}</td>"
                        f"<td>{'' if loss is None else f'{loss:.4f}'}</td><td>{m.get('size', '')}</td></tr>")
        metrics_html = ("<table><thead><tr><th>split</th><th>accuracy</th><th>loss</th><th>images</th></tr></thead>"
                        f"<tbody>{''.join(rows)}</tbody></table>") if rows else "<p>no metrics yet (unfinished run)</p>"
        curves = self._curves_png()
        img = (f"<img style='max-width:100%' alt='learning curves' src='data:image/png;base64,{curves}'/>"
               if curves else "")
        return (f"<div><b>Run</b> <code>{esc(self.name)}</code> <span style='color:gray'>{esc(str(self.path))}</span>"
                "<div style='display:flex;gap:2em;align-items:flex-start;flex-wrap:wrap'>"
                f"<table>{facts_html}</table>{metrics_html}</div>{img}</div>")

    def _curves_png(self) -> str | None:
        """The learning curves (``plots.learning_curves``) as base64 PNG; None for fewer than two epochs."""
        if len(self.history) < 2:
            return None
        import base64
        import tempfile

        from digitlab.plots import learning_curves

        with tempfile.TemporaryDirectory() as tmp:
            path = learning_curves(self.history, Path(tmp) / "curves.png", title=f"Learning curves: {self.name}")
            return base64.b64encode(path.read_bytes()).decode("ascii")
