"""The one typed training config, its named recipes and config files. Imports no torch.

Every field is a ``digitlab train`` flag (``batch_size`` -> ``--batch-size``); a recipe is a named
set of overrides of the defaults. ``assemble(recipe, file, flags)`` is how every command (train,
lr-find, tune) turns its options into a config: the recipe, then the config file, then the flags.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from digitlab.errors import ConfigError

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "adadelta", "rmsprop")
SCHEDULES = ("constant", "step", "cosine", "one-cycle")
INITS = ("default", "glorot-uniform", "he-normal", "truncated-normal", "normal", "zeros")
MONITORS = ("val_loss", "val_acc")
PRECISIONS = ("auto", "fp32", "bf16")
LR_SCALINGS = ("linear", "sqrt", "none")  # how the learning rate follows the global batch of data-parallel runs


@dataclass
class TrainConfig:
    """Everything a training run depends on. Defaults are the ``fast`` recipe on MNIST.

    Three settings of the fast recipe stay off by default, ``augment``, ``aug_morph`` and bf16 ``precision``, as every
    other recipe (the notebooks', the reference recipes) inherits the defaults and must run like its
    original: ``RECIPES["fast"]`` turns them on, and ``digitlab train`` with no options uses that recipe.
    Every field is a ``digitlab train`` flag (``batch_size`` -> ``--batch-size``).
    """

    # data
    dataset: str = "mnist"
    data_dir: str | None = None
    split: str = "default"
    val_size: int = 5000
    train_subset: int | None = None  # use only the first N training images (after shuffling)
    scaler: str = "mean-std"
    # model
    model: str = "fast"
    model_options: dict[str, Any] = field(default_factory=dict)
    init: str = "default"
    init_std: float | None = None
    # optimisation
    optimizer: str = "adamw"
    lr: float = 0.01
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    rho: float = 0.9  # adadelta / rmsprop smoothing
    weight_decay: float = 0.01
    schedule: str = "one-cycle"
    warmup_epochs: float = 0.0
    step_size: int = 1  # epochs between decays of the 'step' schedule
    gamma: float = 0.7  # decay factor of the 'step' schedule
    epochs: int = 1
    batch_size: int = 128
    eval_batch_size: int = 512  # small batches stay in cache: ~1.7x the images/s of 2048 on CPU
    label_smoothing: float = 0.1
    # batched augmentation (on in the fast recipe, off in the notebooks' recipes)
    augment: bool = False
    aug_shift: float = 2.0  # pixels
    aug_rotate: float = 12.0  # degrees
    aug_scale: float = 0.12  # relative
    aug_shear: float = 0.25
    aug_elastic: float = 0.0  # pixels of smooth random displacement
    aug_morph: float = 0.0  # probability of thickening or thinning strokes (the fast recipe: 0.6)
    aug_skip: float = 0.0  # probability of a pen skip: a thin gap across the strokes (the fast recipe: 0.2)
    aug_flip: float = 0.0  # probability of a left-right mirror (clothes, not digits: the fashion recipe)
    # domain randomisation for real handwriting (digitlab.realism; each a probability per image, off by default)
    aug_stretch: float = 0.0  # narrow side stretched toward a square, as box-filling scanners (USPS) do
    aug_slant: float = 0.0  # a stronger slant (shear up to 0.6)
    aug_width: float = 0.0  # a thicker or thinner pen (up to ~1.5 px)
    aug_pressure: float = 0.0  # uneven pen pressure and faint or saturated strokes
    aug_break: float = 0.0  # one to three small gaps in the strokes
    aug_scan: float = 0.0  # a 1-bit scan: blurred, binarised, smoothed again
    aug_lowres: float = 0.0  # seen at 7-14 px and upscaled again (small photos, 8x8 bitmaps)
    # early stopping
    early_stopping: bool = False
    monitor: str = "val_loss"
    patience: int = 5
    restore_best: bool = True
    # run
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    deterministic: bool = False
    compile: bool = False
    precision: str = "fp32"  # fp32, bf16 (autocast), or auto: bf16 where the CPU or GPU has native bf16
    name: str | None = None
    runs_dir: str | None = None
    tensorboard: bool = False
    report: bool = True
    # data-parallel (see docs/distributed.md): batch_size is per process, lr grows with the global batch
    nproc: int = 1  # processes to start on this machine through torchrun (ignored under torchrun)
    lr_scaling: str = "linear"  # lr x world size (linear), x sqrt(world size) (sqrt), or unchanged (none)
    recipe: str = "fast"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"Unknown config field(s) {', '.join(unknown)}: valid fields are {', '.join(sorted(known))}."
            )
        d = dict(d)
        if "betas" in d and d["betas"] is not None:
            d["betas"] = tuple(float(b) for b in d["betas"])
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# Named recipes: overrides of the defaults. Flags given by the user override a recipe.
RECIPES: dict[str, dict[str, Any]] = {
    # The default of 'digitlab train': 1 epoch, AdamW one-cycle, with augmentation for real handwriting
    # (slant, rotation, size, position, stroke width, pen skips) and bf16 where the CPU has it. See docs/benchmarks.md.
    "fast": dict(augment=True, aug_morph=0.6, aug_skip=0.2, precision="auto"),
    # Accuracy first, single model: ~99.6% in 20 epochs (see docs/benchmarks.md).
    "best": dict(
        model="best", epochs=20, batch_size=128, lr=0.05, optimizer="nesterov", schedule="one-cycle",
        weight_decay=5e-4, label_smoothing=0.1, augment=True, aug_shift=2.0, aug_rotate=12.0,
        aug_scale=0.12, aug_shear=0.25, aug_morph=0.3, precision="auto",
    ),
    # The bundled reader (docs/reader.md): the fast model on MNIST + USPS (twice, and once rendered on paper and
    # read back through preprocess) with domain randomisation for real handwriting, 10 epochs. Calibrate it
    # afterwards with 'digitlab calibrate RUN'. USPS's held-out 1,500 digits are never in its data.
    "reader": dict(
        dataset="mnist+usps*2+rendered:usps", epochs=10, augment=True, aug_morph=0.6, aug_skip=0.2, aug_stretch=0.3,
        aug_slant=0.1, aug_width=0.15, aug_pressure=0.15, aug_break=0.1, aug_scan=0.15, aug_lowres=0.15,
        precision="auto",
    ),
    # The bundled reader's second member (docs/reader.md): the best model, 12 epochs, on the reader's data plus
    # the 1s and 7s of MNIST and USPS written the continental-European way (restyled:NAME). Combined with a
    # 'reader' run by digitlab.reader.combine, then calibrated.
    "reader-best": dict(
        model="best", dataset="mnist+usps*2+rendered:usps+restyled:mnist+restyled:usps", epochs=12, augment=True,
        aug_morph=0.6, aug_skip=0.2, aug_stretch=0.3, aug_slant=0.1, aug_width=0.15, aug_pressure=0.15,
        aug_break=0.1, aug_scan=0.15, aug_lowres=0.15, precision="auto",
    ),
    # pytorch/examples mnist/main.py: Net, Adadelta lr 1.0, StepLR gamma 0.7, batch 64, 14 epochs.
    "pytorch-example": dict(
        model="pytorch-example", optimizer="adadelta", lr=1.0, rho=0.9, weight_decay=0.0, schedule="step",
        step_size=1, gamma=0.7, epochs=14, batch_size=64, scaler="mean-std", label_smoothing=0.0,
        split="none", model_options={},
    ),
    # keras-io mnist_convnet: Adam (Keras defaults), batch 128, 15 epochs, 10% validation.
    "keras-convnet": dict(
        model="keras-convnet", optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant",
        epochs=15, batch_size=128, scaler="unit", label_smoothing=0.0, init="glorot-uniform",
    ),
    # notebook 000: softmax regression and the 36-unit MLP, Adam, batch 64, 15 epochs, stratified
    # 5,000/5,000 split.
    "notebook-000-logreg": dict(
        model="logreg", split="notebook-000", scaler="unit", optimizer="adam", lr=1e-3, weight_decay=0.0,
        schedule="constant", epochs=15, batch_size=64, label_smoothing=0.0, init="glorot-uniform",
    ),
    "notebook-000-mlp": dict(
        model="mlp", model_options={"hidden": [36]}, split="notebook-000", scaler="unit", optimizer="adam",
        lr=1e-3, weight_decay=0.0, schedule="constant", epochs=15, batch_size=64, label_smoothing=0.0,
        init="glorot-uniform",
    ),
    # notebook 001: MLP 128 and cnn-small, Adam 1e-3, batch 128, first 70% / last 30% split.
    "notebook-001-mlp": dict(
        model="mlp", model_options={"hidden": [128]}, split="notebook-001", scaler="unit", optimizer="adam",
        lr=1e-3, weight_decay=0.0, schedule="constant", epochs=15, batch_size=128, label_smoothing=0.0,
        init="glorot-uniform",
    ),
    "notebook-001-cnn": dict(
        model="cnn-small", split="notebook-001", scaler="unit", optimizer="adam", lr=1e-3, weight_decay=0.0,
        schedule="constant", epochs=10, batch_size=128, label_smoothing=0.0, init="glorot-uniform",
    ),
    # notebook 002: MLP 3x64 in PyTorch on [-1, 1] inputs.
    "notebook-002-mlp": dict(
        model="mlp", model_options={"hidden": [64, 64, 64]}, scaler="symmetric", optimizer="adam", lr=1e-3,
        weight_decay=0.0, schedule="constant", epochs=10, batch_size=64, label_smoothing=0.0,
    ),
    # notebook 003: Fashion-MNIST MLP 300-100, SGD lr 0.01, 30 epochs, first 5,000 as validation.
    "notebook-003-mlp": dict(
        dataset="fashion-mnist", model="mlp", model_options={"hidden": [300, 100]}, split="notebook-003",
        scaler="unit", optimizer="sgd", lr=0.01, momentum=0.0, weight_decay=0.0, schedule="constant",
        epochs=30, batch_size=32, label_smoothing=0.0, init="glorot-uniform",
    ),
    # notebook 004: 8x8 digits, standard scaling, tanh MLP [100], SGD.
    "notebook-004-mlp": dict(
        dataset="digits", model="mlp", model_options={"hidden": [100], "activation": "tanh"},
        scaler="standard", optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant",
        epochs=15, batch_size=32, label_smoothing=0.0, init="glorot-uniform",
    ),
    # Fashion-MNIST: our own recipe (the accuracy model with augmentation suited to clothes).
    "fashion": dict(
        dataset="fashion-mnist", model="best", epochs=15, batch_size=128, lr=0.05, optimizer="nesterov",
        schedule="one-cycle", weight_decay=5e-4, label_smoothing=0.1, augment=True, aug_shift=2.0,
        aug_rotate=0.0, aug_scale=0.0, aug_shear=0.0, precision="auto",
    ),
}


def recipe_config(recipe: str = "fast", **overrides: Any) -> TrainConfig:
    """The config of a named recipe with ``overrides`` applied on top."""
    if recipe not in RECIPES:
        raise ConfigError(f"Unknown recipe '{recipe}': choose one of {', '.join(RECIPES)}.")
    return TrainConfig(**{**RECIPES[recipe], **overrides, "recipe": recipe})


def read_table_file(path: str | Path, what: str = "Config file", flag: str = "--config") -> dict[str, Any]:
    """The top-level table of a TOML, YAML or JSON file; ``what`` and ``flag`` name it in errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} '{path}' does not exist: check the path given to {flag}.")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ConfigError(f"{what} '{path}' must end in .toml, .yaml, .yml or .json.")
    try:
        # The parsers are imported for their own files only: together they cost `digitlab --help` as much
        # as typer itself.
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as exc:  # noqa: BLE001 - any parser error is the user's file
        raise ConfigError(f"{what} '{path}' could not be parsed ({exc}): fix its syntax.") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what} '{path}' must hold a table of option = value pairs.")
    return data


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML, YAML or JSON file of TrainConfig fields (a top-level [train] table is accepted)."""
    data = read_table_file(path)
    return data.get("train", data)


def model_defaults(model: str) -> dict[str, Any]:
    """The training defaults a registered model brings (``register_model(..., train=...)``): overrides
    of the fast recipe, e.g. no CNN augmentation or label smoothing for the linear model and the MLP."""
    from digitlab.models import MODELS  # imports torch: only once a model is named

    info = MODELS.get(model)
    return dict(info.train_defaults) if info is not None else {}


def assemble(
    recipe: str | None = None,
    file: str | Path | Mapping[str, Any] | None = None,
    flags: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """The config of a command line: a starting point, then the config file, then the flags (later wins).

    The starting point is ``base`` (e.g. a run's saved config) if given, else the recipe: ``recipe``,
    else the file's ``recipe`` entry, else the fast recipe with the training defaults of the model
    the file or flags name (``model_defaults``: a linear model gets no CNN augmentation), else ``fast``.
    ``file`` is a path (``load_config_file``) or an already read table; in ``flags`` None means "not
    given". ``model_options`` (``-o KEY=VALUE``) merge: the starting point's options, then the file's,
    then the flags' (as a dict or a list of KEY=VALUE strings), each key replaced by the later value; the
    starting point's options are dropped when the file or flags switch to another model (they are that
    model's).
    """
    given = dict(load_config_file(file) if isinstance(file, str | Path) else (file or {}))
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    if "model_options" in flags and not isinstance(flags["model_options"], Mapping):
        from digitlab.models import parse_options  # imports torch

        flags["model_options"] = parse_options(flags["model_options"])
    if isinstance(flags.get("betas"), str):
        try:
            flags["betas"] = tuple(float(b) for b in flags["betas"].split(","))
        except ValueError:
            raise ConfigError(f"--betas must be two numbers like 0.9,0.999, got '{flags['betas']}'.") from None
    recipe = recipe or given.pop("recipe", None)
    given.pop("recipe", None)
    model = flags.get("model", given.get("model"))
    if base is not None:
        start = TrainConfig.from_dict(dict(base)).to_dict()
    elif recipe is None and model is not None and model_defaults(model):
        start = recipe_config("fast", **model_defaults(model)).to_dict()
    else:
        start = recipe_config(recipe or "fast").to_dict()
    options = dict(start.get("model_options") or {}) if model in (None, start["model"]) else {}
    for layer in (given, flags):
        options.update(layer.get("model_options") or {})
    return TrainConfig.from_dict({**start, **given, **flags, "model_options": options})


def validate(config: TrainConfig) -> None:
    """Check the config before any work starts; one clear error per problem."""
    from digitlab.data import SCALERS  # data and models import torch: kept off `digitlab --help`
    from digitlab.models import MODELS

    def bad(msg: str) -> None:
        raise ConfigError(msg)

    if config.model not in MODELS:
        bad(f"Unknown model '{config.model}': choose one of {', '.join(sorted(MODELS))} (see 'digitlab models').")
    known = ("mnist", "fashion-mnist", "usps", "digits")
    parts = [config.dataset] if config.dataset.startswith(("folder:", "openml:")) else config.dataset.split("+")
    for part in parts:
        name, star, times = part.strip().rpartition("*")
        part = name if star and times.isdigit() else part
        if part.strip() not in known and not part.strip().startswith(("folder:", "openml:", "rendered:", "restyled:")):
            bad(
                f"Unknown dataset '{config.dataset}': use mnist, fashion-mnist, usps, digits, folder:PATH, "
                "openml:NAME, rendered:NAME, restyled:NAME or several joined by '+' (mnist+usps)."
            )
    if config.optimizer not in OPTIMIZERS:
        bad(f"Unknown optimizer '{config.optimizer}': choose one of {', '.join(OPTIMIZERS)}.")
    if config.schedule not in SCHEDULES:
        bad(f"Unknown schedule '{config.schedule}': choose one of {', '.join(SCHEDULES)}.")
    if config.init not in INITS:
        bad(f"Unknown init '{config.init}': choose one of {', '.join(INITS)}.")
    if config.scaler not in SCALERS:
        bad(f"Unknown scaler '{config.scaler}': choose one of {', '.join(SCALERS)}.")
    if config.precision not in PRECISIONS:
        bad(f"Unknown precision '{config.precision}': choose one of {', '.join(PRECISIONS)}.")
    if config.optimizer in ("momentum", "nesterov") and not config.momentum > 0:
        bad(f"The {config.optimizer} optimizer needs --momentum above 0 (e.g. 0.9), got {config.momentum}.")
    if config.monitor not in MONITORS:
        bad(f"Unknown monitor '{config.monitor}': choose one of {', '.join(MONITORS)}.")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        bad(f"Learning rate must be a positive number, got {config.lr}: pass e.g. --lr 0.01.")
    if config.epochs < 1:
        bad(f"Epochs must be at least 1, got {config.epochs}.")
    if config.batch_size < 1 or config.eval_batch_size < 1:
        bad(f"Batch size must be at least 1, got {config.batch_size}.")
    if config.weight_decay < 0 or not 0 <= config.label_smoothing < 1:
        bad("Weight decay must be >= 0 and label smoothing in [0, 1).")
    if config.warmup_epochs < 0 or config.warmup_epochs > config.epochs:
        bad(f"Warm-up of {config.warmup_epochs} epochs must lie between 0 and the {config.epochs} epochs.")
    if config.patience < 1:
        bad(f"Patience must be at least 1 epoch, got {config.patience}.")
    if config.nproc < 1:
        bad(f"--nproc must be at least 1 process, got {config.nproc}.")
    if config.lr_scaling not in LR_SCALINGS:
        bad(f"Unknown lr scaling '{config.lr_scaling}': choose one of {', '.join(LR_SCALINGS)}.")
    if config.train_subset is not None and config.train_subset < 1:
        bad(f"--train-subset must be a positive number of images, got {config.train_subset}.")
    for name in ("aug_morph", "aug_flip", "aug_skip", "aug_stretch", "aug_slant", "aug_width", "aug_pressure",
                 "aug_break", "aug_scan", "aug_lowres"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            bad(f"--{name.replace('_', '-')} is a probability: give a value from 0 to 1, got {getattr(config, name)}.")
