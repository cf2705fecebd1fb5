"""A training run on disk: ``train(config) -> Run``.

Around the engine's ``fit`` this adds the run folder (config.json, history.csv after every epoch, a
checkpoint after every epoch and before the first), resuming from that checkpoint, the screen,
TensorBoard, Ctrl-C/SIGTERM handling, the torchrun launch of ``nproc`` processes, and the finish:
final metrics on every split, the saved model, figures and the report.
"""

from __future__ import annotations

import json
import math
import signal
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from digitlab import distributed as dd
from digitlab.config import TrainConfig, validate
from digitlab.errors import ConfigError, RunError, TrainingError
from digitlab.runs import Run, default_runs_dir, resolve_run, save_model, write_history
from digitlab.training.checkpoint import Checkpoint, load_checkpoint, restore, save_checkpoint
from digitlab.training.engine import (
    Callback,
    Hooks,
    TrainData,
    TrainState,
    build,
    fit,
    loss_acc,
    predict_proba,
    prepare_data,
)
from digitlab.training.optim import use_bf16
from digitlab.training.progress import ProgressMode, Reporter
from digitlab.utils import atomic_write_json, resolve_device, seed_everything, set_threads

FINAL_TRAIN_EVAL = 10_000  # training images scored for metrics.json (a fixed random sample)
# The training sample is scored as training computes its own figures, in the training precision;
# under bf16 a large batch is ~2x the images/s of 512 (docs/benchmarks.md). Validation and test stay
# in float32 at eval_batch_size: they must match what the Predictor serves and `digitlab evaluate`
# recomputes, and history.csv keeps its validation rows bit for bit.
FINAL_TRAIN_EVAL_BATCH = 2048


def train(
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    progress: ProgressMode = "auto",
    callbacks: list[Callback] | None = None,
    epochs: int | None = None,
) -> Run:
    """Train a model and return its Run. ``resume`` continues an interrupted run from its checkpoint.

    ``epochs`` given with ``resume`` extends the run to that many epochs in total. ``callbacks`` see
    the ``TrainState`` after every optimizer step; one returning True stops training there.

    Data-parallel (docs/distributed.md): under torchrun every process calls this and trains on its
    shard of each epoch; rank 0 writes the run folder and the other ranks return the same Run once it
    is written (None when they cannot see rank 0's folder, e.g. on another machine). Outside
    torchrun, ``config.nproc > 1`` (or resuming a run made by several processes) starts torchrun on
    this machine and returns the finished Run.
    """
    if not dd.launched():
        nproc = saved_world_size(resume) if resume is not None else (config.nproc if config else 1)
        if nproc > 1:
            return _launch(nproc, config, resume, progress, callbacks, epochs)
    with dd.session():
        return _train(config, resume=resume, progress=progress, callbacks=callbacks, epochs=epochs)


def saved_world_size(resume: str | Path) -> int:
    """How many processes trained the run being resumed (1 when its checkpoint does not say)."""
    try:
        meta = json.loads((resolve_run(resume) / "checkpoint" / "state.json").read_text(encoding="utf-8"))
        return int(meta.get("world_size", 1))
    except (OSError, ValueError):
        return 1  # open_run explains what is wrong with the folder


def _launch(nproc: int, config: TrainConfig | None, resume: str | Path | None, progress: ProgressMode,
            callbacks: list[Callback] | None, epochs: int | None) -> Run:
    """``digitlab train`` in ``nproc`` processes of this machine (torchrun --standalone), then its Run."""
    if callbacks:
        raise ConfigError("Callbacks cannot reach the processes that nproc starts: train with nproc=1, or start "
                          "torchrun yourself and pass the callbacks in every process.")
    flags = {"json": ["--json"], "quiet": ["--quiet"]}.get(progress, [])
    if resume is not None:
        run_dir = resolve_run(resume)
        dd.launch_local(nproc, ["train", "--resume", str(run_dir), *(["--epochs", str(epochs)] if epochs else []),
                                *flags])
        return Run.load(run_dir)
    validate(config)
    # The folder is named here, so that this process knows which one the workers fill.
    run_dir = new_run_dir(config)
    with tempfile.TemporaryDirectory(prefix="digitlab-nproc-") as tmp:
        path = Path(tmp) / "config.json"
        atomic_write_json(path, config.replace(name=run_dir.name).to_dict())
        dd.launch_local(nproc, ["train", "--config", str(path), *flags])
    return Run.load(run_dir)


def new_run_dir(config: TrainConfig) -> Path:
    """A fresh folder for the run: ``config.name``, else a timestamp and the model (suffixed if taken)."""
    root = Path(config.runs_dir) if config.runs_dir else default_runs_dir()
    name = config.name or f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{config.model}"
    path, i = root / name, 1
    while path.exists() and config.name is None:
        i += 1
        path = root / f"{name}-{i}"
    if path.exists() and (path / "config.json").exists():
        raise ConfigError(
            f"Run folder '{path}' already exists: choose another --name, or continue it with --resume {path}."
        )
    return path


def open_run(
    config: TrainConfig | None, resume: str | Path | None, epochs: int | None
) -> tuple[Path, TrainConfig, Checkpoint | None]:
    """The run folder, the effective config and, when resuming, the checkpoint (run by rank 0 only)."""
    resumed: Checkpoint | None = None
    if resume is not None:
        run_dir = resolve_run(resume)
        cfg_path = run_dir / "config.json"
        if not cfg_path.is_file():
            raise RunError(f"Run '{run_dir}' has no config.json: it cannot be resumed.")
        config = TrainConfig.from_dict(json.loads(cfg_path.read_text(encoding="utf-8")))
        if epochs is not None:
            config = config.replace(epochs=epochs)
        resumed = load_checkpoint(run_dir)
        saved_world = resumed[1].get("world_size", 1)
        if saved_world != dd.world_size():
            # Shards, steps per epoch and the scaled learning rate all depend on the number of processes.
            raise ConfigError(
                f"Run '{run_dir}' was trained by {saved_world} process(es) but is resumed by {dd.world_size()}: "
                f"resume it with the same number ('digitlab train --resume {run_dir}' alone restarts {saved_world} "
                f"on this machine; torchrun needs {saved_world} processes in all)."
            )
    else:
        config = config or TrainConfig()
        validate(config)
        run_dir = new_run_dir(config)
    validate(config)
    return run_dir, config, resumed


def _warm_imports() -> None:
    """Import what the run needs later (torch.optim's dynamo hooks, matplotlib for the report) in a thread.

    Much of it is file reads and extension loading that release the GIL, so it overlaps with reading
    the data. Python's import lock keeps it safe. (scikit-learn is not needed by a training run.)
    """

    def work() -> None:
        for name in ("torch._dynamo", "digitlab.plots"):
            try:
                __import__(name)
            except Exception:  # noqa: BLE001 - the main thread will import it again and report
                return

    threading.Thread(target=work, name="digitlab-warm-imports", daemon=True).start()


def _is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _train(
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    progress: ProgressMode = "auto",
    callbacks: list[Callback] | None = None,
    epochs: int | None = None,
) -> Run:
    _warm_imports()
    reporter = Reporter(progress if dd.is_main() else "quiet")
    run_dir, config, resumed = dd.from_main(lambda: open_run(config, resume, epochs))

    threads = set_threads(config.threads or dd.threads_per_process())
    device = dd.local_device(resolve_device(config.device))
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    gen = seed_everything(config.seed)
    data = prepare_data(config, device)
    model = build(config, data)
    state = TrainState.start(model, config, data, gen)
    if resumed is not None:
        restore(state, resumed)
        reporter.message(f"resuming {run_dir} at epoch {state.epoch + 1}/{config.epochs}")
    elif dd.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", config.to_dict())

    reporter.config(config, run_dir)
    ds, sp = data.dataset, data.splits
    reporter.message(
        f"{ds.name}: {len(data.x['train'])} train / {len(sp.val_x)} val / {len(sp.test_x)} test images; "
        f"model {config.model} on {device} with {threads} threads"
    )
    if dd.enabled():
        lr_scale = dd.lr_factor(config.lr_scaling)
        reporter.message(
            f"data-parallel: {dd.world_size()} processes ({dd.backend()}); batch {config.batch_size} per process, "
            f"{config.batch_size * dd.world_size()} in all; lr {config.lr:g} x {lr_scale:g} ({config.lr_scaling} "
            f"scaling) = {config.lr * lr_scale:g}; {state.steps_per_epoch} steps per epoch"
        )
    tb = _TensorBoard(run_dir / "tensorboard", data.classes) if config.tensorboard and dd.is_main() else None
    hooks = _run_hooks(run_dir, config, data, reporter, tb, callbacks)
    if resumed is None and dd.is_main():
        save_checkpoint(run_dir, state, dd.world_size())  # so that Ctrl-C in the first epoch leaves something

    # SIGTERM (e.g. a killed job) is handled like Ctrl-C: finish nothing, keep the last checkpoint.
    old_term = signal.getsignal(signal.SIGTERM)
    if old_term is not None and _is_main_thread():
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        fit(model, data, config, hooks, state)
    except KeyboardInterrupt:
        reporter.epoch_stop()
        reporter.message(
            f"interrupted: the last complete epoch is saved; continue with 'digitlab train --resume {run_dir}'"
        )
        raise
    except TrainingError as exc:
        reporter.epoch_stop()
        raise TrainingError(f"{str(exc).rstrip('.')}; the last good checkpoint (epoch {state.epoch}) is kept in "
                            f"{run_dir}.") from None
    finally:
        if _is_main_thread():
            signal.signal(signal.SIGTERM, old_term)
        if tb is not None:
            tb.close()
    if state.restored_best:
        reporter.message(f"restored the weights of epoch {state.best_epoch} (best {config.monitor})")

    if not dd.is_main():
        dd.barrier()  # rank 0 evaluates and writes the run folder; then every rank returns it
        return Run.load(run_dir) if (run_dir / "metrics.json").is_file() else None
    # The last epoch's validation pass scored these very weights (same function, batch size and precision),
    # unless early stopping restored others or ranks shared the pass: then finish scores them again.
    val_probs = state.val_probs if not state.restored_best and dd.world_size() == 1 else None
    run = finish(run_dir, config, data, model, state.history, state.train_seconds, reporter, val_probs)
    dd.barrier()
    return run


def _run_hooks(run_dir: Path, config: TrainConfig, data: TrainData, reporter: Reporter,
               tb: _TensorBoard | None, callbacks: list[Callback] | None) -> Hooks:
    """The screen, TensorBoard, history.csv and a checkpoint after every epoch; the user's callbacks."""

    def bar(state: TrainState) -> None:
        reporter.epoch_start(state.epoch + 1, config.epochs, state.steps_per_epoch)

    def advance(state: TrainState) -> None:
        reporter.advance(state.loss)

    def epoch_line(state: TrainState) -> None:
        reporter.epoch_end(state.history[-1], config.epochs)
        if state.stopped_early:
            reporter.message(
                f"early stopping: {config.monitor} has not improved for {config.patience} epochs "
                f"(best {state.best_score:.4f} at epoch {state.best_epoch})"
            )

    def tensorboard(state: TrainState) -> None:
        tb.epoch(state.history[-1], state.model, state.val_probs, data.y["val"])

    def save(state: TrainState) -> None:
        write_history(run_dir, state.history)
        save_checkpoint(run_dir, state, dd.world_size())

    on_main = [epoch_line, *([tensorboard] if tb is not None else []), save] if dd.is_main() else []
    return Hooks(epoch_start=[bar], step=[advance], epoch_end=on_main, stop_step=list(callbacks or []))


def finish(run_dir: Path, config: TrainConfig, data: TrainData, model: torch.nn.Module,
           history: list[dict[str, float]], train_seconds: float, reporter: Reporter,
           val_probs: torch.Tensor | None = None) -> Run:
    """Final metrics on every split, the saved model, figures and the report; the finished Run.
    ``val_probs``: the validation probabilities of ``model`` when the caller has them already."""
    from digitlab.evaluate import choose_threshold, evaluate_predictions  # scikit-learn: after training only

    t0 = time.perf_counter()
    ds, sp = data.dataset, data.splits
    metrics: dict[str, Any] = {"train_seconds": train_seconds, "epochs": len(history)}
    probs_by_split = {}
    for name in ("train", "val", "test"):
        x, y = data.x[name], data.y[name]
        if len(x) == 0:
            continue
        if name == "train" and len(x) > FINAL_TRAIN_EVAL:
            # The training-set figures come from a fixed sample: a pass over all 55,000-60,000 images
            # cost as much as the whole fast recipe's training. 'size' says how many were used.
            keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:FINAL_TRAIN_EVAL].to(x.device)
            x, y = x[keep], y[keep]
        if name == "train":
            probs = predict_proba(model, x, data.scale, max(config.eval_batch_size, FINAL_TRAIN_EVAL_BATCH),
                                  bf16=use_bf16(config.precision, data.device))
        elif name == "val" and val_probs is not None and len(val_probs) == len(y):
            probs = val_probs
        else:
            probs = predict_proba(model, x, data.scale, config.eval_batch_size)
        probs_by_split[name] = probs
        loss, acc = loss_acc(probs, y)
        metrics[name] = {"accuracy": acc, "loss": loss, "size": len(y)}
    test_probs = probs_by_split["test"].cpu().numpy()
    full = evaluate_predictions(sp.test_y, test_probs, ds.classes)
    metrics["test"].update({k: v for k, v in full.items() if k not in ("accuracy",)})
    threshold = None
    if "val" in probs_by_split:
        threshold = choose_threshold(sp.val_y, probs_by_split["val"].cpu().numpy())
    metrics["eval_seconds"] = time.perf_counter() - t0
    save_model(
        run_dir,
        model,
        {
            "dataset": ds.name,
            "classes": list(ds.classes),
            "max_value": ds.max_value,
            "scaler": data.scaler.to_dict(),
            "preprocess": {"target": preprocess_target(ds.name)},
            "threshold": threshold,
            "test_accuracy": metrics["test"]["accuracy"],
            "val_accuracy": metrics.get("val", {}).get("accuracy"),
        },
    )
    atomic_write_json(run_dir / "metrics.json", metrics)
    run = Run.load(run_dir)
    write_report = None
    if config.report:
        try:
            from digitlab.report import write_report  # matplotlib
        except ImportError:  # matplotlib missing from a trimmed install: the run is still complete
            pass
    # The result is printed before the figures are drawn (a second or two of matplotlib): the user reads
    # it while the report is written, and the function still returns only once the folder is complete.
    reporter.message(
        f"test accuracy {metrics['test']['accuracy']:.4f} after {len(history)} epochs "
        f"({train_seconds:.1f}s of training)\nrun folder: {run_dir}"
        + (f"\nreport: {run.report_path}" if write_report is not None else "")
    )
    if write_report is not None:
        write_report(run, test_probs=test_probs, splits=sp)
    reporter.event("done", run_dir=str(run_dir), test_accuracy=metrics["test"]["accuracy"])
    return run


def preprocess_target(dataset: str) -> str:
    """How ``preprocess`` turns photos into this dataset's inputs: ``fashion``, ``digits`` or ``mnist``."""
    if dataset == "fashion-mnist":
        return "fashion"
    if dataset == "digits":
        return "digits"
    return "mnist"


class _TensorBoard:
    """Scalars, weight histograms and the confusion matrix image per epoch (notebook 004)."""

    def __init__(self, path: Path, classes: list[str]) -> None:
        from torch.utils.tensorboard import SummaryWriter  # tensorboard: only with --tensorboard

        self.writer = SummaryWriter(str(path))
        self.classes = classes

    def epoch(
        self, row: dict[str, float], model: torch.nn.Module, val_probs: torch.Tensor, val_y: torch.Tensor
    ) -> None:
        e = int(row["epoch"])
        for key in ("train_loss", "val_loss", "train_acc", "val_acc", "lr"):
            if not math.isnan(row.get(key, float("nan"))):
                self.writer.add_scalar(key.replace("_", "/", 1), row[key], e)
        for name, p in model.named_parameters():
            self.writer.add_histogram(name, p.detach().cpu(), e)
        if len(val_y):
            k = len(self.classes)
            cm = torch.zeros(k, k)
            cm.index_put_((val_y.cpu(), val_probs.argmax(1).cpu()), torch.ones(len(val_y)), accumulate=True)
            img = (cm / cm.sum(1, keepdim=True).clamp_min(1)).unsqueeze(0)
            self.writer.add_image("confusion_matrix", img, e, dataformats="CHW")

    def close(self) -> None:
        self.writer.close()
