"""The `digitlab` command: a thin layer of options over the Python API.

Every command catches the errors a user can cause (``DigitlabError``) and prints them as one
sentence with exit code 2; programming errors still show their traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from digitlab.config import TrainConfig, assemble
from digitlab.errors import ConfigError, DigitlabError

app = typer.Typer(
    name="digitlab",
    help="Handwritten-digit classifiers end to end: data, training, evaluation, real images, serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a DigitlabError into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DigitlabError as exc:
            # escape: messages quote file contents and option syntax such as "[space] table"
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def print_json(obj: Any) -> None:
    """Machine output: plain JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def show(result: Any, as_json: bool, printer: Callable[[Any, Console], None]) -> None:
    """A command's result: JSON on stdout with --json, else the command's own rich rendering."""
    if as_json:
        print_json(result)
    else:
        printer(result, console)


def main() -> None:
    app()


# --- commands ------------------------------------------------------------------------------
# Each command is a few lines that parse options and call the Python API.


# --- train ---------------------------------------------------------------------------------------

_TRAIN_HELP = {
    "dataset": "mnist, fashion-mnist, digits, folder:PATH or openml:NAME.",
    "data_dir": "Folder holding the dataset files (default: search the usual places).",
    "split": "default, notebook-000, notebook-001, notebook-003 or none.",
    "val_size": "Validation images for the default split.",
    "train_subset": "Train on the first N images of the shuffled training split only.",
    "scaler": "unit, symmetric, standard or mean-std.",
    "model": "Model name (see 'digitlab models'). Without --recipe the model's own training defaults apply "
    "(logreg, mlp: no augmentation or label smoothing, 5 epochs).",
    "model_options": "Model option KEY=VALUE, repeatable (e.g. -o hidden=300,100 -o activation=tanh); merged "
    "into the recipe's options (a key given replaces the recipe's value).",
    "init": "Weight init: default, glorot-uniform, he-normal, truncated-normal, normal, zeros.",
    "init_std": "Standard deviation for the normal and truncated-normal inits.",
    "optimizer": "sgd, momentum, nesterov, adam, adamw, adadelta or rmsprop.",
    "lr": "Peak learning rate.",
    "momentum": "Momentum of the momentum and nesterov optimizers.",
    "betas": "Adam betas as B1,B2.",
    "rho": "Smoothing constant of adadelta and rmsprop.",
    "weight_decay": "L2 weight decay (decoupled for adamw).",
    "schedule": "constant, step, cosine or one-cycle.",
    "warmup_epochs": "Linear warm-up length in epochs (for one-cycle: the rising part).",
    "step_size": "Epochs between decays of the step schedule.",
    "gamma": "Decay factor of the step schedule.",
    "epochs": "Number of epochs.",
    "batch_size": "Training batch size.",
    "eval_batch_size": "Evaluation batch size.",
    "label_smoothing": "Label smoothing of the cross-entropy loss.",
    "augment": "Batched augmentation: random shifts, rotations, scale, shear.",
    "aug_shift": "Largest shift in pixels.",
    "aug_rotate": "Largest rotation in degrees.",
    "aug_scale": "Largest relative change of scale.",
    "aug_shear": "Largest shear.",
    "aug_elastic": "Strength of smooth elastic distortion in pixels (0: off).",
    "aug_morph": "Probability of making strokes thicker or thinner.",
    "aug_skip": "Probability of a pen skip: a thin gap across the strokes.",
    "aug_flip": "Probability of a left-right mirror (for clothes, never digits).",
    "aug_stretch": "Probability of stretching a digit's narrow side toward a square (box-filling scans).",
    "aug_slant": "Probability of a strong slant (shear up to 0.6).",
    "aug_width": "Probability of a thicker or thinner pen (up to ~1.5 px).",
    "aug_pressure": "Probability of uneven pen pressure.",
    "aug_break": "Probability of small gaps in the strokes.",
    "aug_scan": "Probability of a 1-bit scan look (blur, binarise, smooth).",
    "aug_lowres": "Probability of a low-resolution look (7-14 px, upscaled again).",
    "early_stopping": "Stop when the monitored value stops improving.",
    "monitor": "val_loss or val_acc.",
    "patience": "Epochs without improvement before stopping.",
    "restore_best": "With early stopping, end with the best epoch's weights.",
    "seed": "Random seed (same seed, same machine: same history).",
    "threads": "CPU threads (default: $OMP_NUM_THREADS when set, else all cores).",
    "device": "auto, cpu, cuda, cuda:N or mps.",
    "deterministic": "Ask torch for deterministic kernels (slower on GPUs).",
    "precision": "auto, fp32 or bf16 (auto: bf16 autocast where the CPU has native bf16; not bit-exact with fp32).",
    "compile": "Use torch.compile (breaks bit-exact repeatability; pays off on long runs only).",
    "name": "Run name (default: timestamp and model).",
    "runs_dir": "Folder of run folders (default: ./runs or $DIGITLAB_RUNS_DIR).",
    "tensorboard": "Write TensorBoard logs to RUN/tensorboard.",
    "report": "Write RUN/report.html at the end.",
}


def _train_command(**kwargs: object) -> None:
    from digitlab.training import train  # torch: only once a command trains

    resume = kwargs.pop("resume")
    quiet = kwargs.pop("quiet")
    as_json = kwargs.pop("json")
    config_file = kwargs.pop("config")
    recipe = kwargs.pop("recipe")
    progress = "json" if as_json else ("quiet" if quiet else "rich")
    flags = {k: v for k, v in kwargs.items() if v is not None and v != []}
    if resume is not None:
        unsupported = set(flags) - {"epochs"}
        if unsupported:
            raise ConfigError(
                "With --resume only --epochs may change; the run keeps its saved config "
                f"(drop {', '.join('--' + k.replace('_', '-') for k in sorted(unsupported))})."
            )
        train(resume=resume, progress=progress, epochs=flags.get("epochs"))
        return
    train(assemble(recipe, config_file, flags), progress=progress)


def _build_train_signature() -> None:
    params = []
    for f in dataclasses.fields(TrainConfig):
        if f.name == "recipe":
            continue
        flag = "--" + f.name.replace("_", "-")
        help_ = _TRAIN_HELP.get(f.name, "")
        if f.name == "model_options":
            opt = typer.Option(None, "--model-option", "-o", help=help_)
            ann = Optional[list[str]]  # noqa: UP045 - typer needs typing.Optional here
        elif f.name == "betas":
            opt, ann = typer.Option(None, flag, help=help_), Optional[str]  # noqa: UP045
        elif f.type in ("bool", bool):
            opt = typer.Option(None, f"{flag}/--no-{flag[2:]}", help=help_)
            ann = Optional[bool]  # noqa: UP045
        else:
            base = {"int": int, "float": float, "str": str}
            t = next((v for k, v in base.items() if str(f.type).startswith(k)), str)
            opt, ann = typer.Option(None, flag, help=help_), Optional[t]  # noqa: UP045
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann))
    extra = [
        ("recipe", typer.Option(None, "--recipe", help="Start from a named recipe (fast, best, pytorch-example, "
                                "keras-convnet, notebook-000-logreg, ...); the config file, then flags, override "
                                "it. Default: fast, or the training defaults of the --model named."),
         Optional[str]),  # noqa: UP045
        ("config", typer.Option(None, "--config", help="TOML or YAML file of options."), Optional[str]),  # noqa: UP045
        ("resume", typer.Option(None, "--resume", help="Continue an interrupted run (folder or name)."),
         Optional[str]),  # noqa: UP045
        ("quiet", typer.Option(False, "--quiet", "-q", help="Print nothing but errors."), bool),
        ("json", typer.Option(False, "--json", help="Print JSON event lines for scripts."), bool),
    ]
    for name, opt, ann in extra:
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann))

    def train_cmd(**kwargs: object) -> None:
        user_errors(_train_command)(**kwargs)

    train_cmd.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    train_cmd.__doc__ = (
        "Train a model. With no options: the fast recipe on MNIST; prints test accuracy, the run folder "
        "and its report."
    )
    app.command("train")(train_cmd)


_build_train_signature()


# --- explore ---------------------------------------------------------------------------------------


@app.command("explore")
@user_errors
def explore_command(
    dataset: str = typer.Argument(..., help="mnist, fashion-mnist, digits, folder:PATH or openml:NAME."),
    out: str | None = typer.Option(None, "--out", help="Folder for the PNGs (default: runs/explore-DATASET)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Folder holding the dataset files."),
) -> None:
    """Describe a dataset and draw its sample, class-count and mean-image PNGs.

    Size, shapes, dtypes, value range and class counts of every split."""
    from digitlab.explore import explore, print_summary

    summary = explore(dataset, out=out, data_dir=data_dir)
    show(summary, as_json, print_summary)


# --- models --------------------------------------------------------------------------------------


@app.command("models")
@user_errors
def models_command(
    name: str | None = typer.Argument(None, help="A model to describe; leave out to list them all."),
    summary: bool = typer.Option(False, "--summary", help="Print the layer table (Keras-style summary)."),
    input_shape: str = typer.Option("1,28,28", "--input-shape", help="Input as C,H,W (digits: 1,8,8)."),
    num_classes: int = typer.Option(10, "--num-classes", help="Number of classes."),
    option: list[str] | None = typer.Option(
        None, "--option", "-o", help="Model option KEY=VALUE, repeatable (e.g. -o hidden=300,100)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the registered models with their parameter counts, or describe one model's layers."""
    from rich.table import Table

    from digitlab.errors import ConfigError
    from digitlab.models import (
        build_model,
        count_parameters,
        format_summary,
        list_models,
        model_summary,
        parse_options,
    )

    if name is None:
        rows = list_models()
        if as_json:
            print_json(rows)
            return
        table = Table(title="Models (parameters on 1x28x28 input, 10 classes)")
        table.add_column("name", style="bold")
        table.add_column("parameters", justify="right")
        table.add_column("description")
        for row in rows:
            table.add_row(row["name"], f"{row['parameters_28x28']:,}", row["description"])
        console.print(table)
        return
    try:
        shape = [int(v) for v in input_shape.split(",")]
    except ValueError:
        raise ConfigError(f"--input-shape '{input_shape}' is not C,H,W integers: use e.g. 1,28,28.") from None
    model = build_model(name, shape, num_classes, **parse_options(option))
    if as_json:
        print_json(
            {
                **model.spec,
                "parameters": count_parameters(model, trainable_only=False),
                "trainable_parameters": count_parameters(model),
                **({"layers": model_summary(model)} if summary else {}),
            }
        )
    elif summary:
        console.print(format_summary(model), markup=False, highlight=False, soft_wrap=True)
    else:
        spec = model.spec
        options = ", ".join(f"{k}={v}" for k, v in spec["options"].items()) or "none"
        console.print(
            f"[bold]{spec['name']}[/]: {count_parameters(model, trainable_only=False):,} parameters on "
            f"{'x'.join(map(str, spec['input_shape']))} input, {spec['num_classes']} classes; options: {options}",
            highlight=False,
        )
        console.print("Add --summary for the layer table.")


# --- baseline ------------------------------------------------------------------------------------


@app.command("baseline")
@user_errors
def baseline_command(
    dataset: str = typer.Argument("mnist", help="mnist, fashion-mnist, digits, folder:PATH or openml:NAME."),
    kind: str = typer.Option("logreg", "--kind", help="logreg (LogisticRegression) or linear-svc (LinearSVC)."),
    split: str = typer.Option("notebook-000", "--split", help="Split scheme (notebook 000's by default)."),
    scaler: str = typer.Option("unit", "--scaler", help="unit, symmetric, standard or mean-std."),
    C: float = typer.Option(1.0, "--C", help="Inverse regularization strength."),
    max_iter: int = typer.Option(100, "--max-iter", help="Solver iterations (scikit-learn's default 100)."),
    train_subset: int = typer.Option(None, "--train-subset", help="Fit on N training images only."),
    seed: int = typer.Option(0, "--seed"),
    name: str = typer.Option(None, "--name", help="Run name."),
    runs_dir: str = typer.Option(None, "--runs-dir", help="Folder of run folders."),
    data_dir: str = typer.Option(None, "--data-dir", help="Folder holding the dataset files."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics as JSON."),
) -> None:
    """Fit a scikit-learn linear baseline on raw scaled pixels and save it as a run."""
    from digitlab.baseline import baseline

    run = baseline(dataset, kind, split, scaler, C, max_iter, train_subset, seed, runs_dir, name, data_dir)
    m = run.metrics
    if as_json:
        print_json({"run": str(run.path), **{k: m[k] for k in ("train", "val", "test") if k in m}})
        return
    val = f"val accuracy {m['val']['accuracy']:.4f}, " if "val" in m else ""
    console.print(f"{kind} on {dataset}: {val}test accuracy {m['test']['accuracy']:.4f} "
                  f"({m['train_seconds']:.1f}s to fit)\nrun folder: {run.path}")


# --- tune, study, lr-find (digitlab.tune, digitlab.studies) -----------------------------------------


@app.command("tune")
@user_errors
def tune_command(
    preset: str | None = typer.Option(None, "--preset", help="Built-in search: notebook-003 or mlp."),
    space: str | None = typer.Option(
        None, "--space", help="TOML/YAML/JSON file with a \\[space] table (and optionally a \\[train] table)."
    ),
    model: str | None = typer.Option(None, "--model", help="Model or models to search, e.g. mlp,cnn-small."),
    n_hidden: str | None = typer.Option(None, "--n-hidden", help="MLP hidden layers: 1,2 or 1..3."),
    units: str | None = typer.Option(None, "--units", help="Units per MLP hidden layer: 50..300 or 64,128."),
    activation: str | None = typer.Option(None, "--activation", help="MLP activations: relu,tanh."),
    lr: str | None = typer.Option(None, "--lr", help="Learning rate: 1e-5..1e-1 (log-uniform) or 0.1,0.01."),
    batch_size: str | None = typer.Option(None, "--batch-size", help="Batch sizes: 32,64,128 or 16..256."),
    optimizer: str | None = typer.Option(None, "--optimizer", help="Optimizers: sgd,nesterov,adam."),
    weight_decay: str | None = typer.Option(None, "--weight-decay", help="Weight decay: 1e-6..1e-2 (log)."),
    dropout: str | None = typer.Option(None, "--dropout", help="Dropout: 0..0.5 or 0,0.2."),
    recipe: str | None = typer.Option(None, "--recipe", help="Base recipe (default: the preset's, else fast)."),
    config: str | None = typer.Option(None, "--config", help="TOML/YAML file of base training options."),
    dataset: str | None = typer.Option(None, "--dataset", help="mnist, fashion-mnist, digits, folder:PATH ..."),
    split: str | None = typer.Option(None, "--split", help="default, notebook-000/001/003 (not none)."),
    train_subset: int | None = typer.Option(None, "--train-subset", help="Train each trial on N images only."),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs per trial."),
    early_stopping: bool | None = typer.Option(None, "--early-stopping/--no-early-stopping", help="Per trial."),
    patience: int | None = typer.Option(None, "--patience", help="Early-stopping patience in epochs."),
    seed: int | None = typer.Option(None, "--seed", help="Training seed of every trial."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads per trial."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, mps."),
    runs_dir: str | None = typer.Option(None, "--runs-dir", help="Folder of run folders (default ./runs)."),
    report: bool | None = typer.Option(None, "--report/--no-report", help="Write the best run's report.html."),
    n_trials: int = typer.Option(20, "--n-trials", help="Trials this command runs (0: just report the study)."),
    timeout: float | None = typer.Option(None, "--timeout", help="Stop starting trials after this many seconds."),
    total_trials: int | None = typer.Option(None, "--total-trials", help="Cap on the study's trials (all workers)."),
    sampler: str = typer.Option("tpe", "--sampler", help="tpe, random or grid."),
    sampler_seed: int | None = typer.Option(None, "--sampler-seed", help="Seed of the sampler."),
    prune: bool = typer.Option(True, "--prune/--no-prune", help="Median pruning on per-epoch val accuracy."),
    storage: str | None = typer.Option(
        None, "--storage", help="Database URL (default: sqlite in runs/tune-STUDY/study.db); shareable by workers."
    ),
    study: str | None = typer.Option(None, "--study", help="Study name (default: the preset, else DATASET-search)."),
    final: bool = typer.Option(True, "--final/--no-final", help="Retrain the best trial and test it (once)."),
    out: str | None = typer.Option(None, "--out", help="Tune folder (default runs/tune-STUDY)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON event lines (a line per trial, then the result)."),
) -> None:
    """Hyperparameter search with Optuna (trials table, best config retrained and tested once, plots).

    A value list (0.1,0.01) or range (1e-5..1e-1) searches an option; one value fixes it. Running the same
    command again continues the study; several processes may share one with --storage URL --study NAME.
    """
    from digitlab.tune import build_search, trials_table, tune

    space_options = dict(model=model, n_hidden=n_hidden, units=units, activation=activation, lr=lr,
                         batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay, dropout=dropout)
    overrides = dict(dataset=dataset, split=split, train_subset=train_subset, epochs=epochs,
                     early_stopping=early_stopping, patience=patience, seed=seed, threads=threads, device=device,
                     runs_dir=runs_dir, report=report)
    search, base = build_search(preset, space, space_options, recipe, config, overrides)
    result = tune(search, base, n_trials=n_trials, timeout=timeout, sampler=sampler, storage=storage,
                  study_name=study or preset, sampler_seed=sampler_seed, prune=prune, max_total_trials=total_trials,
                  final=final, out=out, progress="json" if as_json else "rich")
    if as_json:
        return
    console.print(trials_table(result))
    params = "  ".join(f"{k}={v}" for k, v in result.best_params.items())
    console.print(f"best trial #{result.best_trial}: validation accuracy [bold]{result.best_value:.4f}[/]  {params}",
                  highlight=False)
    if result.test_accuracy is not None:
        console.print(f"test accuracy of the retrained best config: [bold]{result.test_accuracy:.4f}[/] "
                      f"(run folder {result.final_run})", highlight=False)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(f"figures: {', '.join(str(p) for p in result.figures.values())}\nstudy folder: {result.path}",
                  highlight=False)


study_app = typer.Typer(
    help="Notebook 004's studies: optimizers x initializations, and learning rates with and without momentum.",
    no_args_is_help=True,
)
app.add_typer(study_app, name="study")


def _study_base(dataset: str, model: str, options: list[str] | None, default_hidden: list[int], **fields: Any) -> Any:
    from digitlab.models import parse_options
    from digitlab.studies import study_config

    model_options = {"hidden": default_hidden, "activation": "tanh"} if model == "mlp" else {}
    model_options.update(parse_options(options))
    return study_config(dataset, model=model, model_options=model_options,
                        **{k: v for k, v in fields.items() if v is not None})


def _print_study(result: Any, columns: list[str]) -> None:
    from rich.table import Table

    table = Table(title=f"final training loss after {max(len(c.history) for c in result.curves)} epochs")
    table.add_column("initialization" if result.kind == "init" else "learning rate")
    for col in columns:
        table.add_column(col, justify="right")
    for label in dict.fromkeys(c.label for c in result.curves):
        cells = []
        for col in columns:
            c = result.curve(col, label)
            loss = "-" if not c.history else f"{c.final_loss:.4f}"
            cells.append(loss if c.status == "ok" else f"{loss} ({c.status})")
        table.add_row(label, *cells)
    console.print(table)
    console.print(f"figure: {result.figure}\ncurves: {result.csv}", highlight=False)


@study_app.command("init")
@user_errors
def study_init_command(
    dataset: str = typer.Option("digits", "--dataset", help="mnist, fashion-mnist, digits, ..."),
    model: str = typer.Option("mlp", "--model", help="Model (default: notebook 004's tanh MLP [100, 100])."),
    model_option: list[str] | None = typer.Option(None, "--model-option", "-o", help="Model option KEY=VALUE."),
    epochs: int = typer.Option(10, "--epochs", help="Epochs per run."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Batch size (default 32)."),
    train_subset: int | None = typer.Option(None, "--train-subset", help="Train on N images only."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of every run."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads."),
    out: str | None = typer.Option(None, "--out", help="Output folder (default runs/study-init-DATASET)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON event lines and the result."),
) -> None:
    """Optimizers x weight initializations: a loss panel per optimizer, a line per init, a CSV of curves.

    Optimizers: SGD lr 0.1, Adam (lr 1e-3), SGD + Nesterov momentum 0.9; inits: Glorot uniform, truncated
    normal std 1e-3 and std 1, zeros.
    """
    from digitlab.studies import OPTIMIZER_SETUPS, init_study

    base = _study_base(dataset, model, model_option, [100, 100], epochs=epochs, batch_size=batch_size,
                       train_subset=train_subset, seed=seed, threads=threads)
    result = init_study(base, out=out, progress="json" if as_json else "rich")
    if not as_json:  # JSON mode already printed an event line per run and the result
        _print_study(result, list(OPTIMIZER_SETUPS))


@study_app.command("lr")
@user_errors
def study_lr_command(
    lrs: str = typer.Option("1e-3,1e-2,1e-1,1,10", "--lrs", help="Learning rates, comma-separated."),
    momentum: float = typer.Option(0.9, "--momentum", help="Nesterov momentum of the second panel."),
    dataset: str = typer.Option("digits", "--dataset", help="mnist, fashion-mnist, digits, ..."),
    model: str = typer.Option("mlp", "--model", help="Model (default: notebook 004's tanh MLP [100])."),
    model_option: list[str] | None = typer.Option(None, "--model-option", "-o", help="Model option KEY=VALUE."),
    epochs: int = typer.Option(15, "--epochs", help="Epochs per run."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Batch size (default 32)."),
    train_subset: int | None = typer.Option(None, "--train-subset", help="Train on N images only."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of every run."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads."),
    out: str | None = typer.Option(None, "--out", help="Output folder (default runs/study-lr-DATASET)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON event lines and the result."),
) -> None:
    """Learning-rate sweep with plain SGD and with Nesterov momentum: a panel each, a line per rate.

    Shows slow learning at small rates and instability or divergence (NaN loss) at large ones.
    """
    from digitlab.studies import lr_study

    try:
        rates = [float(v) for v in lrs.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--lrs must be numbers separated by commas, like 1e-3,1e-2,0.1, got '{lrs}'.") from None
    base = _study_base(dataset, model, model_option, [100], epochs=epochs, batch_size=batch_size,
                       train_subset=train_subset, seed=seed, threads=threads)
    result = lr_study(base, rates, momentum=momentum, out=out, progress="json" if as_json else "rich")
    if not as_json:
        _print_study(result, list(dict.fromkeys(c.group for c in result.curves)))


@app.command("lr-find")
@user_errors
def lr_find_command(
    run: str | None = typer.Argument(None, help="A run folder or name whose config to test (optional)."),
    recipe: str | None = typer.Option(None, "--recipe", help="Start from a recipe (default: fast, or the model's "
                                      "training defaults), as digitlab train."),
    config: str | None = typer.Option(None, "--config", help="TOML/YAML file of training options."),
    dataset: str | None = typer.Option(None, "--dataset", help="mnist, fashion-mnist, digits, ..."),
    model: str | None = typer.Option(None, "--model", help="Model name."),
    model_option: list[str] | None = typer.Option(None, "--model-option", "-o", help="Model option KEY=VALUE, "
                                                  "merged into the recipe's (or the run's) options."),
    optimizer: str | None = typer.Option(None, "--optimizer", help="sgd, momentum, nesterov, adam, ..."),
    momentum: float | None = typer.Option(None, "--momentum", help="Momentum."),
    weight_decay: float | None = typer.Option(None, "--weight-decay", help="Weight decay."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Batch size."),
    scaler: str | None = typer.Option(None, "--scaler", help="unit, symmetric, standard, mean-std."),
    init: str | None = typer.Option(None, "--init", help="Weight init."),
    train_subset: int | None = typer.Option(None, "--train-subset", help="Use N training images only."),
    seed: int | None = typer.Option(None, "--seed", help="Seed."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, mps."),
    start_lr: float = typer.Option(1e-7, "--start-lr", help="First learning rate."),
    end_lr: float = typer.Option(10.0, "--end-lr", help="Last learning rate."),
    num_iter: int = typer.Option(100, "--num-iter", help="Mini-batches of the test."),
    out: str | None = typer.Option(None, "--out", help="Output folder (default runs/lr-find-MODEL-DATASET)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Learning-rate range test: plots loss against learning rate and suggests one.

    As fastai's: the rate grows exponentially from --start-lr to --end-lr over --num-iter mini-batches, the
    loss is smoothed, and the test stops once it exceeds 4x its best. Takes a run's config or train's options.
    """
    from digitlab.runs import resolve_run
    from digitlab.studies import lr_find

    base = json.loads((resolve_run(run) / "config.json").read_text(encoding="utf-8")) if run is not None else None
    flags = dict(dataset=dataset, model=model, model_options=model_option, optimizer=optimizer, momentum=momentum,
                 weight_decay=weight_decay, batch_size=batch_size, scaler=scaler, init=init,
                 train_subset=train_subset, seed=seed, threads=threads, device=device)
    result = lr_find(assemble(recipe, config, flags, base=base), start_lr=start_lr, end_lr=end_lr,
                     num_iter=num_iter, out=out, progress="quiet" if as_json else "rich")
    if as_json:
        print_json(result.to_dict())


# --- bench ---------------------------------------------------------------------------------------

bench_app = typer.Typer(
    help="Benchmarks: time to accuracy against reference recipes, inference speed, robustness.",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")


@bench_app.command("train")
@user_errors
def bench_train_command(
    quick: bool = typer.Option(False, "--quick", help="A smoke run in about a minute: capped references, low "
                               "targets, a training subset."),
    recipes: str | None = typer.Option(
        None, "--recipes", help="Comma list of fast, best, pytorch-example, pytorch-example-dataloader, "
        "keras-convnet (default: all)."
    ),
    seeds: int = typer.Option(1, "--seeds", help="Seeds per recipe; times and accuracies are medians."),
    max_seconds: float | None = typer.Option(
        None, "--max-seconds-per-recipe", help="Stop a recipe after this many training seconds."
    ),
    command: bool = typer.Option(True, "--command/--no-command", help="Also time the whole 'digitlab train'."),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads of every recipe (default: $OMP_NUM_THREADS when set, else all cores)."),
    out: str | None = typer.Option(None, "--out", help="Also write the JSON result to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train digitlab's recipes and the reference recipes side by side; seconds to 98/99/99.5% test accuracy."""
    from digitlab.bench import bench_train, print_train
    from digitlab.utils import atomic_write_json

    keys = [r.strip() for r in recipes.split(",") if r.strip()] if recipes else None

    def progress(r: dict) -> None:
        if not as_json:
            reached = ", ".join(f"{float(t) * 100:.1f}%: {'-' if s is None else f'{s:.1f}s'}"
                                for t, s in r["seconds_to"].items())
            err_console.print(f"[dim]{r['recipe']} done ({reached})[/]", highlight=False)

    result = bench_train(keys, quick=quick, seeds=seeds, max_seconds_per_recipe=max_seconds, command=command,
                         threads=threads, on_result=progress)
    if out:
        atomic_write_json(out, result)
    show(result, as_json, print_train)


@bench_app.command("predict")
@user_errors
def bench_predict_command(
    run: str = typer.Argument("latest", help="Run folder or name ('latest': the newest run)."),
    batch_size: int = typer.Option(512, "--batch-size", help="Batch size of the batched measurement."),
    repeats: int = typer.Option(5, "--repeats", help="Passes over the test set (the median counts)."),
    latency_samples: int = typer.Option(300, "--latency-samples", help="Single images timed one by one."),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads (default: $OMP_NUM_THREADS when set, else all cores)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Inference speed of a run through Predictor: images/second batched and single-image latency."""
    from digitlab.bench import bench_predict, print_predict
    from digitlab.utils import set_threads

    set_threads(threads)
    result = bench_predict(run, batch_size=batch_size, repeats=repeats, latency_samples=latency_samples)
    show(result, as_json, print_predict)


@bench_app.command("robust")
@user_errors
def bench_robust_command(
    runs: list[str] = typer.Argument(..., help="Run folder(s) or name(s); several runs are averaged (ensemble)."),
    tta: bool = typer.Option(False, "--tta", help="Average over 1-pixel shifts (test-time augmentation)."),
    limit: int | None = typer.Option(None, "--limit", help="Use only the first N test images."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Accuracy on transformed MNIST test digits: rotated, slanted, thicker, thinner, scaled, off-centre."""
    from digitlab.bench import bench_robust, print_robust

    result = bench_robust(runs, tta=tta, limit=limit)
    show(result, as_json, print_robust)


@bench_app.command("reader")
@user_errors
def bench_reader_command(
    run: str | None = typer.Argument(None, help="Run folder or name (default: the bundled reader)."),
    fields: int = typer.Option(300, "--fields", help="Fields of held-out USPS digits to generate and read."),
    seed: int = typer.Option(1717, "--seed", help="Seed of the generated fields (held out: used by nothing else)."),
    parts: str = typer.Option("mnist,usps,digits8,fields", "--parts", help="Comma list of mnist, usps, digits8, "
                              "fields."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Folder holding usps/zip.train.gz."),
    out: str | None = typer.Option(None, "--out", help="Also write the JSON result to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """A model on handwriting that is not MNIST's: held-out USPS and 8x8 digits as image files, USPS fields, ECE."""
    from digitlab.reader import describe, load_predictor
    from digitlab.realbench import bench_reader, print_reader
    from digitlab.utils import atomic_write_json

    predictor = load_predictor(run)
    err_console.print(f"model: {describe(predictor)}", highlight=False)
    keys = tuple(p.strip() for p in parts.split(",") if p.strip())
    result = bench_reader(predictor, fields=fields, field_seed=seed, data_dir=data_dir, parts=keys)
    if out:
        atomic_write_json(out, result)
    show(result, as_json, print_reader)


@app.command("calibrate")
@user_errors
def calibrate_command(
    run: str = typer.Argument(..., help="Run folder or name ('latest': the newest run)."),
    rendered: bool = typer.Option(True, "--rendered/--clean", help="Also fit on the validation digits rendered on "
                                  "paper and read back through preprocess (default), or on the clean split alone."),
    tta: str | None = typer.Option(None, "--tta", help="Also set the model's test-time augmentation: 'shift' "
                                   "(average over 1-pixel shifts, 5x the compute) or 'none'; default: keep it."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Fit a temperature on the run's validation split and store it in RUN/model.json (calibrated confidence)."""
    from digitlab.calibration import calibrate_run

    result = calibrate_run(run, rendered=rendered, tta=tta)
    if as_json:
        print_json(result)
        return
    console.print(f"temperature {result['temperature']:.3f} fitted on {result['fitted_on']}: NLL "
                  f"{result['nll_before']:.4f} -> {result['nll_after']:.4f}, ECE {result['ece_before']:.2%} -> "
                  f"{result['ece_after']:.2%}; threshold {result['threshold']:.3f}"
                  + (f"; test-time augmentation {result['tta']}" if result["tta"] else "")
                  + f"; stored in {result['run']}",
                  highlight=False)


# --- evaluate, report, compare, explain (digitlab.evaluate, digitlab.report, digitlab.explain) -----------


@app.command("evaluate")
@user_errors
def evaluate_command(
    run: str = typer.Argument(..., help="Run folder or name under the runs folder ('latest': the newest)."),
    split: str = typer.Option("test", "--split", help="test, val or train (rebuilt from the run's config)."),
    as_json: bool = typer.Option(False, "--json", help="Print every metric as JSON."),
    tta: bool = typer.Option(False, "--tta", help="Average over 1-pixel shifts (test-time augmentation)."),
    out: str | None = typer.Option(None, "--out", help="Folder for the figures (default: RUN/figures)."),
) -> None:
    """Evaluate a saved run on a split and write the evaluation figures.

    Accuracy, top-k, log loss, per-class report, confusion matrix, confused pairs, calibration, hardest examples."""
    from pathlib import Path

    from digitlab.evaluate import evaluate_run, format_report

    metrics = evaluate_run(run, split=split, tta=tta, out=out)
    if as_json:
        print_json(metrics)
        return
    console.print(f"[bold]{metrics['run']}[/] on the {split} set" + (" with shift TTA" if tta else ""), highlight=False)
    console.print(format_report(metrics), markup=False, highlight=False)
    hard = metrics["hardest"][:5]
    if hard:
        classes = metrics["classes"]
        console.print("\nhardest examples (index: true -> predicted, p(true)):", highlight=False)
        for h in hard:
            console.print(f"  #{h['index']}: {classes[h['true']]} -> {classes[h['pred']]}, {h['prob_true']:.2g}",
                          highlight=False)
    if metrics["recorded_accuracy"] is not None and not tta:
        same = "matches" if metrics["matches_recorded"] else "DIFFERS FROM"
        console.print(f"\naccuracy {same} the {metrics['recorded_accuracy']:.4f} recorded at training time",
                      highlight=False)
    if metrics.get("figures"):
        console.print(f"figures: {Path(next(iter(metrics['figures'].values()))).parent}", highlight=False)


@app.command("report")
@user_errors
def report_command(
    run: str = typer.Argument(..., help="Run folder or name under the runs folder ('latest': the newest)."),
    out: str | None = typer.Option(None, "--out", help="Where to write the HTML (default: RUN/report.html)."),
) -> None:
    """Rebuild a run's self-contained report.html (figures embedded, no network needed to view it)."""
    from digitlab.report import write_report

    path = write_report(run, out=out)
    console.print(f"report: {path}", highlight=False)


@app.command("compare")
@user_errors
def compare_command(
    runs: list[str] | None = typer.Argument(None, help="Runs to compare (default: every run in the runs folder)."),
    runs_dir: str | None = typer.Option(None, "--runs-dir", help="Folder of run folders."),
    as_json: bool = typer.Option(False, "--json", help="Print the leaderboard as JSON."),
    as_csv: bool = typer.Option(False, "--csv", help="Print the leaderboard as CSV."),
    out: str | None = typer.Option(None, "--out", help="PNG of the validation curves (default: RUNS_DIR/compare.png)."),
) -> None:
    """A leaderboard of runs sorted by test accuracy, and one plot overlaying their validation curves."""
    from rich.table import Table

    from digitlab.report import compare, leaderboard_csv

    result = compare(runs or None, runs_dir=runs_dir, out=out)
    if as_json:
        print_json(result)
        return
    if as_csv:
        sys.stdout.write(leaderboard_csv(result["runs"]))
        return

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.2f}%"

    from rich import box

    table = Table(title="Runs by test accuracy", box=box.SIMPLE_HEAD, pad_edge=False)
    for col, justify in (("run", "left"), ("model", "left"), ("params", "right"), ("epochs", "right"),
                         ("train s", "right"), ("val acc", "right"), ("test acc", "right"), ("macro F1", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    for r in result["runs"]:
        table.add_row(
            r["name"], str(r["model"]), "–" if r["parameters"] is None else f"{r['parameters']:,}", str(r["epochs"]),
            "–" if r["train_seconds"] is None else f"{r['train_seconds']:.1f}", pct(r["val_accuracy"]),
            pct(r["test_accuracy"]), "–" if r["macro_f1"] is None else f"{r['macro_f1']:.4f}",
        )
    console.print(table)
    if result["plot"]:
        console.print(f"curves ({result['metric']}): {result['plot']}", highlight=False)


@app.command("explain")
@user_errors
def explain_command(
    run: str = typer.Argument(..., help="Run folder or name under the runs folder ('latest': the newest)."),
    image: str = typer.Option("0", "--image", help="A test-set index, or the path of an image file."),
    out: str | None = typer.Option(None, "--out", help="Folder for the figures (default: RUN/figures/explain)."),
    as_json: bool = typer.Option(False, "--json", help="Print {figure: path} as JSON."),
) -> None:
    """What a model learned: templates, feature masks, filters, feature maps and saliency.

    Templates (logreg), masks and contributions (MLP), filters and maps (CNN); saliency for one image."""
    from digitlab.explain import explain_run

    figures = explain_run(run, image=image, out=out)
    if as_json:
        print_json({name: str(path) for name, path in figures.items()})
        return
    for name, path in figures.items():
        console.print(f"{name:>16}: {path}", highlight=False)


# --- predict, read, export (real images) --------------------------------------------------------


def _top3(p: Any) -> str:
    return " · ".join(f"{c} {q:.1%}" for c, q in p.top)


@app.command("predict")
@user_errors
def predict_command(
    args: list[str] = typer.Argument(..., metavar="[RUN] IMAGES...", help="An optional run folder or name "
                                     "('latest': the newest run; without it the bundled reader reads), then image "
                                     "files and/or folders (folders are read recursively)."),
    as_json: bool = typer.Option(False, "--json", help="Print all results as one JSON list."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV rows (file, class, confidence, unsure, top 3, error)."),
    show: str | None = typer.Option(None, "--show", help="Write a contact sheet PNG: original, preprocessed, "
                                    "probability bars (first 40 images)."),
    threshold: float | None = typer.Option(None, "--threshold", help="Mark predictions below this confidence "
                                           "'unsure' (default: the run's threshold, chosen on validation data)."),
    runtime: str = typer.Option("torch", "--runtime", help="torch or onnx (onnxruntime)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Images preprocessed and predicted per batch."),
) -> None:
    """Predict the class of image files the way MNIST was made: class, confidence, top 3, unsure flag.

    A file that cannot be used is reported on its line and the others still get predictions; the
    exit code is 0 when at least one image was predicted, 2 when none was."""
    import csv

    from digitlab.errors import ConfigError, ImageError
    from digitlab.predict import contact_sheet, expand_sources
    from digitlab.reader import describe, load_predictor, resolve_model_arg

    if as_json and as_csv:
        raise ConfigError("--json and --csv both ask for the output format; choose one.")
    run, images = resolve_model_arg(args)
    if not images:
        raise ConfigError(f"'{run}' is a run, and no images follow it: give image files or folders after it.")
    predictor = load_predictor(run, threshold=threshold, runtime=runtime)
    # on stderr, so that the results on stdout stay one line (or row) per image
    err_console.print(f"model: {describe(predictor)}", highlight=False)
    paths = expand_sources(images)
    writer = csv.writer(sys.stdout) if as_csv else None
    if writer is not None:
        writer.writerow(["file", "class", "confidence", "unsure", "top2", "top2_probability", "top3",
                         "top3_probability", "error"])
    results = []
    for r in predictor.predict_files(paths, batch_size=batch_size):
        results.append(r)
        if len(paths) == 1 and not r.ok:
            break  # one file given and it failed: the error sentence below says it all
        p = r.prediction
        if writer is not None:
            tops = [x for c, q in (p.top[1:3] if p else []) for x in (c, f"{q:.6f}")]
            tops += [""] * (4 - len(tops))
            writer.writerow([r.source, p.name if p else "", f"{p.confidence:.6f}" if p else "",
                             p.unsure if p else "", *tops, r.error or ""])
        elif not as_json:
            if p is None:
                console.print(f"{r.source}  [red]error:[/] {r.error}", highlight=False, soft_wrap=True)
            else:
                flag = "  [bold yellow]unsure[/]" if p.unsure else ""
                console.print(f"{r.source}  [bold]{p.name}[/]  {p.confidence:.1%}  (top 3: {_top3(p)}){flag}",
                              highlight=False, soft_wrap=True)
    ok = [r for r in results if r.ok]
    if as_json and (ok or len(paths) > 1):
        print_json([r.to_dict() for r in results])
    if show and results:
        contact_sheet(results, predictor.classes, show)
        err_console.print(f"contact sheet: {show}", highlight=False)
    if not ok:
        if len(results) == 1:
            raise ImageError(results[0].error or "The image could not be used.")
        raise ImageError(f"None of the {len(results)} images could be used; see the error on each line.")
    unsure = sum(r.prediction.unsure for r in ok)
    if not (as_json or as_csv) and len(results) > 1:
        err_console.print(f"{len(ok)} predicted ({unsure} unsure, threshold {predictor.threshold:.3f}), "
                          f"{len(results) - len(ok)} unreadable", highlight=False)


@app.command("read")
@user_errors
def read_command(
    args: list[str] | None = typer.Argument(None, metavar="[RUN] FILES_OR_FOLDERS...",
                                            help="An optional run folder or name ('latest': the newest run; "
                                            "without it the bundled reader reads), then field images and/or "
                                            "folders (read recursively)."),
    format: str = typer.Option("digits", "--format", help="digits, date (an ISO date) or amount (a decimal); "
                               "with --synthetic also checks (dates and amounts in turn)."),
    day_first: bool = typer.Option(True, "--day-first/--month-first", help="Order of day and month in dates."),
    threshold: float | None = typer.Option(None, "--threshold", help="Field confidence below which a reading is "
                                           "marked for review (default 0.9; see docs/real-images.md)."),
    digit_threshold: float | None = typer.Option(None, "--digit-threshold", help="Mark digits below this "
                                                 "confidence unsure (default: the run's threshold)."),
    as_json: bool = typer.Option(False, "--json", help="JSON: one object for one file, else a list of records."),
    as_jsonl: bool = typer.Option(False, "--jsonl", help="JSON lines: one record per file, printed as it is read."),
    as_csv: bool = typer.Option(False, "--csv", help="CSV: file, text, marked, format, value, valid, confidence, "
                                "review, error."),
    show: str | None = typer.Option(None, "--show", help="Write the field with boxes and readings as a PNG "
                                    "(several files or --synthetic: a folder of PNGs)."),
    synthetic: int | None = typer.Option(None, "--synthetic", help="Instead of images: generate N fields from "
                                         "MNIST test digits and print the accuracy."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated fields (with --synthetic)."),
) -> None:
    """Read fields of handwritten digits, dates or amounts, such as a check's: one image or many.

    Prints each field's text ('?' at unsure digits), its value in --format, its confidence and
    whether it needs review. Exit code: 0 when every file was read, 1 when some could not be (their
    records say why), 2 when none could or the command was wrong."""
    import csv

    from digitlab.errors import ConfigError, ImageError
    from digitlab.fields import FORMATS, expand_inputs, read_files
    from digitlab.reader import describe, load_predictor, resolve_model_arg
    from digitlab.utils import atomic_write

    if sum((as_json, as_jsonl, as_csv)) > 1:
        raise ConfigError("--json, --jsonl and --csv each ask for the output format; choose one.")
    run, inputs = resolve_model_arg(args)
    predictor = load_predictor(run, threshold=digit_threshold)
    err_console.print(f"model: {describe(predictor)}", highlight=False)
    if synthetic is not None:
        if inputs:
            raise ConfigError("Give either images or --synthetic N, not both.")
        if synthetic < 1:
            raise ConfigError(f"--synthetic {synthetic} generates nothing; give a number of fields of 1 or more.")
        if format not in (*FORMATS, "checks"):
            raise ConfigError(f"Unknown field format '{format}'; choose digits, date, amount or checks.")
        from digitlab.fields import fields_benchmark

        result = fields_benchmark(predictor, n=synthetic, seed=seed, save_examples=show, kind=format,
                                  threshold=threshold)
        if as_json or as_jsonl:
            print_json(result)
            return
        points = ", ".join(f"{p['accept_rate']:.1%} accepted at <= {p['max_error']:.1%} field error "
                           f"(threshold {p['threshold']:.3f})" for p in result["operating_points"])
        valid = (f"; {result['valid_rate']:.1%} read as valid, {result['valid_right'] or 0:.2%} of those right"
                 if "valid_rate" in result else "")
        console.print(
            f"{result['fields']} generated {format} fields ({result['characters']} characters, seed {seed}): "
            f"{'digit' if format == 'digits' else 'character'} accuracy {result['char_accuracy']:.2%}, "
            f"field accuracy {result['field_accuracy']:.2%}, count right {result['count_accuracy']:.2%}{valid}; "
            f"{result['fields_flagged_unsure']:.1%} of fields flagged unsure, the others read right "
            f"{result['accuracy_of_unflagged_fields'] or 0:.2%}; {points}",
            highlight=False, soft_wrap=True,
        )
        if show:
            err_console.print(f"examples: {show}", highlight=False)
        return
    if not inputs:
        raise ConfigError("Give the field images or folders to read (after the RUN, if any), or --synthetic N.")
    if format not in FORMATS:
        raise ConfigError(f"Unknown field format '{format}'; choose digits, date or amount.")
    paths = expand_inputs(inputs)
    single = len(inputs) == 1 and len(paths) == 1 and not Path(inputs[0]).is_dir()
    records = read_files(predictor, paths, format=format, day_first=day_first, threshold=threshold)
    writer = csv.writer(sys.stdout) if as_csv else None
    if writer is not None:
        writer.writerow(["file", "text", "marked", "format", "value", "valid", "confidence", "review", "error"])
    results = []
    with _progress(len(paths)) as advance:
        for r in records:
            results.append(r)
            advance()
            f = r.reading
            if show and f is not None:
                target = Path(show) if single else Path(show) / f"{Path(r.source).stem}.png"
                sheet = f.draw(r.source)
                atomic_write(target, lambda p, s=sheet: s.save(p, format="PNG"))
            if single:
                continue
            if writer is not None:
                writer.writerow([r.source, f.text if f else "", f.marked if f else "", format,
                                 (f.value or "") if f else "", f.valid if f else "",
                                 f"{f.confidence:.6f}" if f else "", f.review if f else "", r.error or ""])
                sys.stdout.flush()
            elif as_jsonl:
                sys.stdout.write(json.dumps(r.to_dict(), default=str) + "\n")
                sys.stdout.flush()
            elif not as_json:
                if f is None:
                    console.print(f"{r.source}  [red]error:[/] {r.error}", highlight=False, soft_wrap=True)
                else:
                    console.print(f"{r.source}  [bold]{f.marked}[/]  {_verdict(f)}", highlight=False,
                                  soft_wrap=True)
    ok = [r for r in results if r.ok]
    if single:
        r = results[0]
        if r.reading is None:
            raise ImageError(r.error or "The image could not be read.")
        _print_reading(r.source, r.reading, as_json, as_jsonl, writer)
        if show:
            err_console.print(f"picture: {show}", highlight=False)
        return
    if as_json:
        print_json([r.to_dict() for r in results])
    if not ok:
        raise ImageError(f"None of the {len(results)} files could be read; see the error on each record.")
    if not (as_json or as_jsonl or as_csv):
        review = sum(r.reading.review for r in ok)
        err_console.print(f"{len(ok)} read ({review} for review), {len(results) - len(ok)} unreadable",
                          highlight=False)
    if len(ok) < len(results):
        raise typer.Exit(1)


def _verdict(f: Any) -> str:
    value = f"{f.format} {f.value}" if f.valid else f"[red]{f.format}: invalid[/]"
    flag = "  [bold yellow]review[/]" if f.review else ""
    return f"{value}  confidence {f.confidence:.1%}{flag}"


def _print_reading(source: str, f: Any, as_json: bool, as_jsonl: bool, writer: Any) -> None:
    """One file's reading, in the format asked for (the single-file output of ``read``)."""
    if as_json or as_jsonl:
        sys.stdout.write(json.dumps({"file": source, **f.to_dict()}, indent=None if as_jsonl else 2,
                                    default=str) + "\n")
        return
    if writer is not None:
        writer.writerow([source, f.text, f.marked, f.format, f.value or "", f.valid, f"{f.confidence:.6f}",
                         f.review, ""])
        return
    console.print(f"read [bold]{f.marked}[/]  (best guess {f.text}; {_verdict(f)}, threshold "
                  f"{f.review_threshold:.3f})", highlight=False, soft_wrap=True)
    if not f.valid:
        console.print(f"  {f.parsed.reason}", highlight=False, soft_wrap=True)
    for i, d in enumerate(f.symbols):
        flag = "  [bold yellow]unsure[/]" if d.unsure else ""
        top = f"  (top 3: {_top3(d)})" if d.kind == "digit" else f"  ({d.kind})"
        console.print(f"  {i + 1:>2}  {d.char!r:>3}  {d.confidence:6.1%}  box {d.box}{top}{flag}", highlight=False)


@contextlib.contextmanager
def _progress(total: int) -> Any:
    """A rich progress bar on stderr for batches of 10 files or more; yields the step function."""
    if total < 10 or not err_console.is_terminal:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("reading", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err_console,
                  transient=True) as bar:
        task = bar.add_task("read", total=total)
        yield lambda: bar.advance(task)


@app.command("export")
@user_errors
def export_command(
    run: str = typer.Argument(..., help="Run folder or name ('latest': the newest run)."),
    format: str = typer.Option("onnx", "--format", help="onnx or torchscript."),
    out: str | None = typer.Option(None, "--out", help="Output file (default: RUN/model.onnx or RUN/model.pt)."),
) -> None:
    """Export a run's model to ONNX or TorchScript, its scaler included.

    Input: float32 pixels (N, H, W) in the training data's range. Outputs: logits and probabilities."""
    from digitlab.export import export_model

    path = export_model(run, format=format, out=out)
    console.print(f"wrote {path}", highlight=False)


# --- serve (digitlab.serve, digitlab.loadtest) ------------------------------------------------------


@app.command("serve")
@user_errors
def serve_command(
    run: str | None = typer.Argument(None, help="Run folder or name ('latest': the newest run; default: the "
                                     "bundled reader)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", help="TCP port (0: any free port; the URL is printed)."),
    runtime: str = typer.Option("torch", "--runtime", help="torch or onnx (onnxruntime)."),
    threshold: float | None = typer.Option(None, "--threshold", help="Mark predictions below this confidence "
                                           "'unsure' (default: the run's threshold)."),
    threads: int = typer.Option(1, "--threads", help="Torch threads for inference (0: all cores)."),
    window_ms: float = typer.Option(0.0, "--batch-window-ms", help="Wait this long for more requests to batch "
                                    "(0: batch only what is already waiting)."),
    workers: int | None = typer.Option(None, "--workers", help="Processes that decode and preprocess uploaded "
                                       "images (default: one per core; 0: threads of the server process)."),
    processes: int = typer.Option(1, "--processes", help="Server processes sharing the port, each with its own "
                                  "copy of the model (metrics add up all of them)."),
    body_timeout: float = typer.Option(20.0, "--body-timeout", help="Seconds a request body may take to arrive "
                                       "(then 408)."),
    access_log: str | None = typer.Option(None, "--access-log", help="Write one JSON line per request to this "
                                          "file ('-': standard error)."),
) -> None:
    """Serve the HTTP prediction API and the draw-a-digit page (http://HOST:PORT/, API docs at /docs).

    Without RUN the bundled reader serves. Operators: /healthz (alive), /readyz (ready to serve),
    /metrics (Prometheus)."""
    from digitlab.reader import describe, load_predictor
    from digitlab.serve import serve

    predictor = load_predictor(run, threshold=threshold, runtime=runtime)
    console.print(f"model: {describe(predictor)}", highlight=False)
    serve(predictor if processes == 1 else (run or predictor.path), host=host, port=port, runtime=runtime,
          threshold=threshold, threads=threads, window=window_ms / 1000.0, workers=workers, processes=processes,
          body_timeout=body_timeout, access_log=access_log)


@bench_app.command("serve")
@user_errors
def bench_serve_command(
    run: str = typer.Argument("latest", help="Run folder or name ('latest': the newest run)."),
    clients: int = typer.Option(32, "--clients", help="Concurrent keep-alive clients."),
    seconds: float = typer.Option(10.0, "--seconds", help="Measured seconds per payload (after --warmup)."),
    payload: str = typer.Option("both", "--payload", help="json (28x28 array), png (multipart PNG upload) or both."),
    runtime: str = typer.Option("torch", "--runtime", help="torch or onnx (onnxruntime) in the server."),
    warmup: float = typer.Option(1.0, "--warmup", help="Unmeasured seconds of load before each measurement."),
    processes: int = typer.Option(1, "--processes", help="Server processes ('digitlab serve --processes')."),
    workers: int | None = typer.Option(None, "--workers", help="Image worker processes of the server "
                                       "('digitlab serve --workers'; default: the server's)."),
    out: str | None = typer.Option(None, "--out", help="Also write the JSON result to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Load 'digitlab serve' on loopback with N clients for a fixed time.

    Prints requests/s, p50/p95/p99 latency and errors."""
    from digitlab.loadtest import bench_serve, print_serve
    from digitlab.utils import atomic_write_json

    server_args = ["--processes", str(processes)] + (["--workers", str(workers)] if workers is not None else [])
    result = bench_serve(run, clients=clients, seconds=seconds, payload=payload, runtime=runtime, warmup=warmup,
                         server_args=server_args)
    if out:
        atomic_write_json(out, result)
    show(result, as_json, print_serve)


# --- distributed training: help of train's data-parallel flags (docs/distributed.md) --------------------
# The train command's flags come from TrainConfig's fields; typer reads their help when it builds the
# command, so the two data-parallel fields get theirs here.

_TRAIN_HELP.update(
    nproc="Processes on this machine (torchrun --standalone, gloo on CPUs, NCCL on GPUs); --batch-size is per "
          "process. Ignored under torchrun.",
    lr_scaling="How --lr follows the global batch of several processes: linear (lr x processes), sqrt or none.",
)
for _info in app.registered_commands:
    if _info.name == "train":
        for _param in _info.callback.__signature__.parameters.values():
            if _param.name in ("nproc", "lr_scaling"):
                _param.default.help = _TRAIN_HELP[_param.name]
