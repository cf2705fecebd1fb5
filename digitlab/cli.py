"""The `digitlab` command: a thin layer of options over the Python API.

Every command catches the errors a user can cause (``DigitlabError``) and prints them as one
sentence with exit code 2; programming errors still show their traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from digitlab.errors import DigitlabError

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
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def print_json(obj: Any) -> None:
    """Machine output: plain JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


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
    "model": "Model name (see 'digitlab models').",
    "model_options": "Model option KEY=VALUE, repeatable (e.g. -o hidden=300,100 -o activation=tanh).",
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
    "early_stopping": "Stop when the monitored value stops improving.",
    "monitor": "val_loss or val_acc.",
    "patience": "Epochs without improvement before stopping.",
    "restore_best": "With early stopping, end with the best epoch's weights.",
    "seed": "Random seed (same seed, same machine: same history).",
    "threads": "CPU threads (default: all cores).",
    "device": "auto, cpu, cuda, cuda:N or mps.",
    "deterministic": "Ask torch for deterministic kernels (slower on GPUs).",
    "compile": "Use torch.compile (breaks bit-exact repeatability; pays off on long runs only).",
    "name": "Run name (default: timestamp and model).",
    "runs_dir": "Folder of run folders (default: ./runs or $DIGITLAB_RUNS_DIR).",
    "tensorboard": "Write TensorBoard logs to RUN/tensorboard.",
    "report": "Write RUN/report.html at the end.",
}


def _parse_model_options(items: list[str]) -> dict:
    from digitlab.models import parse_options

    return parse_options(items)


def _train_command(**kwargs: object) -> None:
    import dataclasses

    from digitlab.config import TrainConfig, load_config_file, recipe_config
    from digitlab.errors import ConfigError
    from digitlab.train import train

    resume = kwargs.pop("resume")
    quiet = kwargs.pop("quiet")
    as_json = kwargs.pop("json")
    config_file = kwargs.pop("config")
    recipe = kwargs.pop("recipe")
    progress = "json" if as_json else ("quiet" if quiet else "rich")
    overrides = {k: v for k, v in kwargs.items() if v is not None}
    if "model_options" in overrides:
        overrides["model_options"] = _parse_model_options(overrides["model_options"]) or None
        if overrides["model_options"] is None:
            del overrides["model_options"]
    if "betas" in overrides:
        try:
            overrides["betas"] = tuple(float(b) for b in str(overrides["betas"]).split(","))
        except ValueError:
            raise ConfigError(f"--betas must be two numbers like 0.9,0.999, got '{overrides['betas']}'.") from None
    if resume is not None:
        unsupported = set(overrides) - {"epochs"}
        if unsupported:
            raise ConfigError(
                "With --resume only --epochs may change; the run keeps its saved config "
                f"(drop {', '.join('--' + k.replace('_', '-') for k in sorted(unsupported))})."
            )
        train(resume=resume, progress=progress, epochs=overrides.get("epochs"))
        return
    base: dict = {}
    if config_file is not None:
        base = load_config_file(config_file)
        recipe = recipe or base.pop("recipe", None)
    cfg = recipe_config(recipe or "fast")
    cfg = TrainConfig.from_dict({**dataclasses.asdict(cfg), **base, **overrides})
    train(cfg, progress=progress)


def _build_train_signature() -> None:
    import dataclasses
    import inspect
    from typing import Optional

    from digitlab.config import TrainConfig

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
                                "keras-convnet, notebook-000-logreg, ...); flags override it."), Optional[str]),  # noqa: UP045
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
    """Describe a dataset (size, shapes, dtypes, value range, class counts) and draw sample, class-count and
    mean-image PNGs."""
    from digitlab.explore import explore, print_summary

    summary = explore(dataset, out=out, data_dir=data_dir)
    if as_json:
        print_json(summary)
    else:
        print_summary(summary, console)


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
