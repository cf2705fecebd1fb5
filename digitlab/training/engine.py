"""The training loop: data in memory, ``fit(model, data, config, hooks)``. No run folder, no screen.

Read from top to bottom: ``prepare_data`` puts a dataset's splits on the device as uint8 tensors and
fits the scaler on the training images; ``build`` makes the model; ``fit`` runs the epochs. Each
epoch shuffles, then for every mini-batch gathers images by index, augments them in one batched call,
scales them, and takes one optimizer step; then it scores the validation set and updates early
stopping. Everything a run needs to continue lives in the ``TrainState`` that ``fit`` returns.

Callers add what they need through ``Hooks``: ``run.train`` a run folder, checkpoints and the screen,
``tune`` pruning, the studies and ``lr_find`` their own records, ``DigitClassifier`` its verbose lines.

Repeatability: the same config and seed on the same machine (same threads, same device) give the
same history, bit for bit, on the CPU. What breaks bit-exactness: a different number of threads,
GPUs with non-deterministic kernels (use ``deterministic=True``), and ``compile=True``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from digitlab import data as dl
from digitlab import distributed as dd
from digitlab.config import TrainConfig
from digitlab.errors import ConfigError, TrainingError
from digitlab.models import build_model, init_weights
from digitlab.training.augment import augment_batch
from digitlab.training.optim import lr_at, make_optimizer, use_bf16
from digitlab.utils import resolve_device, seed_everything, set_threads

# --- data ------------------------------------------------------------------------------------------


@dataclass
class TrainData:
    """The splits as tensors on one device: images (N, H, W), uint8 or float, and int64 labels.

    ``x`` and ``y`` have the keys ``train``, ``val`` and ``test`` (empty tensors where a split is
    empty). Images are scaled per batch (``scale``), so the data set stays uint8 in memory.
    ``dataset`` and ``splits`` are kept when the data came from a named dataset (the run's final
    evaluation and report use them).
    """

    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]
    scaler: dl.Scaler
    input_shape: tuple[int, int, int]
    classes: list[str]
    device: torch.device
    dataset: dl.Dataset | None = None
    splits: dl.Splits | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels_last(self) -> bool:
        # On CPUs convolutions run fastest on NHWC tensors; on GPUs torch picks its own layout.
        return self.device.type == "cpu"

    def scale(self, xb: torch.Tensor) -> torch.Tensor:
        """Images (N, H, W) -> the model's float input (N, 1, H, W)."""
        out = self.scaler.transform(xb).unsqueeze(1)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    @classmethod
    def from_arrays(cls, train: tuple[Any, Any], val: tuple[Any, Any] | None, scaler: dl.Scaler,
                    classes: list[str], device: torch.device) -> TrainData:
        """Data given as arrays (images (N, H, W) and integer labels), with an already fitted scaler."""
        empty = (np.zeros((0, *np.shape(train[0])[1:]), np.asarray(train[0]).dtype), np.zeros(0, np.int64))
        parts = {"train": train, "val": val if val is not None else empty, "test": empty}
        xs = {k: torch.as_tensor(v[0]).to(device) for k, v in parts.items()}
        ys = {k: torch.as_tensor(v[1], dtype=torch.long).to(device) for k, v in parts.items()}
        shape = (1, *xs["train"].shape[1:])
        return cls(xs, ys, scaler, shape, [str(c) for c in classes], device)


def prepare_data(config: TrainConfig, device: torch.device | None = None) -> TrainData:
    """The config's dataset, split, training subset and scaler (fitted on the training images only)."""
    device = device or resolve_device(config.device)
    ds = dl.load_dataset(config.dataset, data_dir=config.data_dir)
    sp = dl.split(ds, scheme=config.split, val_size=config.val_size, seed=42)
    train_x, train_y = sp.train_x, sp.train_y
    if config.train_subset is not None and config.train_subset < len(train_x):
        # A seeded shuffle keeps subsets class-balanced on average and independent of file order.
        keep = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(config.seed))
        keep = keep[: config.train_subset].numpy()
        train_x, train_y = train_x[keep], train_y[keep]
    _check_batch(config, len(train_x))
    scaler = dl.make_scaler(config.scaler, max_value=ds.max_value).fit(train_x)
    parts = {"train": (train_x, train_y), "val": (sp.val_x, sp.val_y), "test": (sp.test_x, sp.test_y)}
    xs = {k: torch.as_tensor(x).to(device) for k, (x, _) in parts.items()}
    ys = {k: torch.as_tensor(y, dtype=torch.long).to(device) for k, (_, y) in parts.items()}
    return TrainData(xs, ys, scaler, ds.input_shape, list(ds.classes), device, ds, sp)


def _check_batch(config: TrainConfig, n: int) -> None:
    if config.batch_size > n:
        raise ConfigError(f"Batch size {config.batch_size} is larger than the {n} training images: lower --batch-size.")


# The fields that decide prepare_data's result: configs equal in these can share one TrainData.
DATA_FIELDS = ("dataset", "data_dir", "split", "val_size", "train_subset", "scaler", "seed", "device")


def data_key(config: TrainConfig) -> tuple[Any, ...]:
    """What ``prepare_data`` depends on, to reuse one TrainData across trials or curves."""
    return tuple(getattr(config, f) for f in DATA_FIELDS)


def build(config: TrainConfig, data: TrainData) -> torch.nn.Module:
    """The config's model for the data's input shape and classes, initialized, on the data's device."""
    model = build_model(config.model, data.input_shape, data.num_classes, **config.model_options)
    init_weights(model, config.init, std=config.init_std)
    model.to(data.device)
    if data.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


# --- the state of a fit, and the hooks that watch it ----------------------------------------------


@dataclass
class TrainState:
    """Everything that decides the rest of a fit; what hooks and callbacks see."""

    model: torch.nn.Module
    config: TrainConfig
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # data order; each epoch's augmentation generator is derived from it
    steps_per_epoch: int
    device: torch.device
    scale: Callable[[torch.Tensor], torch.Tensor]  # images (N,H,W) -> model input (N,C,H,W)
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    train_seconds: float = 0.0  # time in training steps (not in evaluation)
    history: list[dict[str, float]] = field(default_factory=list)  # a row per epoch
    loss: float = math.nan  # the last mini-batch's loss
    best_score: float | None = None  # early stopping: the best monitored value, its epoch, its weights
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    stopped: bool = False  # a hook asked to stop
    restored_best: bool = False  # the model ended with the best epoch's weights
    val_probs: torch.Tensor | None = None  # the last epoch's validation probabilities

    @property
    def epoch_float(self) -> float:
        return self.step / self.steps_per_epoch

    @classmethod
    def start(cls, model: torch.nn.Module, config: TrainConfig, data: TrainData,
              generator: torch.Generator | None = None) -> TrainState:
        """The state before the first step: a fresh optimizer, and a generator seeded with ``config.seed``."""
        steps = math.ceil(dd.shard_size(len(data.x["train"])) / config.batch_size)
        gen = generator if generator is not None else torch.Generator().manual_seed(config.seed)
        return cls(model, config, make_optimizer(config, model.parameters()), gen, steps, data.device, data.scale)


Watcher = Callable[[TrainState], None]
Callback = Callable[[TrainState], bool | None]  # return True to stop training


@dataclass
class Hooks:
    """What ``fit`` calls back. Watchers look; stoppers return True to end training. The processes of
    a data-parallel run vote on stopping, so every process must be given the same stoppers."""

    epoch_start: list[Watcher] = field(default_factory=list)
    step: list[Watcher] = field(default_factory=list)  # after every optimizer step (progress bars)
    epoch_end: list[Watcher] = field(default_factory=list)  # after each epoch's row and early stopping
    stop_step: list[Callback] = field(default_factory=list)  # after every step: True ends training there
    stop_epoch: list[Callback] = field(default_factory=list)  # after each epoch: True ends training
    lr: Callable[[int], float] | None = None  # the rate of each step instead of the config's schedule


def setup(config: TrainConfig, data: TrainData | None = None) -> tuple[TrainState, TrainData]:
    """Threads, seeds, the data (unless given: see ``data_key``), the model and its fresh state: then
    ``fit(state.model, data, config, hooks, state)`` is a training run without a folder."""
    set_threads(config.threads)
    gen = seed_everything(config.seed)  # before build: the initial weights come from torch's global generator
    if data is None:
        data = prepare_data(config)
    else:
        _check_batch(config, len(data.x["train"]))
    model = build(config, data)
    return TrainState.start(model, config, data, gen), data


# --- evaluation -------------------------------------------------------------------------------------


@torch.inference_mode()
def predict_proba(
    model: torch.nn.Module, images: torch.Tensor, scale: Callable[[torch.Tensor], torch.Tensor], batch_size: int,
    bf16: bool = False,
) -> torch.Tensor:
    """Class probabilities for images (N, H, W) already on the model's device; ``bf16`` runs the model
    under bf16 autocast, as training does (probabilities stay float32)."""
    was_training = model.training
    model.eval()
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = [
            torch.softmax(model(scale(images[i : i + batch_size])).float(), 1)
            for i in range(0, len(images), batch_size)
        ]
    model.train(was_training)
    if not out:
        return torch.empty(0)
    return torch.cat(out)


def loss_acc(probs: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean log loss and accuracy of probabilities against labels (NaN for an empty split)."""
    if len(y) == 0:
        return float("nan"), float("nan")
    loss = F.nll_loss(torch.log(probs.clamp_min(1e-12)), y).item()
    acc = (probs.argmax(1) == y).sum().item() / len(y)  # exact, not a float32 mean
    return loss, acc


# --- the loop ---------------------------------------------------------------------------------------


def fit(model: torch.nn.Module, data: TrainData, config: TrainConfig, hooks: Hooks | None = None,
        state: TrainState | None = None) -> TrainState:
    """Train ``model`` on ``data`` for ``config.epochs`` epochs (or until early stopping or a hook stops it).

    ``state`` continues an earlier fit (a restored checkpoint); by default training starts afresh.
    Raises ``TrainingError`` when the loss becomes NaN or infinite.
    """
    hooks = hooks or Hooks()
    state = state or TrainState.start(model, config, data)
    device, gen, optimizer = data.device, state.generator, state.optimizer
    train_x, train_y = data.x["train"], data.y["train"]
    n, batch, steps = len(train_x), config.batch_size, state.steps_per_epoch
    step_fn = dd.wrap_model(model, device)  # the model itself for one process
    if config.compile:
        step_fn = torch.compile(step_fn)
    lr_scale = dd.lr_factor(config.lr_scaling)
    bf16 = use_bf16(config.precision, device)
    reg = getattr(model, "regularization_loss", None)  # e.g. cnn-small's L2 on kernels

    for epoch in range(state.epoch, config.epochs):
        if state.stopped_early or state.stopped:
            break
        for watch in hooks.epoch_start:
            watch(state)
        model.train()
        t_epoch = time.perf_counter()
        perm = dd.shard(torch.randperm(n, generator=gen)).to(device)  # same seed: ranks agree on it
        aug_gen = dd.epoch_generator(gen, config.seed, epoch)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for b in range(steps):
            t0 = time.perf_counter()
            idx = perm[b * batch : (b + 1) * batch]
            xb, yb = train_x[idx], train_y[idx]
            if config.augment:
                xb = augment_batch(xb.unsqueeze(1).float(), config, aug_gen).squeeze(1)
            lr = (hooks.lr(state.step) if hooks.lr else lr_at(config, state.step, steps)) * lr_scale
            for g in optimizer.param_groups:
                g["lr"] = lr
            # Autocast runs convolutions and matmuls in bf16; weights, optimizer and loss stay fp32.
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = step_fn(data.scale(xb)).float()
            loss = F.cross_entropy(logits, yb, label_smoothing=config.label_smoothing)
            total = loss + reg() if reg is not None else loss
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            state.step += 1
            state.loss = loss.item()
            if not math.isfinite(state.loss):
                raise TrainingError(f"The loss became {state.loss} at epoch {epoch + 1}, step {b + 1}: lower the "
                                    f"learning rate (now {lr:.3g}).")
            loss_sum += loss.detach() * len(yb)
            correct += (logits.detach().argmax(1) == yb).sum()
            state.train_seconds += time.perf_counter() - t0
            for watch in hooks.step:
                watch(state)
            if hooks.stop_step and dd.any_rank(any(stop(state) for stop in hooks.stop_step)):
                state.stopped = True
                break

        seen = min(dd.shard_size(n), (b + 1) * batch)
        loss_total, correct_total, seen = dd.sum_all(loss_sum.item(), correct.item(), seen)
        row: dict[str, float] = {"epoch": epoch + 1, "train_loss": loss_total / seen,
                                 "train_acc": correct_total / seen, "lr": lr}
        state.val_probs = dd.map_rows(lambda x: predict_proba(model, x, data.scale, config.eval_batch_size),
                                      data.x["val"])
        row["val_loss"], row["val_acc"] = loss_acc(state.val_probs, data.y["val"])
        row["seconds"] = time.perf_counter() - t_epoch
        row["train_seconds"] = state.train_seconds
        state.history.append(row)
        state.epoch = epoch + 1
        _early_stopping(state, row, config, has_val=len(data.x["val"]) > 0)
        for watch in hooks.epoch_end:
            watch(state)
        if dd.any_rank(any([stop(state) for stop in hooks.stop_epoch])):
            state.stopped = True

    if config.early_stopping and config.restore_best and state.best_state is not None:
        model.load_state_dict(state.best_state)
        state.restored_best = True
    return state


def _early_stopping(state: TrainState, row: dict[str, float], config: TrainConfig, has_val: bool) -> None:
    """Track the best monitored value (and, with early stopping, its weights); stop after ``patience`` bad epochs."""
    if not (config.early_stopping or config.restore_best):
        return
    score = row[config.monitor] if has_val else float("nan")
    if not math.isnan(score):
        better = state.best_score is None or (
            score < state.best_score if config.monitor == "val_loss" else score > state.best_score
        )
        if better:
            state.best_score, state.best_epoch, state.bad_epochs = score, state.epoch, 0
            if config.early_stopping:
                state.best_state = {k: v.detach().cpu().clone() for k, v in state.model.state_dict().items()}
        else:
            state.bad_epochs += 1
    if config.early_stopping and state.bad_epochs >= config.patience:
        state.stopped_early = True
