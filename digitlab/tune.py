"""Hyperparameter search with Optuna: search spaces, presets, pruning, shared studies, plots.

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
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from digitlab.config import TrainConfig, assemble, load_config_file, read_table_file, recipe_config, validate
from digitlab.errors import ConfigError, RunError, TrainingError
from digitlab.models import MODELS, parse_scalar
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
from digitlab.utils import atomic_write, atomic_write_json, atomic_write_text

SAMPLERS = ("tpe", "random", "grid")
# Scale parameters: a range of them is sampled log-uniformly unless said otherwise.
LOG_SCALE = ("lr", "weight_decay")
# Fields a trial may never change: where data and runs live, and the run's identity.
_NOT_SEARCHABLE = ("data_dir", "name", "runs_dir", "recipe", "model_options", "betas", "resume", "report",
                   "tensorboard", "threads", "device", "nproc")
_CONFIG_FIELDS = {f.name for f in fields(TrainConfig)} - set(_NOT_SEARCHABLE)
# Median pruning: no trial is pruned before this many trials finished, nor before it has this many
# epochs of validation accuracy to compare.
PRUNER_STARTUP_TRIALS = 4
PRUNER_WARMUP_EPOCHS = 2
# Shared studies (docs/distributed.md): a running trial beats every HEARTBEAT seconds; one silent for
# twice that (its worker died) is marked failed by the next worker and run again, at most RETRIES times.
HEARTBEAT_SECONDS = 60
RETRIES = 2
SQLITE_TIMEOUT_SECONDS = 60  # how long a worker waits for another's write lock on a shared SQLite file


# --- the search space ----------------------------------------------------------------------------


@dataclass
class Dimension:
    """One searched parameter: a list of ``choices``, or a range ``low..high`` (int when both are ints)."""

    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def is_int(self) -> bool:
        return self.choices is None and all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low,
                                                                                                       self.high))

    @property
    def fixed(self) -> bool:
        return self.choices is not None and len(self.choices) == 1

    def suggest(self, trial: Any, name: str) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(name, self.choices)
        if self.is_int:
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log)

    def grid(self, points: int = 3) -> list[Any]:
        """Values for the grid sampler: the choices, or ``points`` values spread over the range."""
        if self.choices is not None:
            return list(self.choices)
        if self.is_int and self.step:
            return list(range(int(self.low), int(self.high) + 1, int(self.step)))
        spread = np.geomspace if self.log else np.linspace
        values = spread(float(self.low), float(self.high), points)
        if self.is_int:
            return sorted({int(round(v)) for v in values})
        return [float(f"{v:.6g}") for v in values]

    def describe(self) -> str:
        if self.choices is not None:
            return "{" + ", ".join(str(c) for c in self.choices) + "}"
        scale = " (log)" if self.log else ""
        step = f" step {self.step:g}" if self.step else ""
        return f"{self.low:g}..{self.high:g}{step}{scale}"

    def to_dict(self) -> dict[str, Any] | list[Any]:
        if self.choices is not None:
            return list(self.choices)
        d: dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log}
        if self.step:
            d["step"] = self.step
        return d


def _scalar(raw: str) -> Any:
    return parse_scalar(raw.strip())


def parse_dimension(name: str, value: Any) -> Dimension:
    """A Dimension from a CLI string or a config-file value.

    Strings: ``"a,b,c"`` (choices), ``"LOW..HIGH"`` (a range; ``lr`` and ``weight_decay`` ranges are
    log-uniform, others uniform; add ``:log`` or ``:linear`` to choose), or one value (fixed).
    Config files: a list (choices), a table ``{low, high, log, step}``, or one value.
    """
    if isinstance(value, Dimension):
        return value
    if isinstance(value, list | tuple):
        if not value:
            raise ConfigError(f"Search-space parameter '{name}' has an empty list of choices: give at least one.")
        return Dimension(choices=list(value))
    if isinstance(value, dict):
        if "choices" in value:
            return parse_dimension(name, list(value["choices"]))
        if "low" not in value or "high" not in value:
            raise ConfigError(f"Search-space parameter '{name}' needs 'low' and 'high' (or 'choices'), got {value}.")
        dim = Dimension(low=value["low"], high=value["high"], log=bool(value.get("log", name in LOG_SCALE)),
                        step=value.get("step"))
        return _checked_range(name, dim)
    if isinstance(value, str):
        text = value.strip()
        if ".." in text:
            text, _, scale = text.partition(":")
            low, _, high = text.partition("..")
            if scale not in ("", "log", "linear"):
                raise ConfigError(f"Search-space range '{value}' for '{name}' ends in ':{scale}': use :log or :linear.")
            log = scale == "log" or (scale == "" and name in LOG_SCALE)
            return _checked_range(name, Dimension(low=_scalar(low), high=_scalar(high), log=log))
        return Dimension(choices=[_scalar(part) for part in text.split(",") if part.strip()])
    return Dimension(choices=[value])


def _checked_range(name: str, dim: Dimension) -> Dimension:
    ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (dim.low, dim.high))
    if not ok or not dim.low <= dim.high:
        raise ConfigError(f"Search-space range for '{name}' must be two numbers LOW..HIGH with LOW <= HIGH, "
                          f"got {dim.low!r}..{dim.high!r}.")
    if dim.log and dim.low <= 0:
        raise ConfigError(f"Log-scale range for '{name}' must be positive, got {dim.low!r}..{dim.high!r}: "
                          "raise LOW or add ':linear'.")
    return dim


@dataclass
class SearchSpace:
    """Named dimensions. Names are TrainConfig fields (``lr``, ``batch_size``, ``optimizer``,
    ``weight_decay``, ``model``, ...), model options (``activation``, ``dropout``, ``width``, ...),
    or ``n_hidden`` and ``units`` (the MLP's ``hidden = [units] * n_hidden``).

    A model option is sampled only in trials whose model has it, so a space over several model
    families is conditional. A dimension with a single choice is not searched: it fixes the value.
    """

    dims: dict[str, Dimension] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | SearchSpace) -> SearchSpace:
        if isinstance(d, SearchSpace):
            return d
        return cls({str(k).replace("-", "_"): parse_dimension(str(k), v) for k, v in d.items()})

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() for k, v in self.dims.items()}

    def merged(self, other: SearchSpace | dict[str, Any]) -> SearchSpace:
        """This space with ``other``'s dimensions added or replacing these."""
        return SearchSpace({**self.dims, **SearchSpace.from_dict(other).dims})

    @property
    def searched(self) -> dict[str, Dimension]:
        return {k: v for k, v in self.dims.items() if not v.fixed}

    def check(self, base: TrainConfig) -> None:
        """Refuse names that are neither training options nor options of a model this space can pick."""
        models = self.dims["model"].grid() if "model" in self.dims else [base.model]
        for model in models:
            if model not in MODELS:
                raise ConfigError(f"Search space picks unknown model '{model}': choose among {', '.join(MODELS)}.")
        options = set().union(*(MODELS[m].defaults for m in models))
        for name in self.dims:
            if name in _CONFIG_FIELDS or name in options:
                continue
            if name in ("n_hidden", "units") and any(_has_mlp_hidden(m) for m in models):
                continue
            raise ConfigError(
                f"Search-space parameter '{name}' is neither a training option nor an option of model "
                f"{'/'.join(models)}: use e.g. lr, batch_size, optimizer, weight_decay, model, n_hidden, units, "
                "activation or dropout."
            )
        if not self.searched:
            raise ConfigError(
                "The search space is empty: give ranges or several values, e.g. --lr 1e-4..1e-1 --units 32..256, "
                "or a preset (--preset notebook-003)."
            )

    def sample(self, trial: Any, base: TrainConfig) -> TrainConfig:
        """Suggest a value for every applicable dimension and return the trial's config."""
        values: dict[str, Any] = {}
        for name, dim in self.dims.items():
            if name == "model":
                values[name] = dim.choices[0] if dim.fixed else dim.suggest(trial, name)
        model = values.get("model", base.model)
        options = MODELS[model].defaults
        for name, dim in self.dims.items():
            applies = name in _CONFIG_FIELDS or name in options or (
                name in ("n_hidden", "units") and _has_mlp_hidden(model)
            )
            if name == "model" or not applies:
                continue
            values[name] = dim.choices[0] if dim.fixed else dim.suggest(trial, name)
        return apply_values(base, values)

    def grid(self, points: int = 3) -> dict[str, list[Any]]:
        return {k: v.grid(points) for k, v in self.searched.items()}


def _has_mlp_hidden(model: str) -> bool:
    return isinstance(MODELS[model].defaults.get("hidden"), tuple)


def apply_values(base: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """``base`` with sampled values applied: config fields directly, the rest as model options."""
    model = values.get("model", base.model)
    # The base's model options belong to the base's model; another family starts from its defaults.
    options = dict(base.model_options) if model == base.model else {}
    defaults = MODELS[model].defaults
    if ("n_hidden" in values or "units" in values) and _has_mlp_hidden(model):
        hidden = list(options.get("hidden", defaults["hidden"])) or [128]
        options["hidden"] = [int(values.get("units", hidden[0]))] * int(values.get("n_hidden", len(hidden)))
    changes = {}
    for name, value in values.items():
        if name in ("model", "n_hidden", "units"):
            continue
        if name in _CONFIG_FIELDS:
            changes[name] = value
        elif name in defaults:
            options[name] = value
    return base.replace(model=model, model_options=options, **changes)


# --- presets ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    description: str
    space: dict[str, Any]
    recipe: str
    overrides: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    # Notebook 003's RandomizedSearchCV: relu MLP of n_hidden layers of n_neurons, plain SGD,
    # 30 epochs, EarlyStopping(patience=10) on the validation loss, Fashion-MNIST with the first
    # 5,000 training images as validation. The learning rate takes the notebook's five decades.
    "notebook-003": Preset(
        "Notebook 003: Fashion-MNIST relu MLP, SGD; n_hidden {1, 2}, units 50..299, lr {1e-1 ... 1e-5}, "
        "30 epochs with early stopping (patience 10).",
        space={"n_hidden": [1, 2], "units": {"low": 50, "high": 299}, "lr": [1e-1, 1e-2, 1e-3, 1e-4, 1e-5]},
        recipe="notebook-003-mlp",
        overrides=dict(early_stopping=True, patience=10, monitor="val_loss", epochs=30),
    ),
    # A broader MLP search on top of the fast recipe's schedule (one-cycle, label smoothing).
    "mlp": Preset(
        "MLP: n_hidden {1, 2, 3}, units 32..512 (log), relu/tanh, lr 1e-4..3e-1 (log), nesterov/adam, "
        "batch {32, 64, 128}, weight decay 1e-6..1e-2 (log), dropout 0..0.5; 10 epochs.",
        space={
            "n_hidden": [1, 2, 3], "units": {"low": 32, "high": 512, "log": True}, "activation": ["relu", "tanh"],
            "lr": {"low": 1e-4, "high": 0.3}, "optimizer": ["nesterov", "adam"], "batch_size": [32, 64, 128],
            "weight_decay": {"low": 1e-6, "high": 1e-2}, "dropout": {"low": 0.0, "high": 0.5},
        },
        recipe="fast",
        overrides=dict(model="mlp", epochs=10),
    ),
}


def preset_config(name: str, **overrides: Any) -> tuple[SearchSpace, TrainConfig]:
    """A preset's search space and base config, with ``overrides`` applied to the config."""
    if name not in PRESETS:
        raise ConfigError(f"Unknown tuning preset '{name}': choose one of {', '.join(PRESETS)}.")
    preset = PRESETS[name]
    return SearchSpace.from_dict(preset.space), recipe_config(preset.recipe, **{**preset.overrides, **overrides})


def load_space_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a TOML/YAML/JSON file with a ``[space]`` table and an optional ``[train]`` table.

    Returns ``(space, train_overrides)``. A file without a ``[space]`` table is all space.
    """
    path = Path(path)
    raw = read_table_file(path, "Space file", "--space")
    if "space" in raw:
        space, train_ = raw["space"], raw.get("train", {})
    else:
        space, train_ = {k: v for k, v in raw.items() if k != "train"}, raw.get("train", {})
    if not isinstance(space, dict) or not isinstance(train_, dict):
        raise ConfigError(f"Space file '{path}' must hold a [space] table (and optionally a [train] table).")
    return space, train_


def build_search(
    preset: str | None = None,
    space_file: str | Path | None = None,
    space_options: dict[str, Any] | None = None,
    recipe: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[SearchSpace, TrainConfig]:
    """The search space and base config of a ``digitlab tune`` command line.

    Later sources win: the preset, then the space file's ``[space]`` and ``[train]`` tables, then the
    options. The base is ``config.assemble(recipe, file, flags)``: ``recipe`` (default: the preset's),
    then the preset's fields, ``config_file`` (a ``digitlab train --config`` file) and the space file's
    ``[train]`` table, then ``overrides``. An empty space is filled in by ``tune`` (``default_space``).
    """
    space = SearchSpace()
    base_fields: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"Unknown tuning preset '{preset}': choose one of {', '.join(PRESETS)}.")
        space = SearchSpace.from_dict(PRESETS[preset].space)
        base_fields.update(PRESETS[preset].overrides)
        recipe = recipe or PRESETS[preset].recipe
    if config_file is not None:
        base_fields.update(load_config_file(config_file))
    if space_file is not None:
        file_space, file_train = load_space_file(space_file)
        space = space.merged(file_space)
        base_fields.update(file_train)
    space = space.merged({k: v for k, v in (space_options or {}).items() if v is not None})
    return space, assemble(recipe, base_fields, overrides)


def default_space(base: TrainConfig) -> SearchSpace:
    """A search around ``base`` for its model: learning rate (a decade either way, log-uniform), batch
    size (half, same, double), the width or hidden units if the model has them, and weight decay."""
    lr = base.lr
    dims: dict[str, Any] = {
        "lr": {"low": float(f"{lr / 10:.3g}"), "high": float(f"{lr * 10:.3g}"), "log": True},
        "batch_size": sorted({max(8, base.batch_size // 2), base.batch_size, base.batch_size * 2}),
    }
    options = MODELS[base.model].defaults
    if _has_mlp_hidden(base.model):
        dims["units"] = {"low": 32, "high": 512, "log": True}
    elif isinstance(options.get("width"), int):
        width = int(base.model_options.get("width", options["width"]))
        dims["width"] = sorted({max(1, width // 2), width, width * 2})
    dims["weight_decay"] = {"low": 1e-5, "high": 1e-1, "log": True}
    return SearchSpace.from_dict(dims)


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


# --- tune ------------------------------------------------------------------------------------------


def _storage_url(storage: str | None, tune_dir: Path) -> str:
    if storage:
        return storage
    tune_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(tune_dir / 'study.db').resolve()}"


def _hide_password(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not an SQLAlchemy URL (e.g. a journal file): nothing to hide
        return url


def _make_sampler(name: str, space: SearchSpace, seed: int | None, grid_points: int) -> Any:
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(grid_points), seed=seed)
    raise ConfigError(f"Unknown sampler '{name}': choose one of {', '.join(SAMPLERS)}.")


def _rdb_storage(url: str) -> Any:
    """An SQLAlchemy storage made for several workers: heartbeats, retried trials of dead workers, and
    SQLite writers that wait for each other's locks instead of failing after SQLAlchemy's 5 s."""
    import optuna

    if not url.startswith(("sqlite", "postgresql", "mysql", "oracle", "mssql")):
        return url  # let optuna judge (and explain) anything else
    engine: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_SECONDS}}
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats and retries are marked experimental
        if retry is not None:
            callback = {"heartbeat_stale_trial_callback": retry(max_retry=RETRIES)}
        else:  # optuna < 4.4
            callback = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=RETRIES)}
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS,
                                          grace_period=2 * HEARTBEAT_SECONDS, **callback)


def _open_study(url: str, name: str, sampler: Any, pruner: Any, attempts: int = 6) -> Any:
    import optuna

    def create() -> Any:
        return optuna.create_study(storage=_rdb_storage(url), study_name=name, sampler=sampler, pruner=pruner,
                                   direction="maximize", load_if_exists=True)

    try:
        for attempt in range(attempts - 1):
            try:
                return create()
            except Exception as exc:  # noqa: BLE001 - sorted out below
                # Workers starting together on a new database race to create its tables; the loser
                # gets a database error and finds the tables there when it tries again.
                if not type(exc).__module__.startswith("sqlalchemy"):
                    raise
                time.sleep(0.5 * (attempt + 1))
        return create()
    except ValueError as exc:  # e.g. an existing study that minimizes
        raise ConfigError(f"Study '{name}' in {_hide_password(url)} cannot be used ({exc}): pick another --study.") \
            from exc
    except Exception as exc:  # noqa: BLE001 - bad URLs, missing drivers, unreachable servers
        raise ConfigError(
            f"Cannot open the study storage '{_hide_password(url)}' ({exc.__class__.__name__}: {exc}): check "
            "--storage (e.g. sqlite:///runs/study.db or postgresql://user@host/db) and that its driver is installed."
        ) from exc


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
    url = _storage_url(storage, tune_dir)
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    pruner = (optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS,
                                          n_warmup_steps=PRUNER_WARMUP_EPOCHS) if prune else optuna.pruners.NopPruner())
    study = _open_study(url, name, None, pruner)
    existing = len(study.get_trials(deepcopy=False))
    if sampler_seed is None and storage is None:
        sampler_seed = base.seed + existing
    study.sampler = _make_sampler(sampler, space, sampler_seed, grid_points)
    if existing == 0:
        study.set_user_attr("space", space.to_dict())
        study.set_user_attr("base_config", base.to_dict())
    reporter.event("study", study=name, storage=_hide_password(url), existing_trials=existing,
                   space=space.to_dict(), sampler=sampler)
    reporter.message(
        f"study [bold]{name}[/] in {_hide_password(url)}: {existing} earlier trial(s); sampler {sampler}, "
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
        study.optimize(_objective(space, base, prune), n_trials=n_trials, timeout=timeout,
                       callbacks=callbacks, catch=(TrainingError,), gc_after_trial=False)

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
    if final and running and new_trials:
        # Other workers are still searching: the best may change, so only the last worker to finish
        # (or a later call with n_trials=0) looks at the test set.
        final = False
        notes.append(f"{len(running)} trial(s) of other workers are still running: the last worker to finish "
                     "retrains and tests the best trial (or run the command again with --n-trials 0).")
    recorded = study.user_attrs.get("final") or {}
    if final and recorded.get("trial") != best.number and not force_final and not _claim_final(url, study, best):
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
    figures = _plots(study, tune_dir / "figures", notes)
    result = TuneResult(
        study_name=study.study_name, storage=_hide_password(url), path=tune_dir, n_trials=len(trials),
        new_trials=new_trials, best_trial=best.number, best_value=best.value, best_params=dict(best.params),
        best_config=best.user_attrs.get("config"), final_run=final_run, test_accuracy=test_acc, trials=rows,
        figures=figures, notes=notes,
    )
    atomic_write_json(tune_dir / "result.json", result.to_dict())
    reporter.event("result", **result.to_dict())
    return result


def _claim_final(url: str, study: Any, best: Any) -> bool:
    """Whether this process may retrain ``best``: the first to create a marker study wins.

    Study names are unique in the storage, so creating ``STUDY:final-N`` is an atomic claim even
    between workers on several machines that finish at the same moment.
    """
    import optuna

    try:
        optuna.create_study(storage=_rdb_storage(url), study_name=f"{study.study_name}:final-{best.number}")
    except optuna.exceptions.DuplicatedStudyError:
        return False
    return True


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


# --- figures ----------------------------------------------------------------------------------------


def _plots(study: Any, folder: Path, notes: list[str]) -> dict[str, Path]:
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


def trials_table(result: TuneResult, limit: int = 50) -> Table:
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
