"""The run report: one self-contained ``report.html`` per run.

Every picture is embedded as a base64 PNG data URI and the CSS is inline, so the file can be mailed
or opened offline; nothing is fetched. Training calls ``write_report`` at the end of every run, so
it must stay cheap (well under 2 s): five figures at modest DPI, drawn without layout engines, and
everything else is plain HTML.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.utils import atomic_write_text

SECTIONS = {
    "config": "Configuration",
    "dataset": "Dataset",
    "model": "Model",
    "curves": "Learning curves",
    "metrics": "Metrics",
    "confusion": "Confusion matrix",
    "hardest": "Hardest examples",
    "weights": "What the model learned",
    "calibration": "Calibration",
    "timings": "Timings",
}

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       max-width: 1180px; margin: 0 auto; padding: 0 24px 48px; background: #fff; }
header { border-bottom: 1px solid #d0d7de; padding: 20px 0 12px; margin-bottom: 8px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 20px; margin: 32px 0 8px;
     padding-bottom: 4px; border-bottom: 1px solid #eaeef2; }
.sub { color: #59636e; } .big { font-size: 30px; font-weight: 600; color: #1a7f37; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.card { border: 1px solid #d0d7de; border-radius: 8px; padding: 8px 14px; min-width: 120px; }
.card .label { color: #59636e; font-size: 13px; } .card .value { font-size: 20px; font-weight: 600; }
nav a { margin-right: 12px; color: #0969da; text-decoration: none; font-size: 14px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 3px 10px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 10px; overflow-x: auto;
      font-size: 13px; line-height: 1.35; }
img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
.cols { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
p.note { color: #59636e; font-size: 14px; margin: 4px 0; }
"""


# --- small HTML helpers ---------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return _e(value)
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    return f"{float(value):.{digits}f}"


def _g(value: Any) -> str:
    """Three significant digits (learning rates from 1e-6 to 1)."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.3g}"


def _pct(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"


def _table(header: Sequence[str] | None, rows: Iterable[Sequence[Any]], numeric_from: int = 1) -> str:
    """Cells are escaped; columns from ``numeric_from`` on are right-aligned."""
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = [
            f'<td class="num">{c}</td>' if i >= numeric_from else f"<td>{c}</td>" for i, c in enumerate(row)
        ]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _img(path: Path | None, alt: str) -> str:
    if path is None or not Path(path).is_file():
        return f'<p class="note">({_e(alt)}: not available)</p>'
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _section(key: str, body: str) -> str:
    return f'<section id="{key}">\n<h2>{_e(SECTIONS[key])}</h2>\n{body}\n</section>'


def _card(label: str, value: str) -> str:
    return f'<div class="card"><div class="label">{_e(label)}</div><div class="value">{value}</div></div>'


# --- the sections ---------------------------------------------------------------------------------


def _config_section(config: dict) -> str:
    rows = []
    for key, value in config.items():
        shown = json.dumps(value) if isinstance(value, dict | list | tuple) else "–" if value is None else value
        rows.append((f"<code>{_e(key)}</code>", _e(shown)))
    return _table(["setting", "value"], rows, numeric_from=99)


def _dataset_section(run: Any, sp: Any, classes: list[str]) -> str:
    cfg, meta = run.config, run.meta
    used = run.metrics.get("train", {}).get("size")
    subset = cfg.get("train_subset")
    train = f"{len(sp.train_y):,}" + (f" (trained on {min(subset, len(sp.train_y)):,})" if subset else "")
    scaler = meta.get("scaler", {})
    scaler_text = scaler.get("name", cfg.get("scaler", "?"))
    stats = scaler.get("stats", {})
    if stats:  # one global mean/std, or per-pixel arrays (the standard scaler)
        scaler_text += " (" + ", ".join(
            f"{k} per pixel" if isinstance(v, list) else f"{k}={_num(v)}" for k, v in stats.items()) + ")"
    counts = np.bincount(np.asarray(sp.test_y), minlength=len(classes))
    rows = [
        ("dataset", _e(cfg.get("dataset", meta.get("dataset", "?")))),
        ("split scheme", _e(sp.scheme)),
        ("image shape", _e("x".join(str(s) for s in sp.test_x.shape[1:])) + f" (values 0..{_e(sp.max_value)})"),
        ("classes", _e(", ".join(classes))),
        ("training images", _e(train)),
        ("validation images", f"{len(sp.val_y):,}"),
        ("test images", f"{len(sp.test_y):,} (per class {int(counts.min()):,}..{int(counts.max()):,})"),
        ("scaler", _e(scaler_text)),
    ]
    if used:
        rows.append(("training-set metrics on", f"{used:,} images"))
    return _table(None, rows, numeric_from=99)


def _model_section(run: Any) -> str:
    from digitlab.models import count_parameters, format_summary

    model = run.model
    spec = run.meta.get("spec", {})
    options = ", ".join(f"{k}={v}" for k, v in spec.get("options", {}).items()) or "none"
    head = (f"<p><b>{_e(spec.get('name', '?'))}</b> with options {_e(options)}: "
            f"{count_parameters(model, trainable_only=False):,} parameters.</p>")
    return head + f"<pre>{_e(format_summary(model))}</pre>"


def _curves_section(run: Any, figure: Path | None) -> str:
    if not run.history:
        return '<p class="note">No training history (history.csv is missing).</p>'
    rows = [
        (
            str(int(r["epoch"])), _num(r.get("train_loss")), _pct(r.get("train_acc")), _num(r.get("val_loss")),
            _pct(r.get("val_acc")), _g(r.get("lr")), _num(r.get("seconds"), 1),
        )
        for r in run.history[:200]
    ]
    table = _table(["epoch", "train loss", "train acc", "val loss", "val acc", "lr", "seconds"], rows)
    return _img(figure, "learning curves") + "\n<details><summary>History table</summary>\n" + table + "</details>"


def _metrics_section(run: Any, m: dict) -> str:
    splits = [("train", run.metrics.get("train", {})), ("validation", run.metrics.get("val", {})),
              ("test", run.metrics.get("test", {}))]
    overall = _table(
        ["split", "accuracy", "loss", "images"],
        [(name, _pct(s.get("accuracy")), _num(s.get("loss")), _num(s.get("size"))) for name, s in splits if s],
    )
    report = m["report"]
    top = ", ".join(f"top-{k}: {_pct(v)}" for k, v in m["top_k_accuracy"].items() if k != "1")
    facts = (f'<p>Test: accuracy {_pct(m["accuracy"])}, {top}, log loss {m["log_loss"]:.4f}, '
             f'macro F1 {report["macro avg"]["f1-score"]:.4f}, '
             f'weighted F1 {report["weighted avg"]["f1-score"]:.4f}.</p>')
    per_class = _table(
        ["class", "precision", "recall", "F1", "support"],
        [
            (_e(name), _num(report[name]["precision"]), _num(report[name]["recall"]),
             _num(report[name]["f1-score"]), _num(report[name]["support"]))
            for name in [*m["classes"], "macro avg", "weighted avg"]
        ],
    )
    pairs = m["most_confused"][:10]
    confused = (
        _table(["true class", "predicted", "count"], [(_e(t), _e(p), _num(c)) for t, p, c in pairs], numeric_from=2)
        if pairs else '<p class="note">No mistakes on the test set.</p>'
    )
    return (overall + facts + '<div class="cols"><div><h3>Per class (test)</h3>' + per_class
            + '</div><div><h3>Most confused pairs</h3>' + confused + "</div></div>")


def _timings_section(run: Any, report_seconds: float) -> str:
    m = run.metrics
    epochs = [r.get("seconds") for r in run.history if r.get("seconds") is not None]
    epochs = [s for s in epochs if not math.isnan(s)]
    rows = [
        ("training", f"{m.get('train_seconds', float('nan')):.2f} s"),
        ("epochs", f"{len(run.history)}" + (f" (mean {np.mean(epochs):.2f} s each)" if epochs else "")),
        ("final evaluation (train sample, validation, test)", f"{m.get('eval_seconds', float('nan')):.2f} s"),
        ("this report (figures and HTML)", f"{report_seconds:.2f} s"),
    ]
    return _table(None, rows, numeric_from=1)


# --- the report -----------------------------------------------------------------------------------


def _weights_title(kind: str) -> str:
    return {
        "linear": "Class templates: red pixels speak for the class when inked, blue ones against it.",
        "mlp": "First-layer units as masks over the image (the learned features).",
        "cnn": "First-layer convolution filters.",
    }[kind]


def write_report(run: Any, test_probs: Any = None, splits: Any = None, out: str | Path | None = None) -> Path:
    """Write ``report.html`` (default RUN/report.html) and the figures it shows (RUN/figures/*.png).

    ``test_probs`` (N, K) and ``splits`` (``digitlab.data.Splits``) are what training already has;
    without them the data is rebuilt from config.json and the model re-run on the test set.
    """
    from digitlab import plots
    from digitlab.evaluate import evaluate_predictions, run_splits
    from digitlab.explain import model_kind, weights_figure
    from digitlab.runs import Run

    t0 = time.perf_counter()
    run = run if isinstance(run, Run) else Run.load(run)
    sp = splits if splits is not None else run_splits(run)
    classes = [str(c) for c in (run.meta.get("classes") or sp.classes)]
    if test_probs is None:
        from digitlab.predict import Predictor

        test_probs = Predictor.from_run(run.path).predict_proba(sp.test_x)
    test_probs = np.asarray(test_probs)
    m = evaluate_predictions(sp.test_y, test_probs, classes)
    fig_dir = run.path / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)

    figures: dict[str, Path | None] = {}
    title = f"{run.config.get('model', run.meta.get('spec', {}).get('name', ''))} on {run.config.get('dataset', '')}"
    figures["curves"] = plots.learning_curves(run.history, fig_dir / "learning_curves.png", title) if run.history \
        else None
    figures["confusion"] = plots.confusion_matrix(m["confusion_matrix"], classes, fig_dir / "confusion_matrix.png")
    hard = m["hardest"][:20]
    figures["hardest"] = plots.hardest_examples(
        plots.for_display(np.asarray(sp.test_x)[[h["index"] for h in hard]], sp.max_value),
        [h["true"] for h in hard], [h["pred"] for h in hard],
        [h["prob_true"] for h in hard], classes, fig_dir / "hardest_examples.png",
    )
    kind = model_kind(run.model)
    figures["weights"] = weights_figure(run.model, classes, fig_dir / "weights.png")
    figures["calibration"] = plots.reliability_diagram(m["reliability"], m["ece"], fig_dir / "reliability.png")

    threshold = run.meta.get("threshold")
    calibration = (
        f'<p>Expected calibration error (15 bins): <b>{_pct(m["ece"])}</b>. Bars under the diagonal: the model '
        "is more confident than it is right; above: less.</p>"
        + (f'<p class="note">Confidence threshold chosen on the validation set for 99% precision: '
           f"{threshold:.4f} (predictions below it are reported as unsure).</p>" if threshold is not None else "")
        + _img(figures["calibration"], "reliability diagram")
    )
    body = {
        "config": _config_section(run.config),
        "dataset": _dataset_section(run, sp, classes),
        "model": _model_section(run),
        "curves": _curves_section(run, figures["curves"]),
        "metrics": _metrics_section(run, m),
        "confusion": '<p class="note">Rows are true classes, columns predicted classes (test set).</p>'
        + _img(figures["confusion"], "confusion matrix"),
        "hardest": '<p class="note">The test images with the lowest probability of their true class.</p>'
        + _img(figures["hardest"], "hardest examples"),
        "weights": f'<p class="note">{_e(_weights_title(kind))} More: <code>digitlab explain {_e(run.path)}'
        "</code>.</p>" + _img(figures["weights"], "weights"),
        "calibration": calibration,
    }
    test = run.metrics.get("test", {})
    cards = "".join([
        _card("test accuracy", f'<span class="big">{_pct(test.get("accuracy", m["accuracy"]))}</span>'),
        _card("validation accuracy", _pct(run.metrics.get("val", {}).get("accuracy"))),
        _card("macro F1 (test)", f'{m["report"]["macro avg"]["f1-score"]:.4f}'),
        _card("log loss (test)", f'{m["log_loss"]:.4f}'),
        _card("ECE (test)", _pct(m["ece"])),
        _card("epochs", str(len(run.history))),
        _card("training time", f"{run.metrics.get('train_seconds', float('nan')):.1f} s"),
    ])
    body["timings"] = _timings_section(run, time.perf_counter() - t0)
    nav = "".join(f'<a href="#{k}">{_e(v)}</a>' for k, v in SECTIONS.items())
    written = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    version = run.meta.get("digitlab_version", "")
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>digitlab run {_e(run.name)}</title>
<style>{CSS}</style>
</head>
<body>
<header>
<h1>Run {_e(run.name)}</h1>
<div class="sub">{_e(title)} &middot; written {_e(written)} by digitlab {_e(version)} &middot; {_e(run.path)}</div>
<div class="cards">{cards}</div>
<nav>{nav}</nav>
</header>
{chr(10).join(_section(k, body[k]) for k in SECTIONS)}
</body>
</html>
"""
    target = Path(out) if out is not None else run.report_path
    atomic_write_text(target, page)
    return target


# --- comparing runs -------------------------------------------------------------------------------

COMPARE_FIELDS = ["name", "model", "parameters", "epochs", "train_seconds", "val_accuracy", "test_accuracy",
                  "macro_f1", "dataset", "path"]


def _leaderboard_row(run: Any) -> dict[str, Any]:
    from digitlab.models import build_model, count_parameters

    spec = run.meta.get("spec", {})
    try:
        model = build_model(spec["name"], tuple(spec["input_shape"]), spec["num_classes"], **spec.get("options", {}))
        parameters: int | None = count_parameters(model, trainable_only=False)
    except Exception:  # a run from another version or a removed model: still list it
        parameters = None
    test = run.metrics.get("test", {})
    return {
        "name": run.name,
        "model": spec.get("name") or run.config.get("model"),
        "parameters": parameters,
        "epochs": len(run.history) or run.metrics.get("epochs"),
        "train_seconds": run.metrics.get("train_seconds"),
        "val_accuracy": run.metrics.get("val", {}).get("accuracy"),
        "test_accuracy": test.get("accuracy"),
        "macro_f1": test.get("report", {}).get("macro avg", {}).get("f1-score"),
        "dataset": run.config.get("dataset") or run.meta.get("dataset"),
        "path": str(run.path),
    }


def compare(
    runs: Sequence[str | Path] | None = None,
    runs_dir: str | Path | None = None,
    out: str | Path | None = None,
    metric: str = "val_acc",
) -> dict[str, Any]:
    """A leaderboard of finished runs, best test accuracy first, and one PNG overlaying their ``metric``
    curves (validation accuracy; training accuracy when no run has a validation set).

    ``runs``: run folders or names; none: every finished run (with metrics.json) in ``runs_dir``
    (default ``digitlab.runs.default_runs_dir()``). The plot goes to ``out`` (default
    RUNS_DIR/compare.png). Returns {"runs": [rows], "plot": path or None, "metric": ...}.
    """
    from digitlab import plots
    from digitlab.errors import RunError
    from digitlab.runs import Run, default_runs_dir

    base = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    if runs:
        loaded = [Run.load(r if runs_dir is None or Path(r).exists() else base / r) for r in runs]
    else:
        if not base.is_dir():
            raise RunError(f"Runs folder '{base}' does not exist: train a model first or pass --runs-dir.")
        loaded = [Run.load(d) for d in sorted(base.iterdir()) if (d / "metrics.json").is_file()]
        if not loaded:
            raise RunError(f"No finished runs in '{base}': train one with 'digitlab train' or pass --runs-dir.")
    rows = sorted((_leaderboard_row(r) for r in loaded),
                  key=lambda row: -1.0 if row["test_accuracy"] is None else row["test_accuracy"], reverse=True)

    names = [r.name for r in loaded]  # runs from different folders may share a name
    histories = {r.name if names.count(r.name) == 1 else str(r.path): r.history for r in loaded if r.history}
    has = [h for h in histories.values() if any(not math.isnan(row.get(metric, math.nan)) for row in h)]
    if not has and metric == "val_acc":
        metric = "train_acc"
    target = Path(out) if out is not None else (base if not runs else loaded[0].path.parent) / "compare.png"
    try:
        plot: Path | None = plots.compare_curves(histories, target, metric=metric) if histories else None
    except ValueError:  # no run recorded that column
        plot = None
    return {"runs": rows, "plot": str(plot) if plot else None, "metric": metric}


def leaderboard_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The leaderboard as CSV text (one header line, then one line per run)."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COMPARE_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
