"""The study's figures (Optuna's matplotlib plots) and its trials table."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from digitlab.training.progress import format_value
from digitlab.utils import atomic_write


def study_figures(study: Any, folder: Path, notes: list[str]) -> dict[str, Path]:
    """Optimization history, parameter importances and parallel coordinates (optuna's matplotlib plots)."""
    import matplotlib  # matplotlib and optuna: only once there is a study to plot

    # optuna's plots go through pyplot; a headless worker must not try to open a window.
    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import optuna
    import optuna.visualization.matplotlib as vm
    from matplotlib import pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    varied = [p for p in {k for t in complete for k in t.params}
              if len({repr(t.params.get(p)) for t in complete}) > 1]
    target = "validation accuracy"
    title = f" — study {study.study_name}"
    plans: dict[str, Any] = {
        "optimization_history": lambda: vm.plot_optimization_history(study, target_name=target),
        "parallel_coordinate": lambda: vm.plot_parallel_coordinate(study, target_name=target),
    }
    if len(complete) >= 2 and varied:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        plans["param_importances"] = lambda: vm.plot_param_importances(study, evaluator=evaluator, target_name=target)
    else:
        notes.append(f"No parameter-importance plot: it needs at least 2 completed trials whose parameters differ "
                     f"(the study has {len(complete)} completed); run more trials.")
    # Light blues of optuna's parallel plot vanish on its grey background: start the map at mid-blue.
    blues = ListedColormap(plt.get_cmap("Blues")(np.linspace(0.3, 1.0, 256)))
    figures = {}
    for name, plot in plans.items():
        # rc_context undoes optuna's global plt.style.use("ggplot") so later figures keep their style.
        with matplotlib.rc_context(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-API notes, tight_layout and colour-bar axes
            try:
                ax = plot()
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                notes.append(f"No {name.replace('_', ' ')} plot: {exc}")
                plt.close("all")
                continue
            ax0 = ax.flat[0] if hasattr(ax, "flat") else ax
            fig = ax0.figure
            fig.set_size_inches(10, 5.5)
            heading = next((ax0.get_title(loc) for loc in ("center", "left", "right") if ax0.get_title(loc)), "")
            for loc in ("center", "left", "right"):
                ax0.set_title("", loc=loc)
            fig.suptitle(heading + title, fontsize=13)
            for collection in ax0.collections:
                if isinstance(collection, LineCollection):
                    collection.set_cmap(blues)
            fig.tight_layout()
            path = folder / f"{name}.png"
            atomic_write(path, lambda p, fig=fig: fig.savefig(p, format="png", dpi=100, facecolor="white"))
            plt.close(fig)
        figures[name] = path
    return figures


def trials_table(result: Any, limit: int = 50) -> Table:
    """A rich Table of the study's trials (the last ``limit``), best first marked."""
    table = Table(title=f"study {result.study_name}: {result.n_trials} trials")
    for col, justify in (("#", "right"), ("state", "left"), ("val acc", "right"), ("epochs", "right"),
                         ("seconds", "right"), ("parameters", "left")):
        table.add_column(col, justify=justify)
    rows = result.trials[-limit:]
    for r in rows:
        best = r["number"] == result.best_trial
        value = "" if r["value"] is None or (isinstance(r["value"], float) and math.isnan(r["value"])) \
            else f"{r['value']:.4f}"
        table.add_row(
            str(r["number"]), r["state"].lower(), f"[bold green]{value}[/]" if best else value, str(r["epochs"]),
            "" if r["seconds"] is None else f"{r['seconds']:.1f}",
            "  ".join(f"{k}={format_value(v)}" for k, v in r["params"].items()),
        )
    return table
