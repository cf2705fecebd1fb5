"""Hyperparameter search with Optuna: search spaces, presets, pruning, shared studies, plots.

Modules: ``space`` (search spaces, presets, ``build_search``, ``default_space``), ``storage`` (where a
study lives), ``figures`` (plots and the trials table); this module runs the search.

``tune(space, base, n_trials=...) -> TuneResult``. A trial samples values from the ``SearchSpace``,
applies them to the ``base`` TrainConfig and trains it with the engine's ``fit`` (no run folder; the
data is prepared once and shared by trials that use the same data); its objective is the final
model's validation accuracy. An epoch hook hands each epoch's validation accuracy to Optuna, so the
median pruner can stop poor trials early. With no search space named, ``default_space`` searches the
learning rate, batch size, width (or hidden units) and weight decay of the base's model.

The study lives in a database: by default ``runs/tune-<study>/study.db`` (SQLite), so running the
same command again continues it (trial numbers go on). ``storage`` takes any URL Optuna accepts, and
several processes may share one study: every trial stores its full effective config in the study
(no local state), and the best configuration is retrained and evaluated on the test set only once
per best trial (the result is recorded in the study and reused by later calls).
"""

from __future__ import annotations

import csv
import io
import os
import socket
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from digitlab.config import TrainConfig, validate
from digitlab.errors import ConfigError, RunError, TrainingError
from digitlab.runs import Run, default_runs_dir
from digitlab.training import (
    Hooks,
    ProgressMode,
    Reporter,
    TrainData,
    data_key,
    fit,
    loss_acc,
    predict_proba,
    prepare_data,
    setup,
    train,
)
from digitlab.training.progress import format_value
from digitlab.tune.figures import study_figures, trials_table
from digitlab.tune.space import (
    LOG_SCALE,
    PRESETS,
    SAMPLERS,
    Dimension,
    Preset,
    SearchSpace,
    apply_values,
    build_search,
    default_space,
    load_space_file,
    parse_dimension,
    preset_config,
)
from digitlab.tune.storage import (
    claim_final,
    enlist_worker,
    hide_password,
    open_study,
    other_workers,
    retire_worker,
    storage_url,
)
from digitlab.utils import atomic_write_json, atomic_write_text

__all__ = [
    "LOG_SCALE", "PRESETS", "SAMPLERS", "Dimension", "Preset", "SearchSpace", "TuneResult", "apply_values",
    "build_search", "default_space", "load_space_file", "parse_dimension", "preset_config", "trials_table", "tune",
]

# Median pruning: no trial is pruned before this many trials finished, nor before it has this many
# epochs of validation accuracy to compare.
PRUNER_STARTUP_TRIALS = 4
PRUNER_WARMUP_EPOCHS = 2


# --- the result ----------------------------------------------------------------------------------


@dataclass
class TuneResult:
    """What a tune call found: the study, its best trial, the retrained best run and the figures."""

    study_name: str
    storage: str  # the URL with any password hidden
    path: Path  # the tune folder: figures, trials.csv, result.json, the best run
    n_trials: int  # trials in the study, all processes and all calls
    new_trials: list[int]  # numbers of the trials this call ran
    best_trial: int | None
    best_value: float | None  # validation accuracy
    best_params: dict[str, Any]
    best_config: dict[str, Any] | None
    final_run: Path | None
    test_accuracy: float | None
    trials: list[dict[str, Any]]
    figures: dict[str, Path]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["path"] = str(self.path)
        d["final_run"] = str(self.final_run) if self.final_run else None
        d["figures"] = {k: str(v) for k, v in self.figures.items()}
        return d


# --- progress --------------------------------------------------------------------------------------


def _trial_text(row: dict[str, Any], best: tuple[int, float] | None) -> str:
    """A finished trial in one line: its state or value, its parameters, the best so far."""
    params = "  ".join(f"{k}={format_value(v)}" for k, v in row["params"].items())
    state = row["state"].lower()
    if state == "complete":
        mark = " [bold green]best[/]" if best and best[0] == row["number"] else ""
        what = f"val acc [bold]{row['value']:.4f}[/]{mark}"
    elif state == "pruned":
        what = f"[yellow]pruned[/] after epoch {row['epochs']}"
    else:
        what = f"[red]{state}[/]" + (f": {row['error']}" if row.get("error") else "")
    return (f"trial {row['number']:>3}  {what}  {params}  ({row['seconds']:.1f}s)"
            + (f"   best: #{best[0]} {best[1]:.4f}" if best else ""))


def _trial_row(t: Any) -> dict[str, Any]:
    seconds = t.duration.total_seconds() if t.duration is not None else None  # None: still running
    return {
        "number": t.number,
        "state": t.state.name,
        "value": t.value,
        "params": dict(t.params),
        "epochs": t.user_attrs.get("epochs", len(t.intermediate_values)),
        "seconds": seconds,
        "error": t.user_attrs.get("error"),
    }


def _make_sampler(name: str, space: SearchSpace, seed: int | None, grid_points: int) -> Any:
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(grid_points), seed=seed)
    raise ConfigError(f"Unknown sampler '{name}': choose one of {', '.join(SAMPLERS)}.")


# Which process ran a trial (host:pid): the trials table of a shared study tells the workers apart.
_WORKER = f"{socket.gethostname()}:{os.getpid()}"


def _objective(space: SearchSpace, base: TrainConfig, prune: bool) -> Any:
    import optuna

    shared: dict[tuple[Any, ...], TrainData] = {}  # the last trial's data, for trials that use the same

    def objective(trial: Any) -> float:
        config = space.sample(trial, base)
        saved = {k: v for k, v in config.to_dict().items() if k not in ("runs_dir", "name")}
        trial.set_user_attr("config", saved)
        trial.set_user_attr("worker", _WORKER)
        key = data_key(config)
        if key not in shared:
            shared.clear()
            shared[key] = prepare_data(config)
        state, data = setup(config, shared[key])
        pruned = False

        def report_epoch(state: Any) -> bool:
            nonlocal pruned
            trial.report(state.history[-1]["val_acc"], state.epoch)
            # After the last epoch there is nothing left to save: the trial completes.
            pruned = prune and state.epoch < config.epochs and trial.should_prune()
            return pruned

        try:
            fit(state.model, data, config, Hooks(stop_epoch=[report_epoch]), state)
        except TrainingError as exc:
            trial.set_user_attr("error", str(exc).split(":")[0])
            raise
        keep = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")
        trial.set_user_attr("history", [{k: row.get(k) for k in keep} for row in state.history])
        trial.set_user_attr("epochs", len(state.history))
        if pruned:
            raise optuna.TrialPruned(f"pruned after epoch {state.epoch}")
        probs = predict_proba(state.model, data.x["val"], data.scale, config.eval_batch_size)
        return loss_acc(probs, data.y["val"])[1]  # the final weights (the best epoch's with restore_best)

    return objective


def tune(
    space: SearchSpace | dict[str, Any],
    base: TrainConfig | None = None,
    *,
    n_trials: int | None = 20,
    timeout: float | None = None,
    sampler: str = "tpe",
    storage: str | None = None,
    study_name: str | None = None,
    sampler_seed: int | None = None,
    prune: bool = True,
    max_total_trials: int | None = None,
    grid_points: int = 3,
    final: bool = True,
    out: str | Path | None = None,
    progress: ProgressMode = "rich",
) -> TuneResult:
    """Search ``space`` around ``base``; retrain the best config once and evaluate it on the test set.

    A ``space`` with nothing to search (None, empty, or only fixed values) becomes ``default_space(base)``
    with the fixed values kept, and the output says so.

    ``n_trials`` and ``timeout`` bound this call; ``max_total_trials`` bounds the whole study (all
    processes sharing it). ``sampler_seed`` defaults to ``base.seed`` plus the number of trials
    already in the study when the study lives in the default local file, so a run repeats exactly
    and a continued study gets fresh proposals; with an explicit ``storage`` (shared by workers) it
    defaults to fresh entropy so that concurrent workers do not propose the same trials.
    ``final=False`` skips the retraining (e.g. for extra workers).
    """
    import optuna

    base = base or TrainConfig()
    space = SearchSpace.from_dict(space or {})
    reporter = Reporter(progress)
    validate(base)
    if not space.searched:
        fixed_model = space.dims["model"].choices[0] if "model" in space.dims else base.model
        space = default_space(base.replace(model=fixed_model)).merged(space)
        reporter.message(f"no search space given: searching the default space of model {fixed_model} "
                         "(give options such as --lr 1e-4..1e-1, a --space file or a --preset to choose)")
    space.check(base)
    if base.split == "none" or (base.val_size <= 0 and base.split == "default"):
        raise ConfigError("Tuning needs a validation split to score trials: use --split default (or a notebook "
                          "split), not 'none'.")
    if sampler not in SAMPLERS:
        raise ConfigError(f"Unknown sampler '{sampler}': choose one of {', '.join(SAMPLERS)}.")
    if n_trials is not None and n_trials < 0:
        raise ConfigError(f"--n-trials must be zero or more, got {n_trials}.")
    # Fixed dimensions change the base once rather than being "sampled" in every trial.
    fixed = {k: v.choices[0] for k, v in space.dims.items() if v.fixed}
    base = apply_values(base, fixed) if fixed else base
    space = SearchSpace(space.searched)
    validate(base)

    name = study_name or f"{base.dataset}-search"
    runs_root = Path(base.runs_dir) if base.runs_dir else default_runs_dir()
    tune_dir = Path(out) if out else runs_root / f"tune-{name}"
    url = storage_url(storage, tune_dir)
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    pruner = (optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS,
                                          n_warmup_steps=PRUNER_WARMUP_EPOCHS) if prune else optuna.pruners.NopPruner())
    study = open_study(url, name, None, pruner)
    existing = len(study.get_trials(deepcopy=False))
    if sampler_seed is None and storage is None:
        sampler_seed = base.seed + existing
    study.sampler = _make_sampler(sampler, space, sampler_seed, grid_points)
    if existing == 0:
        study.set_user_attr("space", space.to_dict())
        study.set_user_attr("base_config", base.to_dict())
    reporter.event("study", study=name, storage=hide_password(url), existing_trials=existing,
                   space=space.to_dict(), sampler=sampler)
    reporter.message(
        f"study [bold]{name}[/] in {hide_password(url)}: {existing} earlier trial(s); sampler {sampler}, "
        f"{'median pruning' if prune else 'no pruning'}; searching "
        + ", ".join(f"{k} {v.describe()}" for k, v in space.dims.items())
    )

    new_trials: list[int] = []

    def on_trial(study_: Any, trial: Any) -> None:
        new_trials.append(trial.number)
        try:
            best = (study_.best_trial.number, study_.best_value)
        except ValueError:  # no trial completed yet
            best = None
        row = _trial_row(trial)
        reporter.line("trial", _trial_text(row, best), **row, best_trial=best[0] if best else None,
                      best_value=best[1] if best else None)

    callbacks = [on_trial]
    if max_total_trials is not None:
        callbacks.append(optuna.study.MaxTrialsCallback(
            max_total_trials, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)))
    if n_trials != 0:
        marker = enlist_worker(url, study)
        try:
            study.optimize(_objective(space, base, prune), n_trials=n_trials, timeout=timeout,
                           callbacks=callbacks, catch=(TrainingError,), gc_after_trial=False)
        finally:
            retire_worker(url, marker)

    return _summarize(study, tune_dir, url, new_trials, final, reporter, force_final=n_trials == 0)


def _summarize(study: Any, tune_dir: Path, url: str, new_trials: list[int], final: bool,
               reporter: Reporter, force_final: bool = False) -> TuneResult:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    rows = [_trial_row(t) for t in trials]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    notes: list[str] = []
    tune_dir.mkdir(parents=True, exist_ok=True)
    _write_trials_csv(tune_dir / "trials.csv", rows)
    if not complete:
        states = {s: sum(1 for t in trials if t.state.name == s) for s in ("PRUNED", "FAIL", "RUNNING")}
        raise TrainingError(
            f"No trial of study '{study.study_name}' has completed ({states['FAIL']} failed, {states['PRUNED']} "
            f"pruned, {states['RUNNING']} running): run more trials or widen the search space."
        )
    best = study.best_trial
    final_run, test_acc = None, None
    running = [t for t in trials if t.state == TrialState.RUNNING]
    others = other_workers(url, study) if final and new_trials else 0
    if final and (running or others) and new_trials:
        # Other workers are still searching (a trial running, or a worker between two trials): the best
        # may change, so only the last worker to finish (or a later call with n_trials=0) looks at the
        # test set.
        final = False
        notes.append(f"{max(len(running), others)} other worker(s) are still searching: the last worker to finish "
                     "retrains and tests the best trial (or run the command again with --n-trials 0).")
    recorded = study.user_attrs.get("final") or {}
    if final and recorded.get("trial") != best.number and not force_final and not claim_final(url, study, best):
        # Another worker took this best trial's retraining: it records the test result in the study.
        final = False
        notes.append(f"another worker is retraining the best trial #{best.number}; its test accuracy is recorded in "
                     "the study (see it with --n-trials 0).")
    if final:
        final_run, test_acc = _final_run(study, best, tune_dir, reporter)
    else:
        recorded = study.user_attrs.get("final") or {}
        if recorded.get("trial") == best.number:
            final_run, test_acc = Path(recorded["run"]), recorded["test_accuracy"]
    figures = study_figures(study, tune_dir / "figures", notes)
    result = TuneResult(
        study_name=study.study_name, storage=hide_password(url), path=tune_dir, n_trials=len(trials),
        new_trials=new_trials, best_trial=best.number, best_value=best.value, best_params=dict(best.params),
        best_config=best.user_attrs.get("config"), final_run=final_run, test_accuracy=test_acc, trials=rows,
        figures=figures, notes=notes,
    )
    atomic_write_json(tune_dir / "result.json", result.to_dict())
    reporter.event("result", **result.to_dict())
    return result


def _final_run(study: Any, best: Any, tune_dir: Path, reporter: Reporter) -> tuple[Path, float]:
    """Retrain the best trial's config once (deterministic: same seed) and evaluate it on the test set.

    The result is recorded in the study, so later calls and other workers report it instead of
    looking at the test set again. A folder left by an interrupted retraining is resumed.
    """
    recorded = study.user_attrs.get("final") or {}
    run_dir = tune_dir / f"best-trial-{best.number}"
    if recorded.get("trial") == best.number:
        reporter.message(f"best trial #{best.number} was already retrained and tested: {recorded['run']}")
        return Path(recorded["run"]), recorded["test_accuracy"]
    if (run_dir / "metrics.json").is_file():
        run = Run.load(run_dir)
    else:
        reporter.message(f"retraining the best trial #{best.number} (val acc {best.value:.4f}) -> {run_dir}")
        config = TrainConfig.from_dict({**best.user_attrs["config"], "runs_dir": str(tune_dir),
                                        "name": run_dir.name})
        try:
            run = train(resume=run_dir, progress="quiet") if (run_dir / "config.json").is_file() else \
                train(config, progress="quiet")
        except (RunError, ConfigError) as exc:
            raise RunError(f"The best trial's run folder '{run_dir}' is unusable ({exc}): delete it and run "
                           "tune again with --n-trials 0.") from exc
    test_acc = float(run.metrics["test"]["accuracy"])
    study.set_user_attr("final", {"trial": best.number, "run": str(run_dir.resolve()), "test_accuracy": test_acc,
                                  "val_accuracy": run.metrics.get("val", {}).get("accuracy")})
    reporter.message(f"best trial #{best.number}: test accuracy [bold]{test_acc:.4f}[/] (run folder {run_dir})")
    return run_dir, test_acc


def _write_trials_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    params = sorted({k for r in rows for k in r["params"]})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["number", "state", "val_acc", "epochs", "seconds", *params, "error"])
    for r in rows:
        seconds = "" if r["seconds"] is None else f"{r['seconds']:.2f}"
        writer.writerow([r["number"], r["state"], "" if r["value"] is None else r["value"], r["epochs"], seconds,
                         *[r["params"].get(p, "") for p in params], r["error"] or ""])
    atomic_write_text(path, buf.getvalue())
