"""Benchmarks: time to accuracy against reference recipes, inference speed, robustness to real handwriting.

``bench_train`` trains digitlab's recipes and the reference recipes (pytorch/examples ``mnist/main.py``
and keras-io ``mnist_convnet``) one after the other in the same process on the same machine, evaluates
each on the MNIST test set several times per epoch and reports the *training* seconds (evaluation
excluded) to reach 98.0%, 99.0% and 99.5%. ``bench_predict`` measures a run's batched throughput and
single-image latency through ``Predictor``. ``bench_robust`` measures a run on transformed copies of the
MNIST test set: slanted, rotated, thicker, thinner, smaller, larger and off-centre digits.

The test set is only ever *reported* here; recipes are chosen on the validation split.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.table import Table

from digitlab.config import recipe_config
from digitlab.data import load_dataset, split
from digitlab.errors import ConfigError
from digitlab.models import build_model
from digitlab.predict import Predictor, shift_tta_proba
from digitlab.runs import Run
from digitlab.training import Hooks, fit, predict_proba, setup
from digitlab.utils import set_threads

TARGETS = (0.98, 0.99, 0.995)
QUICK_TARGETS = (0.80, 0.90, 0.95)
QUICK_STEPS = 60  # optimizer steps per reference recipe in --quick mode
QUICK_SUBSET = 4000  # training images in --quick mode (also of the timed command: its final evaluation stays short)
QUICK_TEST = 500  # test images evaluated during training in --quick mode (a smoke check: targets 80-95%)


@dataclass(frozen=True)
class BenchEntry:
    """One line of the training benchmark: a recipe, how it is fed, how often it is evaluated."""

    recipe: str
    loader: str  # "engine" (digitlab's in-memory engine) or "dataloader" (per-sample Dataset + DataLoader)
    evals_per_epoch: int
    reference: bool
    note: str


ENTRIES: dict[str, BenchEntry] = {
    "fast": BenchEntry(
        "fast", "engine", 8, False, "digitlab's default recipe ('digitlab train' with no options)."
    ),
    "best": BenchEntry("best", "engine", 4, False, "digitlab's accuracy recipe (single model)."),
    "pytorch-example": BenchEntry(
        "pytorch-example", "engine", 4, True,
        "pytorch/examples mnist/main.py (Net, Adadelta lr 1.0, StepLR gamma 0.7, batch 64, 14 epochs, all "
        "60,000 training images, fp32) on digitlab's in-memory engine (uint8 tensors, batches by indexing, "
        "channels_last).",
    ),
    "pytorch-example-dataloader": BenchEntry(
        "pytorch-example", "dataloader", 4, True,
        "pytorch/examples mnist/main.py as users run it on a CPU: a per-sample Dataset (PIL image, ToTensor "
        "and Normalize((0.1307,), (0.3081,)) per item, as torchvision's MNIST does), DataLoader batch 64, "
        "shuffle, num_workers 0 (the example sets workers only for accelerators), fp32, contiguous memory. "
        "The example tests once per epoch; we test more often, which can only make it look faster.",
    ),
    "keras-convnet": BenchEntry(
        "keras-convnet", "engine", 4, True,
        "keras-io mnist_convnet (conv 32, conv 64, dropout 0.5, Adam 1e-3, batch 128, 15 epochs, [0, 1] "
        "inputs, Glorot init, fp32) on digitlab's engine. Keras holds out validation_split=0.1 (the last "
        "6,000 images); here digitlab's default split holds out 5,000 stratified images (55,000 train).",
    ),
}
DEFAULT_RECIPES = ("fast", "best", "pytorch-example", "pytorch-example-dataloader", "keras-convnet")


def machine_info() -> dict[str, Any]:
    """CPU model, cores, load and library versions: every benchmark result carries these."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in load],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# --- time to accuracy ---------------------------------------------------------------------------


class _Tracker:
    """Evaluates on the test set every ``every`` steps; records the training seconds at each target."""

    def __init__(
        self,
        evaluate: Callable[[], float],
        every: int,
        targets: Sequence[float],
        max_seconds: float | None,
        max_steps: int | None,
    ) -> None:
        self.evaluate, self.every, self.targets = evaluate, max(1, every), tuple(targets)
        self.max_seconds, self.max_steps = max_seconds, max_steps
        self.reached: dict[float, float] = {}
        self.curve: list[tuple[float, float, float]] = []  # (epoch, train seconds, test accuracy)
        self.capped = False

    def point(self, step: int, steps_per_epoch: int, seconds: float, last: bool = False) -> bool:
        """Called after every optimizer step; True means stop."""
        over_time = self.max_seconds is not None and seconds >= self.max_seconds
        over_steps = self.max_steps is not None and step >= self.max_steps
        if step % self.every and not (last or over_time or over_steps):
            return False
        acc = self.evaluate()
        self.curve.append((step / steps_per_epoch, seconds, acc))
        for t in self.targets:
            if acc >= t and t not in self.reached:
                self.reached[t] = seconds
        if len(self.reached) == len(self.targets):
            return True
        if over_time or over_steps:
            self.capped = True
            return True
        return False

    def result(self) -> dict[str, Any]:
        accs = [a for _, _, a in self.curve]
        return {
            "seconds_to": {f"{t:.3f}": self.reached.get(t) for t in self.targets},
            "best_accuracy": max(accs) if accs else None,
            "final_accuracy": accs[-1] if accs else None,
            "train_seconds": self.curve[-1][1] if self.curve else 0.0,
            "epochs": self.curve[-1][0] if self.curve else 0.0,
            "capped": self.capped,
            "curve": [[round(e, 3), round(s, 3), a] for e, s, a in self.curve],
        }


def _test_accuracy_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, scale: Callable) -> Callable[[], float]:
    def evaluate() -> float:
        return (predict_proba(model, x, scale, 2048).argmax(1) == y).float().mean().item()

    return evaluate


def _run_engine(
    entry: BenchEntry, seed: int, targets: Sequence[float], max_seconds: float | None, quick: bool,
    threads: int | None = None,
) -> dict[str, Any]:
    """One recipe, one seed: the engine's fit of ``digitlab train`` (same seeding, data and model), without a
    run folder, whose final evaluation and files are not what is timed (``time_train_command`` is that)."""
    import torch._dynamo  # noqa: F401  the first optimizer step imports it; digitlab train does while reading data

    overrides: dict[str, Any] = dict(seed=seed, report=False, threads=threads)
    if entry.reference:
        overrides["precision"] = "fp32"  # as the originals run
    if quick:
        overrides.update(train_subset=QUICK_SUBSET, epochs=1, val_size=500)
    config = recipe_config(entry.recipe, **overrides)
    state, data = setup(config)
    ds = data.dataset
    n_test = QUICK_TEST if quick else len(ds.test_labels)
    test_x = torch.as_tensor(ds.test_images[:n_test]).to(state.device)
    test_y = torch.as_tensor(ds.test_labels[:n_test], dtype=torch.long).to(state.device)
    every = max(1, state.steps_per_epoch // entry.evals_per_epoch)
    max_steps = QUICK_STEPS if quick and entry.recipe != "fast" else None
    tracker = _Tracker(_test_accuracy_fn(state.model, test_x, test_y, state.scale), every, targets, max_seconds,
                       max_steps)

    def callback(state: Any) -> bool:
        last = state.step == state.steps_per_epoch * config.epochs
        return tracker.point(state.step, state.steps_per_epoch, state.train_seconds, last)

    fit(state.model, data, config, Hooks(stop_step=[callback]), state)
    return {**tracker.result(), "precision": config.precision}


class _PerSampleMNIST(torch.utils.data.Dataset):
    """torchvision's MNIST with ``Compose([ToTensor(), Normalize((0.1307,), (0.3081,))])``, without torchvision:
    one PIL image per item, converted and normalized per item, as the example does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels
        self.mean, self.std = torch.tensor([0.1307]).view(1, 1, 1), torch.tensor([0.3081]).view(1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        img = Image.fromarray(self.images[i])  # torchvision.datasets.MNIST.__getitem__
        x = torch.from_numpy(np.array(img, np.uint8, copy=True)).view(img.size[1], img.size[0], 1)
        x = x.permute(2, 0, 1).contiguous().to(torch.float32).div(255)  # ToTensor
        return x.sub_(self.mean).div_(self.std), int(self.labels[i])  # Normalize


def _run_dataloader(
    entry: BenchEntry, seed: int, targets: Sequence[float], max_seconds: float | None, quick: bool
) -> dict[str, Any]:
    """pytorch/examples mnist/main.py's training loop, fed the way the example feeds it."""

    config = recipe_config(entry.recipe)
    ds = load_dataset("mnist")
    images, labels = ds.train_images, ds.train_labels
    if quick:
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:QUICK_SUBSET].numpy()
        images, labels = images[keep], labels[keep]
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        _PerSampleMNIST(images, labels), batch_size=config.batch_size, shuffle=True, num_workers=0
    )
    model = build_model(config.model)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=config.lr, rho=config.rho)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    n_test = QUICK_TEST if quick else len(ds.test_labels)
    test_x = ((torch.as_tensor(ds.test_images[:n_test]).float() / 255 - 0.1307) / 0.3081).unsqueeze(1)
    test_y = torch.as_tensor(ds.test_labels[:n_test], dtype=torch.long)

    @torch.inference_mode()
    def evaluate() -> float:
        model.eval()
        correct = sum((model(test_x[i : i + 1000]).argmax(1) == test_y[i : i + 1000]).sum().item()
                      for i in range(0, len(test_y), 1000))
        model.train()
        return correct / len(test_y)

    steps_per_epoch = len(loader)
    epochs = 1 if quick else config.epochs
    tracker = _Tracker(evaluate, steps_per_epoch // entry.evals_per_epoch, targets, max_seconds,
                       QUICK_STEPS if quick else None)
    seconds, step, stop = 0.0, 0, False
    for _epoch in range(epochs):
        model.train()
        t0 = time.perf_counter()
        for data, target in loader:  # the DataLoader's own time counts: it is what users pay
            optimizer.zero_grad()
            loss = F.cross_entropy(model(data), target)  # = the example's nll_loss(log_softmax(.))
            loss.backward()
            optimizer.step()
            step += 1
            now = time.perf_counter()
            seconds += now - t0
            stop = tracker.point(step, steps_per_epoch, seconds, step == steps_per_epoch * epochs)
            t0 = time.perf_counter()
            if stop:
                break
        scheduler.step()
        if stop:
            break
    return {**tracker.result(), "precision": "fp32"}


def _median(values: list[float | None]) -> float | None:
    """Median over seeds; None (target not reached) counts as slower than anything reached."""
    m = statistics.median(math.inf if v is None else v for v in values)
    return None if math.isinf(m) else m


def _summarize(key: str, runs: list[dict[str, Any]], targets: Sequence[float]) -> dict[str, Any]:
    entry = ENTRIES[key]
    seconds_to = {f"{t:.3f}": _median([r["seconds_to"][f"{t:.3f}"] for r in runs]) for t in targets}
    return {
        "recipe": key,
        "loader": entry.loader,
        "reference": entry.reference,
        "note": entry.note,
        "seeds": len(runs),
        "seconds_to": seconds_to,
        "final_accuracy": statistics.median(r["final_accuracy"] for r in runs if r["final_accuracy"] is not None),
        "best_accuracy": statistics.median(r["best_accuracy"] for r in runs if r["best_accuracy"] is not None),
        "train_seconds": statistics.median(r["train_seconds"] for r in runs),
        "capped": any(r["capped"] for r in runs),
        "precision": runs[0].get("precision"),
        "runs": runs,
    }


def time_train_command(args: Sequence[str] = (), runs_dir: str | Path | None = None) -> dict[str, Any]:
    """Wall time of the whole ``digitlab train`` command in a fresh process (start-up, data, training,
    evaluation, run folder and report), its test accuracy and training seconds."""
    with tempfile.TemporaryDirectory(prefix="digitlab-bench-") as tmp:
        root = Path(runs_dir) if runs_dir else Path(tmp)
        cmd = [sys.executable, "-m", "digitlab", "train", "--runs-dir", str(root), "--json", *args]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise ConfigError(f"'digitlab train' failed in the benchmark ({proc.stderr.strip()[-300:]}).")
        done = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"event": "done"')]
        run_dir = Path(done[-1]["run_dir"])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        report = run_dir / "report.html"
        return {
            "command": "digitlab train " + " ".join(args),
            "wall_seconds": wall,
            "train_seconds": metrics["train_seconds"],
            "eval_seconds": metrics.get("eval_seconds"),
            "test_accuracy": metrics["test"]["accuracy"],
            "report_written": report.is_file(),
            "report_seconds": _time_report(run_dir) if report.is_file() else None,
        }


def _time_report(run_dir: Path) -> float | None:
    """Seconds to write the run's report.html again, as ``train`` does at its end."""
    try:
        from digitlab.report import write_report
    except ImportError:
        return None

    run = Run.load(run_dir)
    cfg = run.config
    sp = split(load_dataset(cfg["dataset"], cfg.get("data_dir")), cfg["split"], cfg["val_size"], 42)
    probs = Predictor.from_run(run_dir).predict_proba(sp.test_x)
    t0 = time.perf_counter()
    write_report(run, test_probs=probs, splits=sp)
    return time.perf_counter() - t0


def bench_train(
    recipes: Sequence[str] | None = None,
    *,
    quick: bool = False,
    seeds: int = 1,
    max_seconds_per_recipe: float | None = None,
    command: bool = True,
    targets: Sequence[float] | None = None,
    threads: int | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train each recipe (median over ``seeds`` seeds) and time it to the accuracy targets on the test set.

    ``quick`` caps the references at a few hundred steps on a subset with low targets (a smoke check in
    under a minute). ``command`` also times the whole ``digitlab train`` command as a subprocess.
    ``threads`` fixes the CPU threads of every recipe (default: all cores).
    """
    keys = list(recipes or DEFAULT_RECIPES)
    unknown = [k for k in keys if k not in ENTRIES]
    if unknown:
        raise ConfigError(f"Unknown benchmark recipe '{unknown[0]}': choose from {', '.join(ENTRIES)}.")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}.")
    if max_seconds_per_recipe is not None and max_seconds_per_recipe <= 0:
        raise ConfigError(f"--max-seconds-per-recipe must be positive, got {max_seconds_per_recipe}.")
    targets = tuple(targets or (QUICK_TARGETS if quick else TARGETS))

    set_threads(threads)  # the DataLoader recipe and the measurements outside the engine
    out: dict[str, Any] = {"machine": machine_info(), "quick": quick, "targets": list(targets),
                           "max_seconds_per_recipe": max_seconds_per_recipe, "recipes": {}}
    t_all = time.perf_counter()
    for key in keys:
        entry = ENTRIES[key]
        runs = []
        for seed in range(seeds):
            if entry.loader == "dataloader":
                runs.append(_run_dataloader(entry, seed, targets, max_seconds_per_recipe, quick))
            else:
                runs.append(_run_engine(entry, seed, targets, max_seconds_per_recipe, quick, threads))
        out["recipes"][key] = _summarize(key, runs, targets)
        if on_result is not None:
            on_result(out["recipes"][key])
    out["speedups"] = speedups(out["recipes"], targets)
    if "fast" in keys:
        out["compute_floor"] = compute_floor("fast")
    if command:
        args = ["--train-subset", str(QUICK_SUBSET)] if quick else []
        out["train_command"] = time_train_command(args + (["--threads", str(threads)] if threads else []))
    out["bench_seconds"] = time.perf_counter() - t_all
    out["machine"]["load_average_end"] = machine_info()["load_average"]
    return out


def speedups(results: dict[str, dict[str, Any]], targets: Sequence[float]) -> dict[str, dict[str, Any]]:
    """``fast``'s speed-up over each other recipe at each target: their seconds / fast's seconds.

    A recipe that never reached a target gives a lower bound (its training seconds), marked with '>='.
    """
    if "fast" not in results:
        return {}
    fast = results["fast"]["seconds_to"]
    table: dict[str, dict[str, Any]] = {}
    for key, res in results.items():
        if key == "fast":
            continue
        row = {}
        for t in targets:
            k = f"{t:.3f}"
            mine, theirs = fast.get(k), res["seconds_to"].get(k)
            if not mine:
                row[k] = None
            elif theirs is not None:
                row[k] = {"ratio": theirs / mine, "lower_bound": False}
            else:
                row[k] = {"ratio": res["train_seconds"] / mine, "lower_bound": True}
        table[key] = row
    return table


# --- compute floor ---------------------------------------------------------------------------------


def matmul_flops(dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 0.5) -> float:
    """Measured FLOP/s of a plain n x n matrix multiply on this machine (current thread count)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - t0)


def compute_floor(recipe: str = "fast", images: int = 55_000) -> dict[str, Any]:
    """FLOPs of one training epoch of a recipe's model (forward + backward, counted by torch) over the
    measured matmul FLOP/s: the seconds an epoch would take if every layer ran like a large matmul."""
    from torch.utils.flop_counter import FlopCounterMode


    config = recipe_config(recipe)
    model = build_model(config.model, **config.model_options)
    x = torch.randn(config.batch_size, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    per_image = counter.get_total_flops() / config.batch_size
    fp32, bf16 = matmul_flops(torch.float32), matmul_flops(torch.bfloat16)
    epoch = per_image * images
    return {
        "recipe": recipe,
        "train_flops_per_image": per_image,
        "train_flops_per_epoch": epoch,
        "matmul_flops_fp32": fp32,
        "matmul_flops_bf16": bf16,
        "floor_seconds_per_epoch_fp32": epoch / fp32,
        "floor_seconds_per_epoch_bf16": epoch / bf16,
    }


# --- inference ------------------------------------------------------------------------------------


def bench_predict(
    run: str | Path, *, batch_size: int = 512, repeats: int = 5, latency_samples: int = 300
) -> dict[str, Any]:
    """Batched images/second and single-image latency of a run through ``Predictor`` (CPU)."""

    if repeats < 1 or latency_samples < 1 or batch_size < 1:
        raise ConfigError("--repeats, --latency-samples and --batch-size must be at least 1.")
    predictor = Predictor.from_run(run)
    ds = load_dataset(predictor.meta.get("dataset", "mnist"))
    images = ds.test_images
    predictor.predict_proba(images[:256])  # warm-up: first calls allocate and pick kernels
    rates = []
    probs = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        probs = predictor.predict_proba(images, batch_size=batch_size)
        rates.append(len(images) / (time.perf_counter() - t0))
    assert probs is not None
    accuracy = float((probs.argmax(1) == ds.test_labels).mean())
    one = images[0]
    for _ in range(10):
        predictor.predict(one[None])
    lat = []
    for i in range(latency_samples):
        img = images[i % len(images)][None]
        t0 = time.perf_counter()
        predictor.predict(img)
        lat.append(time.perf_counter() - t0)
    lat_ms = np.array(lat) * 1e3
    return {
        "run": str(predictor.path),
        "model": predictor.name,
        "images": len(images),
        "batch_size": batch_size,
        "images_per_second": statistics.median(rates),
        "images_per_second_all": rates,
        "latency_ms_median": float(np.median(lat_ms)),
        "latency_ms_p95": float(np.percentile(lat_ms, 95)),
        "test_accuracy": accuracy,
        "machine": machine_info(),
    }


# --- robustness to real handwriting ---------------------------------------------------------------

ROBUST_SETS = ("clean", "rotate ±15°", "shear ±0.3", "thicker", "thinner", "scale 0.8x", "scale 1.2x", "shift 3px")


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def robust_sets(images: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
    """Deterministic transformed copies of uint8 images ``(N, H, W)``, each uint8 ``(N, H, W)``.

    Signs alternate with the index (image 0 +15°, image 1 -15°, ...); shifts cycle right, left, down, up.
    Scaling is about each digit's centre of mass, which then lands on the image centre (as MNIST centres).
    Thicker: a 3x3 dilation (grey-level max filter); thinner: a 2x2 erosion (min filter).
    """
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images).float().unsqueeze(1)
    n, _, h, w = x.shape
    sign = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
    zero, one = torch.zeros(n), torch.ones(n)

    def theta(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, e: torch.Tensor,
              f: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.stack([a, b, c], 1), torch.stack([d, e, f], 1)], 1)

    angle = sign * math.radians(15)
    out = {
        "clean": x,
        "rotate ±15°": _warp(x, theta(angle.cos(), -angle.sin(), zero, angle.sin(), angle.cos(), zero)),
        "shear ±0.3": _warp(x, theta(one, sign * 0.3, zero, zero, one, zero)),
        "thicker": F.max_pool2d(x, 3, stride=1, padding=1),
        "thinner": F.pad(-F.max_pool2d(-x, 2, stride=1), (0, 1, 0, 1)),
    }
    # centre of mass in affine_grid's [-1, 1] coordinates
    ys, xs = (torch.arange(h) + 0.5) / h * 2 - 1, (torch.arange(w) + 0.5) / w * 2 - 1
    mass = x.sum((1, 2, 3)).clamp_min(1e-6)
    cx, cy = (x.sum((1, 2)) * xs).sum(1) / mass, (x.sum((1, 3)) * ys).sum(1) / mass
    for s in (0.8, 1.2):
        out[f"scale {s}x"] = _warp(x, theta(one / s, zero, cx, zero, one / s, cy))
    k = torch.arange(n) % 4
    dx = torch.tensor([3.0, -3.0, 0.0, 0.0])[k] * 2 / w
    dy = torch.tensor([0.0, 0.0, 3.0, -3.0])[k] * 2 / h
    out["shift 3px"] = _warp(x, theta(one, zero, -dx, zero, one, -dy))
    return {name: v.round().clamp(0, 255).to(torch.uint8).squeeze(1) for name, v in out.items()}


def bench_robust(
    run: str | Path | Sequence[str | Path], *, tta: bool = False, limit: int | None = None
) -> dict[str, Any]:
    """Accuracy of a run (or the average of several runs: an ensemble) on each transformed MNIST test set."""

    paths = [run] if isinstance(run, str | Path) else list(run)
    if not paths:
        raise ConfigError("Give at least one run to 'bench robust'.")
    predictors = [Predictor.from_run(p) for p in paths]
    datasets = {p.meta.get("dataset", "mnist") for p in predictors}
    if datasets != {"mnist"}:
        raise ConfigError(f"'bench robust' measures MNIST digit models; these runs were trained on {datasets}.")
    ds = load_dataset("mnist")
    images, labels = ds.test_images[:limit], ds.test_labels[:limit]

    def proba(x: np.ndarray) -> np.ndarray:
        # A model whose model.json asks for shift TTA averages its shifts itself: not twice.
        return np.mean([shift_tta_proba(p.predict_proba, x) if tta and not p.tta else p.predict_proba(x)
                        for p in predictors], axis=0)

    accuracy = {}
    for name, x in robust_sets(images).items():
        probs = proba(x.numpy())
        accuracy[name] = float((probs.argmax(1) == labels).mean())
    transformed = [v for k, v in accuracy.items() if k != "clean"]
    return {
        "runs": [str(p.path) for p in predictors],
        "models": [p.name for p in predictors],
        "tta": tta,
        "images": len(labels),
        "accuracy": accuracy,
        "mean_transformed": float(np.mean(transformed)),
        "worst_transformed": float(np.min(transformed)),
    }


# --- printing -------------------------------------------------------------------------------------


def _fmt_seconds(v: float | None) -> str:
    return "not reached" if v is None else f"{v:.1f}s"


def print_train(result: dict[str, Any], console: Any) -> None:

    m = result["machine"]
    console.print(f"[bold]digitlab bench train[/]{' --quick' if result['quick'] else ''}: {m['cpu']}, "
                  f"{m['cores']} cores, {m['threads']} threads, torch {m['torch']}, load {m['load_average']}"
                  f" -> {m.get('load_average_end')}", highlight=False)
    targets = [f"{t:.3f}" for t in result["targets"]]
    table = Table(title="Training seconds to test accuracy (evaluation excluded)")
    table.add_column("recipe", style="bold")
    table.add_column("feed")
    for t in targets:
        table.add_column(f"to {float(t) * 100:.1f}%", justify="right")
    table.add_column("best / final acc", justify="right")
    table.add_column("trained", justify="right")
    for key, r in result["recipes"].items():
        best = ""
        if r["best_accuracy"] is not None:
            best = f"{r['best_accuracy'] * 100:.2f} / {r['final_accuracy'] * 100:.2f}%"
        trained = f"{r['train_seconds']:.1f}s" + (" (capped)" if r["capped"] else "")
        table.add_row(key, r["loader"], *[_fmt_seconds(r["seconds_to"][t]) for t in targets], best, trained)
    console.print(table)
    if result.get("speedups"):
        sp = Table(title="Speed-up of 'fast' (reference seconds / fast seconds, same run)")
        sp.add_column("against", style="bold")
        for t in targets:
            sp.add_column(f"to {float(t) * 100:.1f}%", justify="right")
        for key, row in result["speedups"].items():
            cells = []
            for t in targets:
                c = row.get(t)
                cells.append("-" if c is None else f"{'>=' if c['lower_bound'] else ''}{c['ratio']:.1f}x")
            sp.add_row(key, *cells)
        console.print(sp)
    cmd = result.get("train_command")
    if cmd:
        report = "no report.html" if not cmd["report_written"] else (
            f"report {cmd['report_seconds']:.2f}s" if cmd["report_seconds"] is not None else "report written")
        console.print(f"'{cmd['command'].strip()}': {cmd['wall_seconds']:.1f}s wall ({cmd['train_seconds']:.1f}s "
                      f"training, {report}), test accuracy {cmd['test_accuracy'] * 100:.2f}%", highlight=False)
    floor = result.get("compute_floor")
    if floor:
        console.print(
            f"compute floor of 'fast': {floor['train_flops_per_epoch'] / 1e9:.0f} GFLOP per epoch (forward + backward) "
            f"/ matmul {floor['matmul_flops_fp32'] / 1e9:.0f} GFLOP/s fp32, {floor['matmul_flops_bf16'] / 1e9:.0f} "
            f"GFLOP/s bf16 = {floor['floor_seconds_per_epoch_fp32']:.1f}s fp32, "
            f"{floor['floor_seconds_per_epoch_bf16']:.1f}s bf16 per epoch",
            highlight=False,
        )
    for key, r in result["recipes"].items():
        console.print(f"[dim]{key}: {r['note']}[/]", highlight=False)


def print_predict(result: dict[str, Any], console: Any) -> None:
    console.print(
        f"{result['model']} ({result['run']}): {result['images_per_second']:,.0f} images/s batched "
        f"(batch {result['batch_size']}, {result['images']:,} images), "
        f"single image {result['latency_ms_median']:.2f} ms "
        f"median / {result['latency_ms_p95']:.2f} ms p95; test accuracy {result['test_accuracy'] * 100:.2f}% "
        f"[{result['machine']['cpu']}, {result['machine']['threads']} threads]",
        highlight=False,
    )


def print_robust(result: dict[str, Any], console: Any) -> None:

    title = ", ".join(result["models"]) + (" + shift TTA" if result["tta"] else "")
    table = Table(title=f"Accuracy on transformed MNIST test digits: {title}")
    table.add_column("test set", style="bold")
    table.add_column("accuracy", justify="right")
    for name, acc in result["accuracy"].items():
        table.add_row(name, f"{acc * 100:.2f}%")
    table.add_row("mean of transformed", f"{result['mean_transformed'] * 100:.2f}%")
    console.print(table)
