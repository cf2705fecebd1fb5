"""Explore a dataset: notebook 002's first questions, class counts and three PNGs.

``explore(name, out=None, data_dir=None)`` returns (and ``digitlab explore DATASET --json`` prints)::

    {
      "dataset": "mnist",
      "size": 70000,                      # train + test
      "container": "numpy.ndarray",       # what holds the images
      "image_shape": [28, 28],            # one image, H x W
      "input_shape": [1, 28, 28],         # what a model receives, C x H x W
      "dtype": "uint8", "label_dtype": "int64",
      "min": 0, "max": 255,               # observed pixel range over train and test
      "max_value": 255,                   # the nominal top of the range (16 for digits)
      "classes": ["0", ..., "9"], "labels": [0, ..., 9], "num_classes": 10,
      "train": {"size": 60000, "class_counts": {"0": 5923, ...}, "pixel_mean": 33.32, "pixel_std": 78.57},
      "test":  {"size": 10000, "class_counts": {...}, "pixel_mean": ..., "pixel_std": ...},
      "figures": {"samples": ".../samples.png", "class_distribution": ".../class_distribution.png",
                  "mean_images": ".../mean_images.png"},
      "out": "runs/explore-mnist"
    }

Class counts are keyed by class name in class order. The PNGs go to ``out`` (default
``runs/explore-<dataset>/``): a grid of random training images, one row per class (up to 10 per row),
the class counts of train and test side by side, and the mean training image of each class.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from digitlab.data import Dataset, _pixel_moments, load_dataset
from digitlab.utils import atomic_write

MAX_GRID_ROWS = 20  # classes shown in the sample grid


def explore(name: str, out: str | Path | None = None, data_dir: str | Path | None = None) -> dict[str, Any]:
    """Load ``name``, describe it (see the module docstring) and write its three PNGs into ``out``."""
    ds = load_dataset(name, data_dir=data_dir)
    out = Path(out) if out is not None else Path("runs") / f"explore-{_slug(name)}"
    images = (ds.train_images, ds.test_images)
    summary: dict[str, Any] = {
        "dataset": ds.name,
        "size": len(ds.train_labels) + len(ds.test_labels),
        "container": f"{type(ds.train_images).__module__}.{type(ds.train_images).__name__}",
        "image_shape": list(ds.train_images.shape[1:]),
        "input_shape": list(ds.input_shape),
        "dtype": str(ds.train_images.dtype),
        "label_dtype": str(ds.train_labels.dtype),
        "min": int(min(x.min() for x in images if x.size)),
        "max": int(max(x.max() for x in images if x.size)),
        "max_value": ds.max_value,
        "classes": list(ds.classes),
        "labels": sorted(int(v) for v in np.unique(np.concatenate([ds.train_labels, ds.test_labels]))),
        "num_classes": ds.num_classes,
        "train": _split_summary(ds.train_images, ds.train_labels, ds.classes),
        "test": _split_summary(ds.test_images, ds.test_labels, ds.classes),
    }
    figures = {
        "samples": _sample_grid(ds, out / "samples.png"),
        "class_distribution": _class_bars(ds, summary, out / "class_distribution.png"),
        "mean_images": _mean_images(ds, out / "mean_images.png"),
    }
    summary["figures"] = {k: str(v) for k, v in figures.items()}
    summary["out"] = str(out)
    return summary


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "dataset"


def _split_summary(x: np.ndarray, y: np.ndarray, classes: list[str]) -> dict[str, Any]:
    counts = np.bincount(y, minlength=len(classes)).tolist()
    result: dict[str, Any] = {"size": len(y), "class_counts": dict(zip(classes, counts, strict=True))}
    if len(x):
        mean, var = _pixel_moments(x)
        overall = mean.mean()
        result["pixel_mean"] = round(float(overall), 4)
        result["pixel_std"] = round(float(np.sqrt((var + (mean - overall) ** 2).mean())), 4)
    return result


def _save(fig: Figure, path: Path) -> Path:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100, bbox_inches="tight", pad_inches=0.15))
    return path


def _sample_grid(ds: Dataset, path: Path, per_row: int = 10, seed: int = 0) -> Path:
    """One row per class of random training images, drawn as one mosaic with NaN gutters."""
    rng = np.random.default_rng(seed)
    rows = list(range(min(ds.num_classes, MAX_GRID_ROWS)))
    h, w = ds.train_images.shape[1:3]
    gap = max(1, h // 14)
    mosaic = np.full((len(rows) * (h + gap) - gap, per_row * (w + gap) - gap), np.nan)
    for r, label in enumerate(rows):
        pool = np.flatnonzero(ds.train_labels == label)
        for c, i in enumerate(rng.choice(pool, size=min(per_row, len(pool)), replace=False)):
            top, left = r * (h + gap), c * (w + gap)
            mosaic[top:top + h, left:left + w] = ds.train_images[i]
    fig = Figure(figsize=(8.5, 0.75 * len(rows) + 1.2))
    ax = fig.add_subplot()
    cmap = colormaps["gray"].with_extremes(bad="white")
    ax.imshow(mosaic, cmap=cmap, vmin=0, vmax=ds.max_value, interpolation="nearest")
    ax.set_yticks([r * (h + gap) + h / 2 for r in range(len(rows))], [ds.classes[r] for r in rows])
    ax.set_xticks([])
    ax.set_ylabel("class (label)")
    shown = "" if len(rows) == ds.num_classes else f" (first {len(rows)} of {ds.num_classes} classes)"
    some = "up to " if np.bincount(ds.train_labels, minlength=len(rows))[rows].min() < per_row else ""
    ax.set_title(f"{ds.name}: {some}{per_row} random training images per class{shown}")
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def _class_bars(ds: Dataset, summary: dict[str, Any], path: Path) -> Path:
    fig = Figure(figsize=(12, 4.8))
    axes = fig.subplots(1, 2)
    long_names = max(len(c) for c in ds.classes) > 3
    for ax, part, colour in zip(axes, ("train", "test"), ("tab:blue", "tab:orange"), strict=True):
        counts = list(summary[part]["class_counts"].values())
        bars = ax.bar(range(ds.num_classes), counts, color=colour)
        if ds.num_classes <= 20:
            ax.bar_label(bars, fontsize=8, padding=2)
        if counts:
            ax.axhline(np.mean(counts), color="0.35", linestyle="--", linewidth=1, zorder=0)
        ax.set_xticks(range(ds.num_classes), ds.classes, rotation=35 if long_names else 0,
                      ha="right" if long_names else "center")
        ax.set_xlabel("class")
        ax.set_ylabel("number of images")
        ax.set_title(f"{part}: {summary[part]['size']:,} images (dashed line: mean per class)")
        ax.margins(y=0.12)
    fig.suptitle(f"{ds.name}: class distribution")
    fig.tight_layout()
    return _save(fig, path)


def _mean_images(ds: Dataset, path: Path) -> Path:
    k = ds.num_classes
    cols = min(5, k)
    rows = math.ceil(k / cols)
    fig = Figure(figsize=(2.1 * cols + 1.2, 2.2 * rows + 0.6))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    image = None
    for label, ax in enumerate(axes):
        ax.axis("off")
        if label >= k:
            continue
        members = ds.train_images[ds.train_labels == label]
        mean = members.mean(axis=0, dtype=np.float64) if len(members) else np.zeros(ds.train_images.shape[1:3])
        image = ax.imshow(mean, cmap="gray", vmin=0, vmax=ds.max_value, interpolation="nearest")
        ax.set_title(f"{ds.classes[label]} (n={len(members):,})", fontsize=10)
    fig.suptitle(f"{ds.name}: mean training image per class")
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    if image is not None:
        cax = fig.add_axes((0.915, 0.12, 0.02, 0.72))
        fig.colorbar(image, cax=cax, label=f"mean pixel value (0..{ds.max_value})")
    return _save(fig, path)


def print_summary(summary: dict[str, Any], console: Any) -> None:
    """The human-readable version of ``explore``'s result (rich tables)."""
    from rich.table import Table

    facts = Table(title=f"Dataset {summary['dataset']}", show_header=False)
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("images", f"{summary['size']:,} ({summary['train']['size']:,} train, "
                            f"{summary['test']['size']:,} test)")
    facts.add_row("image size", " x ".join(map(str, summary["image_shape"])) + " pixels")
    facts.add_row("container", summary["container"])
    facts.add_row("dtype", f"images {summary['dtype']}, labels {summary['label_dtype']}")
    facts.add_row("value range", f"{summary['min']}..{summary['max']}")
    facts.add_row("labels", f"{summary['labels'][0]}..{summary['labels'][-1]} ({summary['num_classes']} classes)")
    if "pixel_mean" in summary["train"]:
        facts.add_row("train pixels", f"mean {summary['train']['pixel_mean']:.2f}, "
                                      f"std {summary['train']['pixel_std']:.2f}")
    console.print(facts)
    counts = Table(title="Images per class")
    for column in ("label", "class", "train", "test"):
        counts.add_column(column, justify="left" if column == "class" else "right")
    for label, name in enumerate(summary["classes"]):
        counts.add_row(str(label), name, f"{summary['train']['class_counts'][name]:,}",
                       f"{summary['test']['class_counts'][name]:,}")
    console.print(counts)
    for what, path in summary["figures"].items():
        console.print(f"{what.replace('_', ' ')}: {path}", highlight=False, soft_wrap=True)
