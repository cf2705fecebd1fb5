"""The training engine: one typed config, data in memory, batches by indexing, resumable runs.

``train(TrainConfig(...)) -> Run``. The dataset lives on the device as uint8 tensors; each batch is
gathered by index, augmented in one batched call and scaled on the fly. Schedules are plain
functions of the step, so a checkpoint needs only the step count to resume the schedule exactly.

Repeatability: the same config and seed on the same machine (same threads, same device) give the
same history, bit for bit, on the CPU. What breaks bit-exactness: a different number of threads,
GPUs with non-deterministic kernels (use ``deterministic=True``), and ``compile=True``.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from digitlab import distributed as dd
from digitlab.config import (  # noqa: F401 - re-exported
    INITS,
    MONITORS,
    OPTIMIZERS,
    RECIPES,
    SCHEDULES,
    TrainConfig,
    load_config_file,
    recipe_config,
    validate,
)
from digitlab.errors import ConfigError, RunError, TrainingError
from digitlab.runs import Run, default_runs_dir, resolve_run, save_model, write_history
from digitlab.utils import atomic_write, atomic_write_json, resolve_device, seed_everything, set_threads

# --- optimisation -----------------------------------------------------------------------------


def make_optimizer(config: TrainConfig, params: Any) -> torch.optim.Optimizer:
    o, lr, wd = config.optimizer, config.lr, config.weight_decay
    if o == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if o == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=wd)
    if o == "nesterov":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, nesterov=True, weight_decay=wd)
    if o == "adam":
        return torch.optim.Adam(params, lr=lr, betas=config.betas, weight_decay=wd)
    if o == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=config.betas, weight_decay=wd)
    if o == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, rho=config.rho, weight_decay=wd)
    if o == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=config.rho, weight_decay=wd)
    raise ConfigError(f"Unknown optimizer '{o}'.")


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based): warm-up, then the schedule."""
    total = config.epochs * steps_per_epoch
    warm = int(round(config.warmup_epochs * steps_per_epoch))
    base = config.lr
    if config.schedule == "one-cycle":
        # As torch's OneCycleLR: from lr/25 up to lr over the warm-up (default 25% of training),
        # then cosine down to lr/1e4.
        up = warm if warm > 0 else max(1, int(0.25 * total))
        if step < up:
            return base / 25 + (base - base / 25) * step / up
        t = min(1.0, (step - up) / max(1, total - up))
        low = base / 1e4
        return low + (base - low) * 0.5 * (1 + math.cos(math.pi * t))
    if step < warm:
        return base * (step + 1) / warm
    if config.schedule == "constant":
        return base
    if config.schedule == "step":
        return base * config.gamma ** ((step // steps_per_epoch) // max(1, config.step_size))
    if config.schedule == "cosine":
        t = min(1.0, (step - warm) / max(1, total - warm))
        return base * 0.5 * (1 + math.cos(math.pi * t))
    raise ConfigError(f"Unknown schedule '{config.schedule}'.")


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to train in bf16 autocast: always for 'bf16', never for 'fp32'; 'auto' only where it is fast
    (a CPU with native bf16 such as AVX512-BF16 or AMX, or a CUDA GPU that supports it)."""
    if precision == "bf16":
        return True
    if precision != "auto":
        return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        native = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
            cpu, "_is_amx_tile_supported", lambda: False
        )()
        return bool(native and torch.backends.mkldnn.is_available())
    return False


# --- batched augmentation ---------------------------------------------------------------------


def augment_batch(x: torch.Tensor, config: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Random affine (shift, rotation, scale, shear), elastic and stroke-width changes, in one call.

    ``x`` is (N, 1, H, W) in raw pixel units with a zero background, so padding with zeros is right.
    Random numbers come from ``gen`` (on the CPU) so runs repeat exactly.
    """
    n, _, h, w = x.shape
    dev = x.device

    def uniform(k: float, size: tuple[int, ...] = (n,)) -> torch.Tensor:
        return ((torch.rand(size, generator=gen) * 2 - 1) * k).to(dev)

    angle = uniform(math.radians(config.aug_rotate))
    scale = 1 + uniform(config.aug_scale)
    shear = uniform(config.aug_shear)
    # affine_grid works in [-1, 1] coordinates: a shift of s pixels is 2 s / size.
    tx, ty = uniform(2 * config.aug_shift / w), uniform(2 * config.aug_shift / h)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin + shear * cos, tx], 1), torch.stack([sin, cos + shear * sin, ty], 1)], 1
    )
    if config.aug_flip > 0:
        # A mirror image is the same garment (Fashion-MNIST), never the same digit: off by default.
        sign = torch.where(torch.rand(n, generator=gen) < config.aug_flip, -1.0, 1.0).to(dev)
        theta = torch.cat([theta[:, :, :1] * sign.view(n, 1, 1), theta[:, :, 1:]], 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if config.aug_elastic > 0:
        coarse = (torch.randn((n, 2, 4, 4), generator=gen) * (2 * config.aug_elastic / w)).to(dev)
        grid = grid + F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if config.aug_skip > 0:
        # A pen skip: a thin straight gap across the digit, as ballpoints and scans leave them; fields
        # of handwritten digits have broken strokes that the reader must still recognise.
        hit = (torch.rand(n, generator=gen) < config.aug_skip).to(dev).view(n, 1, 1, 1)
        angle = (torch.rand(n, generator=gen) * math.pi).to(dev).view(n, 1, 1)
        offset = uniform(0.3 * min(h, w)).view(n, 1, 1)
        ys = torch.arange(h, device=dev, dtype=out.dtype).view(1, h, 1) - (h - 1) / 2
        xs = torch.arange(w, device=dev, dtype=out.dtype).view(1, 1, w) - (w - 1) / 2
        dist = (xs * torch.cos(angle) + ys * torch.sin(angle) - offset).abs()
        keep = (dist / 1.2).clamp(max=1.0).unsqueeze(1)  # ~2.4 px wide, soft edges
        out = torch.where(hit, out * keep, out)
    if config.aug_morph > 0:
        # Thicker or thinner strokes: people's pens differ from MNIST's.
        r = torch.rand(n, generator=gen).to(dev)
        thick = (r < config.aug_morph / 2).view(n, 1, 1, 1)
        thin = ((r >= config.aug_morph / 2) & (r < config.aug_morph)).view(n, 1, 1, 1)
        dil, ero = _dilate3(out), _erode2(out)
        out = torch.where(thick, 0.5 * (out + dil), torch.where(thin, 0.5 * (out + ero), out))
    from digitlab import realism

    if realism.enabled(config):
        out = realism.randomise(out, config, gen)
    return out


# Grey-level dilation and erosion as maxima of shifted views: the same numbers as
# F.max_pool2d(x, 3, 1, 1) and -F.max_pool2d(-x, 2, 1, 1)[..., :h, :w], ~15x faster on one channel.
def _dilate3(x: torch.Tensor) -> torch.Tensor:
    p = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
    rows = torch.maximum(torch.maximum(p[..., :, :-2], p[..., :, 1:-1]), p[..., :, 2:])
    return torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def _erode2(x: torch.Tensor) -> torch.Tensor:
    p = F.pad(x, (1, 0, 1, 0), value=float("inf"))
    rows = torch.minimum(p[..., :, :-1], p[..., :, 1:])
    return torch.minimum(rows[..., :-1, :], rows[..., 1:, :])


# --- state of a run ---------------------------------------------------------------------------


@dataclass
class TrainState:
    """What callbacks see: the model in training, counters, and training time so far."""

    model: torch.nn.Module
    config: TrainConfig
    epoch: int  # epochs completed
    step: int  # optimizer steps completed
    steps_per_epoch: int
    train_seconds: float
    history: list[dict[str, float]]
    device: torch.device
    scale: Callable[[torch.Tensor], torch.Tensor]  # uint8 (N,H,W) -> model input (N,C,H,W)

    @property
    def epoch_float(self) -> float:
        return self.step / self.steps_per_epoch


Callback = Callable[[TrainState], bool | None]  # return True to stop training


# How training reports progress; "auto" picks "notebook" inside Jupyter and "rich" elsewhere.
ProgressMode = Literal["auto", "rich", "notebook", "json", "quiet"]


class Reporter:
    """Progress output: a live bar within each epoch and a line per epoch; or JSON events; or none.

    Modes: ``rich`` (terminal), ``notebook`` (Jupyter: one HTML block per run, updated in place with
    a progress bar and a table of epochs), ``json`` (event lines), ``quiet``. ``auto`` picks
    ``notebook`` inside a Jupyter kernel and ``rich`` elsewhere; ``rich`` in a kernel also becomes
    ``notebook``, because rich's live bars need ipywidgets there and otherwise show nothing.
    """

    NOTEBOOK_REFRESH = 0.5  # seconds between in-place updates: every step would flood the front end

    def __init__(self, mode: ProgressMode = "rich") -> None:
        if mode in ("auto", "rich"):
            mode = "notebook" if self.in_notebook() else "rich"
        self.mode = mode
        self._progress = None
        self._task = None
        if mode == "rich":
            from rich.console import Console

            self.console = Console(stderr=False)
        # notebook mode: what the HTML block shows, and the handle that updates it
        self._handle: Any = None
        self._lines: list[str] = []
        self._rows: list[dict[str, float]] = []
        self._bar: dict[str, Any] | None = None
        self._shown_at = 0.0

    @staticmethod
    def in_notebook() -> bool:
        """True inside a Jupyter kernel (IPython over ZMQ), not in a terminal IPython or plain Python."""
        if "IPython" not in sys.modules:  # never import IPython just to ask
            return False
        from IPython import get_ipython

        shell = get_ipython()
        return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"

    def event(self, kind: str, **data: Any) -> None:
        if self.mode == "json":
            sys.stdout.write(json.dumps({"event": kind, **data}, default=str) + "\n")
            sys.stdout.flush()

    def config(self, config: TrainConfig, run_dir: Path) -> None:
        self.event("config", config=config.to_dict(), run_dir=str(run_dir))
        defaults = TrainConfig()
        if self.mode == "notebook":
            # One line: the recipe and what differs from it (the full table would fill the screen).
            recipe = recipe_config(config.recipe) if config.recipe in RECIPES else defaults
            changed = [f"{f.name}={getattr(config, f.name)}" for f in fields(config)
                       if getattr(config, f.name) != getattr(recipe, f.name) and f.name not in ("runs_dir", "recipe")]
            self._lines.append(f"digitlab train -> {run_dir}: recipe {config.recipe}"
                               + (f" with {', '.join(changed)}" if changed else ""))
            self._show(force=True)
        if self.mode != "rich":
            return
        from rich.table import Table

        table = Table(title=f"digitlab train -> {run_dir}", show_header=False, box=None, pad_edge=False)
        for f in fields(config):
            value = getattr(config, f.name)
            style = "bold" if value != getattr(defaults, f.name) else "dim"
            table.add_row(f"[{style}]{f.name}[/]", f"[{style}]{value}[/]")
        self.console.print(table)

    def message(self, text: str) -> None:
        self.event("message", text=text)
        if self.mode == "rich":
            self.console.print(text)
        elif self.mode == "notebook":
            self._lines.extend(text.splitlines())
            self._show(force=True)

    @contextmanager
    def epoch_bar(self, epoch: int, epochs: int, steps: int) -> Iterator[Callable[[float], None]]:
        if self.mode == "notebook":
            self._bar = {"epoch": epoch, "epochs": epochs, "steps": steps, "done": 0, "loss": float("nan"),
                         "start": time.perf_counter()}

            def step(loss: float) -> None:
                assert self._bar is not None
                self._bar["done"] += 1
                self._bar["loss"] = loss
                self._show(force=self._bar["done"] == steps)

            try:
                yield step
            finally:
                self._bar = None  # transient, as the rich bar: the epoch's row replaces it
            return
        if self.mode != "rich":
            yield lambda loss: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(),
            console=self.console, transient=True,
        ) as progress:
            task = progress.add_task("train", total=steps, loss=float("nan"))

            def advance(loss: float) -> None:
                progress.update(task, advance=1, loss=loss)

            yield advance

    def epoch_end(self, row: dict[str, float], epochs: int) -> None:
        self.event("epoch", **row)
        if self.mode == "notebook":
            self._rows.append(dict(row))
            self._show(force=True)
            return
        if self.mode != "rich":
            return
        val = ""
        if not math.isnan(row.get("val_loss", float("nan"))):
            val = f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}"
        self.console.print(
            f"epoch {int(row['epoch'])}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}"
            f"{val}  lr {row['lr']:.3g}  {row['seconds']:.1f}s"
        )

    # --- notebook mode: one display block, replaced in place ----------------------------------------

    _COLUMNS = (("epoch", "epoch", "{:.0f}"), ("train_loss", "train loss", "{:.4f}"),
                ("train_acc", "train acc", "{:.2%}"), ("val_loss", "val loss", "{:.4f}"),
                ("val_acc", "val acc", "{:.2%}"), ("lr", "lr", "{:.3g}"), ("seconds", "time", "{:.1f}s"))

    def _bar_text(self) -> tuple[str, float] | None:
        """The current epoch's bar as text and its done fraction (None between epochs)."""
        b = self._bar
        if b is None:
            return None
        elapsed = time.perf_counter() - b["start"]
        left = elapsed / b["done"] * (b["steps"] - b["done"]) if b["done"] else float("nan")
        eta = f"{int(left // 60)}:{int(left % 60):02d} left" if math.isfinite(left) else ""
        loss = f"loss {b['loss']:.4f}" if math.isfinite(b["loss"]) else ""
        text = f"epoch {b['epoch']}/{b['epochs']}  {b['done']}/{b['steps']}  {loss}  {eta}".rstrip()
        return text, b["done"] / max(1, b["steps"])

    def _render(self) -> dict[str, str]:
        import html

        plain = list(self._lines)
        parts = [f"<div>{html.escape(line)}</div>" for line in self._lines]
        if self._rows:
            cols = [c for c in self._COLUMNS if any(math.isfinite(r.get(c[0], float("nan"))) for r in self._rows)]

            def cell(row: dict[str, float], key: str, fmt: str) -> str:
                v = row.get(key, float("nan"))
                return fmt.format(v) if math.isfinite(v) else ""

            head = "".join(f"<th>{name}</th>" for _, name, _ in cols)
            body = "".join(
                "<tr>" + "".join(f"<td>{cell(r, k, f)}</td>" for k, _, f in cols) + "</tr>" for r in self._rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            plain.append("".join(f"{name:>11}" for _, name, _ in cols))
            plain += ["".join(f"{cell(r, k, f):>11}" for k, _, f in cols) for r in self._rows]
        bar = self._bar_text()  # below the finished epochs, as in a terminal
        if bar is not None:
            text, frac = bar
            width = 30
            plain.append(f"[{'#' * round(frac * width):<{width}}] {text}")
            parts.append(
                f'<div><progress value="{frac:.4f}" max="1" style="width:18em;vertical-align:middle"></progress>'
                f" {html.escape(text)}</div>"
            )
        style = "font-family:var(--jp-code-font-family,monospace);font-size:90%"
        return {"text/html": f'<div style="{style}">{"".join(parts)}</div>', "text/plain": "\n".join(plain)}

    def _show(self, force: bool = False) -> None:
        now = time.perf_counter()
        if (not force and now - self._shown_at < self.NOTEBOOK_REFRESH) or not self.in_notebook():
            return  # outside a kernel IPython's display would print the raw dict
        self._shown_at = now
        from IPython.display import display

        data = self._render()
        if self._handle is None:
            self._handle = display(data, raw=True, display_id=True)
        else:
            self._handle.update(data, raw=True)


# --- checkpoints (safetensors + JSON: no pickle) ----------------------------------------------


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim/{pid}/{k}"] = v.detach().cpu().contiguous().clone()
            else:
                scalars[f"{pid}/{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim/"):
            _, pid, k = key.split("/", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split("/", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Write the resumable state: tensors to safetensors, the rest to JSON, then mark it complete.

    Both files are written atomically and the JSON names the epoch, so a crash between the two writes
    is detected (the epochs differ) instead of resuming from a mismatched pair.
    """
    ckpt = run_dir / "checkpoint"
    model, opt = state["model"], state["optimizer"]
    tensors = {f"model/{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    tensors.update(opt_tensors)
    tensors["rng/torch"] = torch.get_rng_state()
    tensors["rng/gen"] = state["gen"].get_state()
    if state.get("best_state") is not None:
        tensors.update({f"best/{k}": v for k, v in state["best_state"].items()})
    tensors["epoch_tag"] = torch.tensor([state["epoch"]])
    atomic_write(ckpt / "state.safetensors", lambda p: save_file(tensors, str(p)))
    atomic_write_json(
        ckpt / "state.json",
        {
            "epoch": state["epoch"], "step": state["step"], "train_seconds": state["train_seconds"],
            "history": state["history"], "optimizer": opt_meta, "best_score": state.get("best_score"),
            "best_epoch": state.get("best_epoch"), "bad_epochs": state.get("bad_epochs", 0),
            "stopped_early": state.get("stopped_early", False), "world_size": state.get("world_size", 1),
        },
    )


def load_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    ckpt = run_dir / "checkpoint"
    try:
        tensors = load_file(str(ckpt / "state.safetensors"))
        meta = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001 - missing, truncated or garbled files alike
        raise RunError(f"Run '{run_dir}' has no usable checkpoint ({exc.__class__.__name__}): start it anew.") from exc
    if int(tensors["epoch_tag"][0]) != meta["epoch"]:
        raise RunError(f"Run '{run_dir}' has a torn checkpoint (files of different epochs): start it anew.")
    return tensors, meta


# --- the loop ----------------------------------------------------------------------------------


def _new_run_dir(config: TrainConfig) -> Path:
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


@torch.inference_mode()
def predict_proba(
    model: torch.nn.Module, images: torch.Tensor, scale: Callable[[torch.Tensor], torch.Tensor], batch_size: int
) -> torch.Tensor:
    """Class probabilities for uint8 images (N, H, W) already on the model's device."""
    was_training = model.training
    model.eval()
    out = [
        torch.softmax(model(scale(images[i : i + batch_size])).float(), 1)
        for i in range(0, len(images), batch_size)
    ]
    model.train(was_training)
    if not out:
        return torch.empty(0)
    return torch.cat(out)


def _loss_acc(probs: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    if len(y) == 0:
        return float("nan"), float("nan")
    loss = F.nll_loss(torch.log(probs.clamp_min(1e-12)), y).item()
    acc = (probs.argmax(1) == y).sum().item() / len(y)  # exact, not a float32 mean
    return loss, acc


def train(
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    progress: ProgressMode = "auto",
    callbacks: list[Callback] | None = None,
    epochs: int | None = None,
) -> Run:
    """Train a model and return its Run. ``resume`` continues an interrupted run from its checkpoint.

    ``epochs`` given with ``resume`` extends the run to that many epochs in total.

    Data-parallel (docs/distributed.md): under torchrun every process calls this and trains on its
    shard of each epoch; rank 0 writes the run folder and the other ranks return the same Run once it
    is written (None when they cannot see rank 0's folder, e.g. on another machine). Outside
    torchrun, ``config.nproc > 1`` (or resuming a run made by several processes) starts torchrun on
    this machine and returns the finished Run.
    """
    if not dd.launched():
        nproc = _saved_world_size(resume) if resume is not None else (config.nproc if config else 1)
        if nproc > 1:
            return _launch(nproc, config, resume, progress, callbacks, epochs)
    with dd.session():
        return _train(config, resume=resume, progress=progress, callbacks=callbacks, epochs=epochs)


def _saved_world_size(resume: str | Path) -> int:
    try:
        meta = json.loads((resolve_run(resume) / "checkpoint" / "state.json").read_text(encoding="utf-8"))
        return int(meta.get("world_size", 1))
    except (OSError, ValueError):
        return 1  # _open_run explains what is wrong with the folder


def _launch(nproc, config, resume, progress, callbacks, epochs) -> Run:  # noqa: ANN001
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
    run_dir = _new_run_dir(config)
    with tempfile.TemporaryDirectory(prefix="digitlab-nproc-") as tmp:
        path = Path(tmp) / "config.json"
        atomic_write_json(path, config.replace(name=run_dir.name).to_dict())
        dd.launch_local(nproc, ["train", "--config", str(path), *flags])
    return Run.load(run_dir)


def _open_run(
    config: TrainConfig | None, resume: str | Path | None, epochs: int | None
) -> tuple[Path, TrainConfig, tuple[dict[str, torch.Tensor], dict[str, Any]] | None]:
    """The run folder, the effective config and, when resuming, the checkpoint (run by rank 0 only)."""
    resumed: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None
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
        run_dir = _new_run_dir(config)
    validate(config)
    return run_dir, config, resumed


def _warm_imports() -> None:
    """Import what the run needs later (torch.optim's dynamo hooks, matplotlib for the report) in a thread.

    Much of it is file reads and extension loading that release the GIL, so it overlaps with reading
    the data. Python's import lock keeps it safe. (scikit-learn is not needed by a training run.)
    """
    import threading

    def work() -> None:
        for name in ("torch._dynamo", "digitlab.plots"):
            try:
                __import__(name)
            except Exception:  # noqa: BLE001 - the main thread will import it again and report
                return

    threading.Thread(target=work, name="digitlab-warm-imports", daemon=True).start()


def _train(
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    progress: ProgressMode = "auto",
    callbacks: list[Callback] | None = None,
    epochs: int | None = None,
) -> Run:
    from digitlab import data as dl
    from digitlab.models import build_model, init_weights

    _warm_imports()
    reporter = Reporter(progress if dd.is_main() else "quiet")
    run_dir, config, resumed = dd.from_main(lambda: _open_run(config, resume, epochs))

    threads = set_threads(config.threads or dd.threads_per_process())
    device = dd.local_device(resolve_device(config.device))
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    gen = seed_everything(config.seed)

    ds = dl.load_dataset(config.dataset, data_dir=config.data_dir)
    sp = dl.split(ds, scheme=config.split, val_size=config.val_size, seed=42)
    train_x, train_y = sp.train_x, sp.train_y
    if config.train_subset is not None and config.train_subset < len(train_x):
        # A seeded shuffle keeps subsets class-balanced on average and independent of file order.
        keep = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(config.seed))
        keep = keep[: config.train_subset].numpy()
        train_x, train_y = train_x[keep], train_y[keep]
    if config.batch_size > len(train_x):
        raise ConfigError(
            f"Batch size {config.batch_size} is larger than the {len(train_x)} training images: lower --batch-size."
        )
    scaler = dl.make_scaler(config.scaler, max_value=ds.max_value).fit(train_x)

    xs = {
        "train": torch.as_tensor(train_x).to(device),
        "val": torch.as_tensor(sp.val_x).to(device),
        "test": torch.as_tensor(sp.test_x).to(device),
    }
    ys = {
        "train": torch.as_tensor(train_y, dtype=torch.long).to(device),
        "val": torch.as_tensor(sp.val_y, dtype=torch.long).to(device),
        "test": torch.as_tensor(sp.test_y, dtype=torch.long).to(device),
    }
    channels_last = device.type == "cpu"

    def scale(xb: torch.Tensor) -> torch.Tensor:
        out = scaler.transform(xb).unsqueeze(1)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out

    model = build_model(config.model, ds.input_shape, ds.num_classes, **config.model_options)
    init_weights(model, config.init, std=config.init_std)
    model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, model.parameters())
    ddp_model = dd.wrap_model(model, device)  # the model itself for one process
    step_fn = torch.compile(ddp_model) if config.compile else ddp_model
    lr_scale = dd.lr_factor(config.lr_scaling)
    bf16 = use_bf16(config.precision, device)

    n = len(xs["train"])
    steps_per_epoch = math.ceil(dd.shard_size(n) / config.batch_size)
    history: list[dict[str, float]] = []
    start_epoch, step, train_seconds = 0, 0, 0.0
    best_score: float | None = None
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs = 0
    stopped_early = False

    if resumed is not None:
        tensors, meta = resumed
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
        optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
        torch.set_rng_state(tensors["rng/torch"])
        gen.set_state(tensors["rng/gen"])
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best/")}
        best_state = best or None
        start_epoch, step, train_seconds = meta["epoch"], meta["step"], meta["train_seconds"]
        history, best_score, best_epoch = meta["history"], meta["best_score"], meta["best_epoch"]
        bad_epochs, stopped_early = meta["bad_epochs"], meta["stopped_early"]
        reporter.message(f"resuming {run_dir} at epoch {start_epoch + 1}/{config.epochs}")
    elif dd.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", config.to_dict())

    reporter.config(config, run_dir)
    reporter.message(
        f"{ds.name}: {len(train_x)} train / {len(sp.val_x)} val / {len(sp.test_x)} test images; "
        f"model {config.model} on {device} with {threads} threads"
    )
    if dd.enabled():
        reporter.message(
            f"data-parallel: {dd.world_size()} processes ({dd.backend()}); batch {config.batch_size} per process, "
            f"{config.batch_size * dd.world_size()} in all; lr {config.lr:g} x {lr_scale:g} ({config.lr_scaling} "
            f"scaling) = {config.lr * lr_scale:g}; {steps_per_epoch} steps per epoch"
        )
    tb = _TensorBoard(run_dir / "tensorboard", ds.classes) if config.tensorboard and dd.is_main() else None

    def checkpoint(epoch: int) -> None:
        if not dd.is_main():
            return
        save_checkpoint(
            run_dir,
            dict(model=model, optimizer=optimizer, gen=gen, epoch=epoch, step=step, train_seconds=train_seconds,
                 history=history, best_state=best_state, best_score=best_score, best_epoch=best_epoch,
                 bad_epochs=bad_epochs, stopped_early=stopped_early, world_size=dd.world_size()),
        )

    if resumed is None:
        checkpoint(0)  # so that Ctrl-C in the first epoch still leaves something to resume

    state = TrainState(model, config, start_epoch, step, steps_per_epoch, train_seconds, history, device, scale)
    stop = stopped_early
    interrupted = False
    # SIGTERM (e.g. a killed job) is handled like Ctrl-C: finish nothing, keep the last checkpoint.
    old_term = signal.getsignal(signal.SIGTERM)
    if old_term is not None and _is_main_thread():
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        for epoch in range(start_epoch, config.epochs):
            if stop:
                break
            model.train()
            t_epoch = time.perf_counter()
            perm = dd.shard(torch.randperm(n, generator=gen)).to(device)  # same seed: ranks agree on it
            aug_gen = dd.epoch_generator(gen, config.seed, epoch)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            with reporter.epoch_bar(epoch + 1, config.epochs, steps_per_epoch) as advance:
                for b in range(steps_per_epoch):
                    t0 = time.perf_counter()
                    idx = perm[b * config.batch_size : (b + 1) * config.batch_size]
                    xb, yb = xs["train"][idx], ys["train"][idx]
                    if config.augment:
                        xb = augment_batch(xb.unsqueeze(1).float(), config, aug_gen).squeeze(1)
                    lr = lr_at(config, step, steps_per_epoch) * lr_scale
                    for g in optimizer.param_groups:
                        g["lr"] = lr
                    # Autocast runs convolutions and matmuls in bf16; weights, optimizer and loss stay fp32.
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        logits = step_fn(scale(xb)).float()
                    loss = F.cross_entropy(logits, yb, label_smoothing=config.label_smoothing)
                    reg = getattr(model, "regularization_loss", None)
                    total = loss + reg() if reg is not None else loss
                    optimizer.zero_grad(set_to_none=True)
                    total.backward()
                    optimizer.step()
                    step += 1
                    loss_v = loss.item()
                    if not math.isfinite(loss_v):
                        raise TrainingError(
                            f"The loss became {loss_v} at epoch {epoch + 1}, step {b + 1}: lower the learning "
                            f"rate (now {lr:.3g}); the last good checkpoint (epoch {epoch}) is kept in {run_dir}."
                        )
                    loss_sum += loss.detach() * len(yb)
                    correct += (logits.detach().argmax(1) == yb).sum()
                    train_seconds += time.perf_counter() - t0
                    advance(loss_v)
                    if callbacks:
                        state.epoch, state.step, state.train_seconds = epoch, step, train_seconds
                        if dd.any_rank(any(cb(state) for cb in callbacks)):
                            stop = True
                            break
            seen = min(dd.shard_size(n), (b + 1) * config.batch_size)
            loss_total, correct_total, seen = dd.sum_all(loss_sum.item(), correct.item(), seen)
            row: dict[str, float] = {
                "epoch": epoch + 1,
                "train_loss": loss_total / seen,
                "train_acc": correct_total / seen,
                "lr": lr,
            }
            val_probs = dd.map_rows(lambda x: predict_proba(model, x, scale, config.eval_batch_size), xs["val"])
            row["val_loss"], row["val_acc"] = _loss_acc(val_probs, ys["val"])
            row["seconds"] = time.perf_counter() - t_epoch
            row["train_seconds"] = train_seconds
            history.append(row)
            reporter.epoch_end(row, config.epochs)
            if tb is not None:
                tb.epoch(row, model, val_probs, ys["val"])

            if config.early_stopping or config.restore_best:
                score = row[config.monitor] if len(xs["val"]) else float("nan")
                if not math.isnan(score):
                    better = best_score is None or (
                        score < best_score if config.monitor == "val_loss" else score > best_score
                    )
                    if better:
                        best_score, best_epoch, bad_epochs = score, epoch + 1, 0
                        if config.early_stopping:
                            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                    else:
                        bad_epochs += 1
                if config.early_stopping and bad_epochs >= config.patience:
                    stopped_early = stop = True
                    reporter.message(
                        f"early stopping: {config.monitor} has not improved for {config.patience} epochs "
                        f"(best {best_score:.4f} at epoch {best_epoch})"
                    )
            state.epoch, state.train_seconds = epoch + 1, train_seconds
            if dd.is_main():
                write_history(run_dir, history)
            checkpoint(epoch + 1)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if _is_main_thread():
            signal.signal(signal.SIGTERM, old_term)
        if tb is not None:
            tb.close()
    if interrupted:
        reporter.message(
            f"interrupted: the last complete epoch is saved; continue with 'digitlab train --resume {run_dir}'"
        )
        raise KeyboardInterrupt

    if config.early_stopping and config.restore_best and best_state is not None:
        model.load_state_dict(best_state)
        reporter.message(f"restored the weights of epoch {best_epoch} (best {config.monitor})")

    if not dd.is_main():
        dd.barrier()  # rank 0 evaluates and writes the run folder; then every rank returns it
        return Run.load(run_dir) if (run_dir / "metrics.json").is_file() else None
    run = _finish(run_dir, config, ds, sp, model, scaler, xs, ys, scale, history, train_seconds, reporter)
    dd.barrier()
    return run


FINAL_TRAIN_EVAL = 10_000  # training images scored for metrics.json (a fixed random sample)


def _finish(run_dir, config, ds, sp, model, scaler, xs, ys, scale, history, train_seconds, reporter) -> Run:  # noqa: ANN001
    """Final metrics on every split, the saved model, figures and the report."""
    from digitlab.evaluate import choose_threshold, evaluate_predictions

    t0 = time.perf_counter()
    metrics: dict[str, Any] = {"train_seconds": train_seconds, "epochs": len(history)}
    probs_by_split = {}
    for name in ("train", "val", "test"):
        x, y = xs[name], ys[name]
        if len(x) == 0:
            continue
        if name == "train" and len(x) > FINAL_TRAIN_EVAL:
            # The training-set figures come from a fixed sample: a pass over all 55,000-60,000 images
            # cost as much as the whole fast recipe's training. 'size' says how many were used.
            keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:FINAL_TRAIN_EVAL].to(x.device)
            x, y = x[keep], y[keep]
        probs = predict_proba(model, x, scale, config.eval_batch_size)
        probs_by_split[name] = probs
        loss, acc = _loss_acc(probs, y)
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
            "scaler": scaler.to_dict(),
            "preprocess": {"target": _preprocess_target(ds.name)},
            "threshold": threshold,
            "test_accuracy": metrics["test"]["accuracy"],
            "val_accuracy": metrics.get("val", {}).get("accuracy"),
        },
    )
    atomic_write_json(run_dir / "metrics.json", metrics)
    run = Run.load(run_dir)
    if config.report:
        try:
            from digitlab.report import write_report
        except ImportError:  # matplotlib missing from a trimmed install: the run is still complete
            write_report = None
        if write_report is not None:
            write_report(run, test_probs=test_probs, splits=sp)
    reporter.event("done", run_dir=str(run_dir), test_accuracy=metrics["test"]["accuracy"])
    reporter.message(
        f"test accuracy {metrics['test']['accuracy']:.4f} after {len(history)} epochs "
        f"({train_seconds:.1f}s of training)\nrun folder: {run_dir}"
        + (f"\nreport: {run.report_path}" if run.report_path.exists() else "")
    )
    return run


def _preprocess_target(dataset: str) -> str:
    if dataset == "fashion-mnist":
        return "fashion"
    if dataset == "digits":
        return "digits"
    return "mnist"


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class _TensorBoard:
    """Scalars, weight histograms and the confusion matrix image per epoch (notebook 004)."""

    def __init__(self, path: Path, classes: list[str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

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
