"""Notebook 004's studies: optimizer x initialization, a learning-rate sweep, and an LR range test.

``init_study()`` trains the same model once per (optimizer, initialization) pair and draws one
loss-per-epoch panel per optimizer; ``lr_study()`` sweeps learning rates with and without momentum;
``lr_find()`` is fastai's range test (exponentially growing learning rate over ~100 mini-batches,
smoothed loss, stop at 4x the best) with a suggested rate. Every curve of the studies, and the range
test, is a ``fit`` of the training engine without a run folder (the data is prepared once per study);
the range test sets each step's rate through the engine's ``lr`` hook and records every step's loss.

Each curve gets a verdict, in this order of precedence:

* ``diverged``: the loss became NaN or infinite (``fit`` raised ``TrainingError``);
* ``unstable``: some epoch's mean loss is more than 1.5x the loss at the start (the first
  mini-batch's, i.e. of the initial weights): the rate throws the model far above where it began,
  whatever it recovers to later; or the epoch loss rose by more than 10% (and 0.05) from one epoch
  to the next;
* ``stuck``: the last epoch's loss is still at least 95% of chance level, ln(number of classes),
  and less than 10% below the first epoch's;
* ``slow``: the last epoch's loss is still above half the chance level, or above half the
  first epoch's (far from fitted: too small a rate, or a large one that wanders);
* ``ok`` otherwise.
"""

from __future__ import annotations

import csv
import io
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.config import TrainConfig, recipe_config, validate
from digitlab.errors import ConfigError, TrainingError
from digitlab.runs import default_runs_dir
from digitlab.training import Hooks, ProgressMode, Reporter, TrainData, fit, prepare_data, setup
from digitlab.utils import atomic_write, atomic_write_json, atomic_write_text

Progress = ProgressMode

# Notebook 004's optimizers (Keras defaults for Adam) and initializations. Keras' initializers
# there are TruncatedNormal(stddev), i.e. cut at two standard deviations: our 'truncated-normal'.
OPTIMIZER_SETUPS: dict[str, dict[str, Any]] = {
    "SGD": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.0},
    "Adam": {"optimizer": "adam", "lr": 1e-3},
    "SGD + Nesterov momentum": {"optimizer": "nesterov", "lr": 0.1, "momentum": 0.9},
}
INIT_SETUPS: dict[str, dict[str, Any]] = {
    "Glorot uniform": {"init": "glorot-uniform", "init_std": None},
    "small (truncated normal, std 1e-3)": {"init": "truncated-normal", "init_std": 1e-3},
    "large (truncated normal, std 1)": {"init": "truncated-normal", "init_std": 1.0},
    "zeros": {"init": "zeros", "init_std": None},
}
DEFAULT_LRS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
UNSTABLE_RISE = 0.10  # relative epoch-to-epoch rise of the loss that counts as unstable
UNSTABLE_MIN_RISE = 0.05  # ... and at least this much in absolute terms (tiny losses jitter)
# An epoch's mean loss above this multiple of the initial weights' loss: the step overshoots. A sane rate
# never averages above its starting loss, and an overshooting one lands several times above it (SGD at
# lr 10 on notebook 004's MLP: 3x to 13x), so the verdict does not hang on how far it recovers later.
UNSTABLE_OVER_START = 1.5


def study_config(dataset: str = "digits", **overrides: Any) -> TrainConfig:
    """Notebook 004's setup: standardized 8x8 digits, tanh MLP [100, 100], batch 32, constant rate, 10 epochs."""
    defaults = dict(dataset=dataset, model_options={"hidden": [100, 100], "activation": "tanh"}, epochs=10)
    return recipe_config("notebook-004-mlp", **{**defaults, **overrides})


# --- results ----------------------------------------------------------------------------------------


@dataclass
class Curve:
    """One training run of a study: its group (panel), label (line), history and verdict."""

    group: str
    label: str
    changes: dict[str, Any]
    history: list[dict[str, float]]
    status: str
    seconds: float
    error: str | None = None
    start_loss: float | None = None  # the first mini-batch's loss (initial weights)

    @property
    def final_loss(self) -> float:
        return self.history[-1]["train_loss"] if self.history else math.nan

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return {
            "group": self.group, "label": self.label, **self.changes, "epochs": len(self.history),
            "first_train_loss": self.history[0]["train_loss"] if self.history else None,
            "final_train_loss": last.get("train_loss"), "final_val_loss": last.get("val_loss"),
            "final_val_acc": last.get("val_acc"), "start_loss": self.start_loss, "status": self.status,
            "seconds": round(self.seconds, 2), "error": self.error,
        }


@dataclass
class StudyResult:
    kind: str  # "init" or "lr"
    path: Path
    config: dict[str, Any]
    curves: list[Curve]
    figure: Path
    csv: Path

    @property
    def table(self) -> list[dict[str, Any]]:
        return [c.summary() for c in self.curves]

    def curve(self, group: str, label: str) -> Curve:
        for c in self.curves:
            if c.group == group and c.label == label:
                return c
        raise KeyError(f"no curve {group!r} / {label!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "figure": str(self.figure), "csv": str(self.csv),
                "config": self.config, "table": self.table}


def verdict(losses: list[float], num_classes: int, diverged: bool = False, start: float | None = None) -> str:
    """The curve's verdict from its epoch losses (see the module docstring for the rules).

    ``start`` is the loss of the first mini-batch (the initial weights); without it only the
    epoch-to-epoch rule can call a curve unstable.
    """
    if diverged or not all(math.isfinite(v) for v in losses):
        return "diverged"
    if not losses:
        return "ok"
    if start is not None and math.isfinite(start) and max(losses) > UNSTABLE_OVER_START * start:
        return "unstable"
    for a, b in zip(losses, losses[1:], strict=False):
        if b > a * (1 + UNSTABLE_RISE) and b - a > UNSTABLE_MIN_RISE:
            return "unstable"
    chance = math.log(num_classes)
    if losses[-1] >= 0.95 * chance and losses[-1] >= 0.9 * losses[0]:
        return "stuck"
    if losses[-1] >= 0.5 * chance or losses[-1] > 0.5 * losses[0]:
        return "slow"
    return "ok"


# --- running curves ---------------------------------------------------------------------------------


def _curve_text(c: Curve) -> str:
    color = {"ok": "green", "slow": "yellow", "stuck": "yellow"}.get(c.status, "red")
    return (f"{c.group} / {c.label}: final loss {c.final_loss:.4f} [{color}]{c.status}[/] "
            f"({len(c.history)} epochs, {c.seconds:.1f}s)")


def _run_curve(group: str, label: str, base: TrainConfig, changes: dict[str, Any], data: TrainData,
               num_classes: int) -> Curve:
    config = base.replace(**changes)
    start: list[float] = []

    def first_loss(state: Any) -> None:
        if not start:
            start.append(state.loss)  # the first mini-batch's loss: that of the initial weights

    t0 = time.perf_counter()
    error = None
    state, data = setup(config, data)
    try:
        fit(state.model, data, config, Hooks(step=[first_loss]), state)
    except TrainingError as exc:
        error = str(exc).split(";")[0]
    rows = [{k: float(row[k]) for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")}
            for row in state.history]
    begin = start[0] if start else None
    status = verdict([r["train_loss"] for r in rows], num_classes, diverged=error is not None, start=begin)
    return Curve(group, label, changes, rows, status, time.perf_counter() - t0, error, begin)


def _run_grid(kind: str, base: TrainConfig, grid: list[tuple[str, str, dict[str, Any]]], out: Path,
              progress: Progress) -> tuple[list[Curve], int]:
    validate(base)
    for _, _, changes in grid:
        validate(base.replace(**changes))
    data = prepare_data(base)  # every curve trains on the same images: prepared once
    reporter = Reporter(progress)
    reporter.message(f"{kind} study on {base.dataset}, model {base.model} {base.model_options}, "
                     f"{base.epochs} epochs, {len(grid)} runs -> {out}")
    curves = []
    for group, label, changes in grid:
        curves.append(_run_curve(group, label, base, changes, data, data.num_classes))
        reporter.line("curve", _curve_text(curves[-1]), **curves[-1].summary())
    return curves, data.num_classes


def _default_out(base: TrainConfig, stem: str) -> Path:
    root = Path(base.runs_dir) if base.runs_dir else default_runs_dir()
    return root / f"{stem}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', base.dataset).strip('-')}"


def _write_curves_csv(path: Path, kind: str, curves: list[Curve]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["study", "group", "label", "epoch", "train_loss", "train_acc", "val_loss", "val_acc",
                     "status"])
    for c in curves:
        for row in c.history:
            writer.writerow([kind, c.group, c.label, int(row["epoch"]), row["train_loss"], row["train_acc"],
                             row["val_loss"], row["val_acc"], c.status])
        if not c.history:  # keep diverged-at-once runs visible in the CSV
            writer.writerow([kind, c.group, c.label, "", "", "", "", "", c.status])
    return atomic_write_text(path, buf.getvalue())


def _finish(kind: str, base: TrainConfig, curves: list[Curve], out: Path, figure: Path,
            progress: Progress) -> StudyResult:
    csv_path = _write_curves_csv(out / f"{kind}_study.csv", kind, curves)
    result = StudyResult(kind, out, base.to_dict(), curves, figure, csv_path)
    atomic_write_json(out / f"{kind}_study.json", result.to_dict())
    Reporter(progress).event("result", **result.to_dict())
    return result


# --- the init study ----------------------------------------------------------------------------------


def init_study(
    base: TrainConfig | None = None,
    optimizers: dict[str, dict[str, Any]] | None = None,
    inits: dict[str, dict[str, Any]] | None = None,
    out: str | Path | None = None,
    progress: Progress = "rich",
) -> StudyResult:
    """Train ``base`` once per optimizer x initialization; a loss panel per optimizer, a line per init."""
    base = base or study_config()
    optimizers = optimizers or OPTIMIZER_SETUPS
    inits = inits or INIT_SETUPS
    out = Path(out) if out else _default_out(base, "study-init")
    grid = [(o, i, {**oc, **ic}) for o, oc in optimizers.items() for i, ic in inits.items()]
    curves, num_classes = _run_grid("init", base, grid, out, progress)
    figure = _panels(
        curves, list(optimizers), out / "init_study.png", legend_title="initialization",
        title=f"Impact of initialization on convergence ({base.dataset}, {_model_name(base)}, batch {base.batch_size})",
        panel_title=lambda g: f"{g} ({_optimizer_text(optimizers[g])})",
        chance=math.log(num_classes),
    )
    return _finish("init", base, curves, out, figure, progress)


def _optimizer_text(changes: dict[str, Any]) -> str:
    parts = [f"lr {changes['lr']:g}"] if "lr" in changes else []
    if changes.get("optimizer") in ("momentum", "nesterov"):
        parts.append(f"momentum {changes.get('momentum', 0.9):g}")
    return ", ".join(parts)


def _model_name(base: TrainConfig) -> str:
    opts = base.model_options
    if base.model == "mlp":
        return f"{opts.get('activation', 'relu')} MLP {opts.get('hidden', [128])}"
    return base.model


# --- the learning-rate study -------------------------------------------------------------------------


def lr_study(
    base: TrainConfig | None = None,
    lrs: tuple[float, ...] | list[float] = DEFAULT_LRS,
    momentum: float = 0.9,
    out: str | Path | None = None,
    progress: Progress = "rich",
) -> StudyResult:
    """Sweep learning rates with plain SGD and with SGD + Nesterov momentum (notebook 004: tanh MLP [100])."""
    base = base or study_config(model_options={"hidden": [100], "activation": "tanh"}, epochs=15)
    if not lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in lrs):
        raise ConfigError(f"Learning rates must be positive numbers, got {list(lrs)}: use e.g. --lrs 1e-3,1e-2,1e-1.")
    if not 0 < momentum < 1:
        raise ConfigError(f"Momentum must lie between 0 and 1 (exclusive), got {momentum}.")
    out = Path(out) if out else _default_out(base, "study-lr")
    groups = {"SGD (no momentum)": {"optimizer": "sgd", "momentum": 0.0},
              f"SGD + Nesterov momentum {momentum:g}": {"optimizer": "nesterov", "momentum": momentum}}
    grid = [(g, f"lr {lr:g}", {**gc, "lr": float(lr)}) for g, gc in groups.items() for lr in sorted(lrs)]
    curves, num_classes = _run_grid("lr", base, grid, out, progress)
    figure = _panels(
        curves, list(groups), out / "lr_study.png", legend_title="learning rate",
        title=f"Learning rate and convergence ({base.dataset}, {_model_name(base)}, batch {base.batch_size})",
        panel_title=lambda g: g, chance=math.log(num_classes), colormap=True,
    )
    return _finish("lr", base, curves, out, figure, progress)


# --- figures ------------------------------------------------------------------------------------------


def _save(fig: Any, path: Path) -> Path:
    return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100, facecolor="white"))


def _panels(curves: list[Curve], groups: list[str], path: Path, *, legend_title: str, title: str,
            panel_title: Any, chance: float, colormap: bool = False) -> Path:
    """One panel per group, a line per curve: training loss per epoch on a log scale."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(groups), 5.0), layout="constrained")
    axes = fig.subplots(1, len(groups), sharey=True, squeeze=False)[0]
    finite = [r["train_loss"] for c in curves for r in c.history if math.isfinite(r["train_loss"])]
    low = max(min(finite, default=1e-3) * 0.7, 1e-4)
    high = max(finite, default=10.0) * 1.4
    for ax, group in zip(axes, groups, strict=True):
        mine = [c for c in curves if c.group == group]
        colors = (colormaps["viridis"](np.linspace(0, 0.9, len(mine))) if colormap
                  else colormaps["tab10"](np.arange(len(mine))))
        diverged = 0
        for c, color in zip(mine, colors, strict=True):
            epochs = [r["epoch"] for r in c.history]
            losses = [max(r["train_loss"], low) for r in c.history]
            style = "--" if c.changes.get("init") == "zeros" else "-"
            label = c.label if c.status == "ok" else f"{c.label} ({c.status})"
            ax.plot(epochs, losses, style, color=color, lw=2, marker="o", ms=3, label=label)
            if c.status == "diverged":
                # A cross at the top in the epoch where the loss became NaN; side by side if several.
                x = len(epochs) + 1 + 0.12 * diverged
                ax.plot([x], [0.93], "x", color=color, ms=11, mew=3, transform=ax.get_xaxis_transform())
                diverged += 1
        if diverged:
            ax.text(0.98, 0.98, "x: loss became NaN/inf in that epoch", transform=ax.transAxes, ha="right",
                    va="top", fontsize=9, color="0.3")
        ax.axhline(chance, color="0.4", lw=1, ls=":", label=f"chance level ln {round(math.exp(chance))}")
        ax.set_yscale("log")
        ax.set_ylim(low, high)
        ax.set_title(panel_title(group), fontsize=12)
        ax.set_xlabel("epoch", fontsize=11)
        ax.grid(True, which="major", alpha=0.3)
        # Below the panel: inside, it would hide the start of some curve whatever the corner.
        ax.legend(title=legend_title, fontsize=9, title_fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.13),
                  ncol=2, frameon=False)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel("training loss (log scale)", fontsize=11)
    fig.suptitle(title, fontsize=13)
    return _save(fig, path)


# --- the learning-rate range test --------------------------------------------------------------------


@dataclass
class LRFindResult:
    """The range test: every step's rate and loss, the smoothed loss and the suggested rates."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float  # steepest descent of the smoothed loss
    min_loss_lr: float  # the rate of the lowest smoothed loss, divided by 10
    stopped_early: bool  # the loss passed ``diverge`` x its best (or became NaN)
    path: Path
    figure: Path
    csv: Path
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"suggestion": self.suggestion, "min_loss_lr": self.min_loss_lr, "steps": len(self.lrs),
                "stopped_early": self.stopped_early, "path": str(self.path), "figure": str(self.figure),
                "csv": str(self.csv), "config": self.config}


def lr_find(
    config: TrainConfig,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    beta: float = 0.98,
    diverge: float = 4.0,
    out: str | Path | None = None,
    progress: Progress = "rich",
) -> LRFindResult:
    """fastai's LR range test on ``config``'s model, optimizer and data.

    The rate grows exponentially from ``start_lr`` to ``end_lr`` over ``num_iter`` mini-batches;
    the loss is smoothed with an exponential moving average (``beta``, bias-corrected) and the test
    stops once the smoothed loss exceeds ``diverge`` times its best. The suggestion is the rate of
    the steepest descent of the smoothed loss (against log lr) before its minimum, skipping the
    first tenth of the steps; ``min_loss_lr`` is the minimum's rate divided by 10.
    """
    validate(config)
    if not (0 < start_lr < end_lr and math.isfinite(end_lr)):
        raise ConfigError(f"The range test needs 0 < start lr < end lr, got {start_lr:g} and {end_lr:g}.")
    if num_iter < 10:
        raise ConfigError(f"The range test needs at least 10 steps to smooth the loss, got {num_iter}.")
    reporter = Reporter(progress)
    data = prepare_data(config)
    # Enough epochs for num_iter steps; the hooks set every step's rate and stop after the last.
    steps_per_epoch = math.ceil(len(data.x["train"]) / config.batch_size)
    run = config.replace(epochs=math.ceil(num_iter / steps_per_epoch), schedule="constant", warmup_epochs=0.0,
                         early_stopping=False)
    reporter.message(f"LR range test on {config.dataset}: model {config.model}, optimizer {config.optimizer}, "
                     f"batch {config.batch_size}, lr {start_lr:g} -> {end_lr:g} over {num_iter} steps")

    def rate(step: int) -> float:
        return start_lr * (end_lr / start_lr) ** (step / (num_iter - 1))

    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    track = {"avg": 0.0, "best": math.inf, "stopped": False}

    def record(state: Any) -> bool:
        track["avg"] = beta * track["avg"] + (1 - beta) * state.loss
        smooth = track["avg"] / (1 - beta ** (len(lrs) + 1))
        lrs.append(rate(state.step - 1))
        losses.append(state.loss)
        smoothed.append(smooth)
        track["best"] = min(track["best"], smooth)
        if smooth > diverge * track["best"]:
            track["stopped"] = True
            return True
        return len(lrs) >= num_iter

    state, data = setup(run, data)
    try:
        fit(state.model, data, run, Hooks(stop_step=[record], lr=rate), state)
    except TrainingError:  # the loss became NaN or infinite: the test ends there
        track["stopped"] = True
    stopped = bool(track["stopped"])
    if len(lrs) < 3:
        raise TrainingError(f"The loss diverged within {len(lrs)} steps from lr {start_lr:g}: lower --start-lr.")
    suggestion, min_loss_lr = _suggest(lrs, smoothed)

    out = Path(out) if out else _default_out(config, f"lr-find-{config.model}")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["step", "lr", "loss", "smoothed_loss"])
    writer.writerows([i + 1, lr, loss_, sm] for i, (lr, loss_, sm) in enumerate(zip(lrs, losses, smoothed,
                                                                                        strict=True)))
    csv_path = atomic_write_text(out / "lr_find.csv", buf.getvalue())
    figure = _lr_find_figure(lrs, losses, smoothed, suggestion, min_loss_lr, config, out / "lr_find.png")
    result = LRFindResult(lrs, losses, smoothed, suggestion, min_loss_lr, stopped, out, figure, csv_path,
                          config.to_dict())
    atomic_write_json(out / "lr_find.json", result.to_dict())
    reporter.event("result", **result.to_dict())
    reporter.message(f"suggested learning rate [bold]{suggestion:.3g}[/] (steepest descent); lowest loss at "
                     f"{min_loss_lr * 10:.3g}, /10 = {min_loss_lr:.3g}\nfigure {figure}")
    return result


def _suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, float]:
    """(steepest-descent rate, rate of the minimum / 10)."""
    lr = np.asarray(lrs)
    loss = np.asarray(smoothed)
    lowest = int(np.argmin(loss))
    skip = max(1, len(lr) // 10)
    min_loss_lr = float(lr[lowest] / 10)
    if lowest - skip < 2:  # no descent to measure: fall back to the minimum's rule
        return min_loss_lr, min_loss_lr
    grad = np.gradient(loss[: lowest + 1], np.log10(lr[: lowest + 1]))
    steepest = skip + int(np.argmin(grad[skip:]))
    return float(lr[steepest]), min_loss_lr


def _lr_find_figure(lrs: list[float], losses: list[float], smoothed: list[float], suggestion: float,
                    min_loss_lr: float, config: TrainConfig, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 5.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(lrs, losses, color="0.75", lw=1, label="loss per mini-batch")
    ax.plot(lrs, smoothed, color="#1f77b4", lw=2.2, label="smoothed loss")
    for value, color, text in ((suggestion, "#cf222e", "suggested (steepest descent)"),
                               (min_loss_lr, "#ff7f0e", "lowest loss / 10")):
        y = float(np.interp(np.log10(value), np.log10(lrs), smoothed))
        ax.axvline(value, color=color, ls="--", lw=1.2)
        ax.plot([value], [y], "o", color=color, ms=8, label=f"{text}: {value:.2g}")
    ax.set_xscale("log")
    # Frame the descent: up to the highest loss before the minimum; the final blow-up runs off the top.
    lowest = int(np.argmin(smoothed))
    top, bottom = max(smoothed[: lowest + 1]), smoothed[lowest]
    span = max(top - bottom, 0.05 * abs(bottom) + 1e-6)
    ax.set_ylim(bottom - 0.25 * span, top + 0.5 * span)
    ax.set_xlabel("learning rate (log scale)", fontsize=11)
    ax.set_ylabel("training loss", fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=9)
    ax.set_title(f"Learning-rate range test: {config.dataset}, {config.model}, {config.optimizer}, "
                 f"batch {config.batch_size}", fontsize=12)
    return _save(fig, path)
