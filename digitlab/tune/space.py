"""Search spaces of ``digitlab tune``: dimensions, presets, space files, the default space, and the
search and base config of a command line (``build_search``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.config import TrainConfig, assemble, load_config_file, read_table_file, recipe_config
from digitlab.errors import ConfigError
from digitlab.models import MODELS, parse_scalar

SAMPLERS = ("tpe", "random", "grid")
# Scale parameters: a range of them is sampled log-uniformly unless said otherwise.
LOG_SCALE = ("lr", "weight_decay")
# Fields a trial may never change: where data and runs live, and the run's identity.
_NOT_SEARCHABLE = ("data_dir", "name", "runs_dir", "recipe", "model_options", "betas", "resume", "report",
                   "tensorboard", "threads", "device", "nproc")
_CONFIG_FIELDS = {f.name for f in fields(TrainConfig)} - set(_NOT_SEARCHABLE)


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
            if name in ("n_hidden", "units") and any(has_mlp_hidden(m) for m in models):
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
                name in ("n_hidden", "units") and has_mlp_hidden(model)
            )
            if name == "model" or not applies:
                continue
            values[name] = dim.choices[0] if dim.fixed else dim.suggest(trial, name)
        return apply_values(base, values)

    def grid(self, points: int = 3) -> dict[str, list[Any]]:
        return {k: v.grid(points) for k, v in self.searched.items()}


def has_mlp_hidden(model: str) -> bool:
    return isinstance(MODELS[model].defaults.get("hidden"), tuple)


def apply_values(base: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """``base`` with sampled values applied: config fields directly, the rest as model options."""
    model = values.get("model", base.model)
    # The base's model options belong to the base's model; another family starts from its defaults.
    options = dict(base.model_options) if model == base.model else {}
    defaults = MODELS[model].defaults
    if ("n_hidden" in values or "units" in values) and has_mlp_hidden(model):
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
    if has_mlp_hidden(base.model):
        dims["units"] = {"low": 32, "high": 512, "log": True}
    elif isinstance(options.get("width"), int):
        width = int(base.model_options.get("width", options["width"]))
        dims["width"] = sorted({max(1, width // 2), width, width * 2})
    dims["weight_decay"] = {"low": 1e-5, "high": 1e-1, "log": True}
    return SearchSpace.from_dict(dims)
