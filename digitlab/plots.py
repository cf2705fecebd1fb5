"""Figures of training and evaluation, written to PNG.

Every function builds a ``matplotlib.figure.Figure`` directly (no pyplot global state, so it is
thread-safe and nothing leaks), writes it atomically to ``path`` and returns the path. Saving a
bare Figure renders with the Agg canvas whatever backend the user chose, so we never switch it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from digitlab.utils import atomic_write

DPI = 100
RIGHT, WRONG = "#1a7f37", "#cf222e"  # green / red readable on white
TRAIN_COLOR, VAL_COLOR = "#1f77b4", "#ff7f0e"
METRIC_LABELS = {
    "train_loss": "training loss",
    "val_loss": "validation loss",
    "train_acc": "training accuracy",
    "val_acc": "validation accuracy",
    "lr": "learning rate",
}


def _save(fig: Figure, path: str | Path) -> Path:
    # The temp file ends in .tmp, so the format must be named.
    return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=DPI, facecolor="white"))


def _column(history: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    """One history column as floats; missing or empty values (no validation set) become NaN."""
    values = []
    for row in history:
        value = row.get(key)
        try:
            values.append(float(value) if value not in (None, "") else math.nan)
        except (TypeError, ValueError):
            values.append(math.nan)
    return np.array(values, dtype=np.float64)


def _rotate_long_labels(ax: Any, names: Sequence[str], angle: float) -> None:
    """Slant the x tick labels when side by side they would run into each other."""
    if max(len(str(n)) for n in names) * len(names) <= 40:
        return
    for label in ax.get_xticklabels():
        label.set_rotation(angle)
        label.set_horizontalalignment("right")
        label.set_rotation_mode("anchor")


def _epoch_axis(ax: Any, epochs: np.ndarray) -> None:
    """Whole epochs on the x axis; a run of one or a few epochs gets half an epoch of room each side
    (a single point would otherwise sit on ticks like 0.995 and 1.005)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(epochs) and np.nanmax(epochs) - np.nanmin(epochs) < 4:
        lo, hi = int(np.nanmin(epochs)), int(np.nanmax(epochs))
        ax.set_xticks(range(lo, hi + 1))
        ax.set_xlim(lo - 0.5, hi + 0.5)


def _prob(p: float) -> str:
    """Two significant digits, so that tiny probabilities do not all read 0.00 (3e-05, 0.0098, 0.45)."""
    return f"{p:.2g}"


def _margins(fig: Figure, left: float, right: float, top: float, bottom: float, **space: float) -> None:
    """Fixed margins in inches. A layout engine would find them itself but costs a second draw,
    about 0.1 s a figure, which matters for the report written at the end of every run."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, top=1 - top / h, bottom=bottom / h, **space)


def _is_accuracy(metric: str) -> bool:
    return metric.endswith("acc") or metric.endswith("accuracy")


def for_display(images: Any, max_value: float = 255) -> np.ndarray:
    """uint8 images whose full scale is ``max_value`` (16 for scikit-learn's 8x8 digits) stretched to
    0..255, the scale the figures assume for uint8."""
    arr = np.asarray(images)
    if max_value == 255:
        return arr
    return np.clip(np.rint(arr.astype(np.float64) * (255.0 / max_value)), 0, 255).astype(np.uint8)


def _images(images: Any) -> np.ndarray:
    """(N,H,W), (N,1,H,W), (N,H,W,3|4) arrays or tensors, or one (H,W) image, to numpy (N,H,W[,C])."""
    arr = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[3] not in (3, 4)):
        raise ValueError(f"images must be N x H x W (or N x 1 x H x W, or N x H x W x 3|4), got shape {arr.shape}")
    return arr


def to_rgba(images: Any, cmap: str = "gray", vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Grey images (N,H,W) through a colour map to RGBA floats (N,H,W,4); colour images pass through.

    ``vmin``/``vmax`` shared by all images; when both are None each image is stretched on its own
    (uint8 images always on 0..255).
    """
    arr = _images(images)
    if arr.ndim == 4:
        rgba = arr.astype(np.float64) / (255.0 if arr.dtype == np.uint8 else 1.0)
        if rgba.shape[3] == 3:
            rgba = np.concatenate([rgba, np.ones(rgba.shape[:3] + (1,))], axis=3)
        return np.clip(rgba, 0.0, 1.0)
    if arr.dtype == np.uint8 and vmin is None and vmax is None:
        vmin, vmax = 0, 255
    values = arr.astype(np.float64)
    if vmin is None and vmax is None:
        lo = np.nanmin(values, axis=(1, 2), keepdims=True)
        hi = np.nanmax(values, axis=(1, 2), keepdims=True)
    else:
        lo = np.nanmin(values) if vmin is None else vmin
        hi = np.nanmax(values) if vmax is None else vmax
    span = np.where(np.asarray(hi - lo) > 0, hi - lo, 1.0)
    return colormaps[cmap]((values - lo) / span)


def mosaic(tiles: np.ndarray, ncols: int, gap: int = 2, title_gap: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """RGBA tiles (N,h,w,4) laid out in one transparent RGBA canvas, ``ncols`` per row.

    ``gap`` pixels separate tiles; ``title_gap`` extra pixels above each row leave room for titles.
    Returns the canvas and the (top, left) pixel of each tile. One image of many tiles draws far
    faster than one matplotlib Axes per tile (0.1 s instead of 0.6-1 s for 36 digits).
    """
    n, h, w = tiles.shape[:3]
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    row_h, col_w = h + gap + title_gap, w + gap
    canvas = np.zeros((nrows * row_h - gap, ncols * col_w - gap, 4))
    origins = []
    for i in range(n):
        top, left = (i // ncols) * row_h + title_gap, (i % ncols) * col_w
        canvas[top : top + h, left : left + w] = tiles[i]
        origins.append((top, left))
    return canvas, origins


def image_grid(
    images: Any,
    titles: Sequence[str] | None,
    path: str | Path,
    ncols: int = 10,
    cmap: str | Sequence[str] = "gray",
    suptitle: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar: bool = False,
    title_colors: Sequence[str] | None = None,
    colorbar_label: str | None = None,
    alphas: Sequence[float] | None = None,
    cell: float = 1.2,
    colorbar_extend: str = "neither",
    gap: float = 0.08,
) -> Path:
    """A grid of images with optional titles (one per image, may hold line breaks).

    Scaling: uint8 images are shown on 0..255; with ``vmin``/``vmax`` or ``colorbar`` all images
    share one scale (weight masks pass a symmetric range and a diverging ``cmap``, with one colour
    bar for the whole grid); otherwise each float image is stretched on its own. ``cmap`` may be one
    colour map per image, ``alphas`` one opacity per image (notebook 000's active features), and
    ``cell`` is the width of one image and ``gap`` the space between images, in inches. Colour
    (N,H,W,3|4) images are shown as they are.
    """
    arr = _images(images)
    n = len(arr)
    if n == 0:
        raise ValueError("image_grid needs at least one image")
    if titles is not None and len(titles) != n:
        raise ValueError(f"{n} images but {len(titles)} titles")
    cmaps = [cmap] * n if isinstance(cmap, str) else list(cmap)
    if len(cmaps) != n or (alphas is not None and len(alphas) != n):
        raise ValueError(f"{n} images need {n} colour maps and alphas")
    if arr.dtype == np.uint8 and vmin is None and vmax is None and arr.ndim == 3:
        vmin, vmax = 0, 255
    elif colorbar and vmin is None and vmax is None:
        vmin, vmax = float(np.nanmin(arr)), float(np.nanmax(arr))
    tiles = np.concatenate([to_rgba(arr[i : i + 1], cmaps[i], vmin, vmax) for i in range(n)])
    if alphas is not None:
        tiles[..., 3] *= np.clip(np.asarray(alphas, dtype=np.float64), 0.0, 1.0)[:, None, None]

    h, w = arr.shape[1:3]
    px = cell / w  # inches per image pixel
    fontsize = 9 if cell >= 1.0 else 8
    lines = max((str(t).count("\n") + 1 for t in titles), default=0) if titles else 0
    title_gap = math.ceil(lines * fontsize * 1.3 / 72 / px) + 1 if lines else 0
    canvas, origins = mosaic(tiles, ncols, max(1, round(gap / px)), title_gap)
    canvas_w, canvas_h = canvas.shape[1] * px, canvas.shape[0] * px
    sup_lines = suptitle.split("\n") if suptitle else []
    top_in = 0.3 + 0.22 * len(sup_lines) if sup_lines else 0.08
    right_in = 1.25 if colorbar else 0.08
    # Wide enough for the suptitle (13 pt: about 0.1 inch a character) and never tiny.
    fig_w = max(canvas_w + 0.08 + right_in, 0.1 * max(map(len, sup_lines), default=0) + 0.3, 2.5)
    # A colour bar needs some height for its ticks and label, even beside a single row of images.
    fig_h = max(canvas_h + top_in + 0.08, 2.4 if colorbar else 0.0)
    left_in, bottom_in = (fig_w - canvas_w - right_in + 0.08) / 2, max(0.08, (fig_h - top_in - canvas_h) / 2)
    fig = Figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((left_in / fig_w, bottom_in / fig_h, canvas_w / fig_w, canvas_h / fig_h))
    ax.set_axis_off()
    ax.imshow(canvas, interpolation="nearest", aspect="auto")
    if titles is not None:
        for i, (top, left) in enumerate(origins):
            color = title_colors[i] if title_colors is not None else "black"
            ax.text(left + w / 2 - 0.5, top - 1.0, str(titles[i]), ha="center", va="bottom", fontsize=fontsize,
                    color=color, linespacing=1.1)
    if colorbar:
        bar_h = min(max(0.85 * canvas_h, 1.9), fig_h - top_in - 0.1)
        bar_bottom = min(max(bottom_in + (canvas_h - bar_h) / 2, 0.1), fig_h - top_in - bar_h)
        cax = fig.add_axes(((left_in + canvas_w + 0.25) / fig_w, bar_bottom / fig_h, 0.18 / fig_w, bar_h / fig_h))
        mappable = ScalarMappable(Normalize(vmin, vmax), colormaps[cmaps[0]])
        cbar = fig.colorbar(mappable, cax=cax, extend=colorbar_extend)
        if colorbar_label:
            cbar.set_label(colorbar_label)
    if suptitle:
        fig.text(0.5, 1 - 0.12 / fig_h, suptitle, ha="center", va="top", fontsize=13)
    return _save(fig, path)


def learning_curves(history: Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Loss and accuracy per epoch, training vs validation, side by side (notebooks 003/004).

    A dotted line marks the epoch with the best validation accuracy when there is one.
    """
    if not history:
        raise ValueError("learning_curves needs at least one epoch of history")
    epochs = _column(history, "epoch")
    if np.isnan(epochs).any():
        epochs = np.arange(1, len(history) + 1, dtype=np.float64)
    marker = "o" if len(history) <= 30 else None
    fig = Figure(figsize=(11, 4.3))
    _margins(fig, left=0.75, right=0.2, top=0.7, bottom=0.55, wspace=0.22)
    ax_loss, ax_acc = fig.subplots(1, 2)
    val_acc = _column(history, "val_acc")
    best = int(np.nanargmax(val_acc)) if len(history) > 1 and not np.isnan(val_acc).all() else None
    for ax, what in ((ax_loss, "loss"), (ax_acc, "acc")):
        for split, color, name in (("train", TRAIN_COLOR, "training"), ("val", VAL_COLOR, "validation")):
            values = _column(history, f"{split}_{what}")
            if not np.isnan(values).all():
                ax.plot(epochs, values, color=color, marker=marker, markersize=4, label=name)
        if best is not None:
            ax.axvline(epochs[best], color="gray", linestyle=":", linewidth=1.2,
                       label=f"best val acc (epoch {epochs[best]:g})")
        ax.set_xlabel("Epoch")
        ax.set_ylabel("Loss" if what == "loss" else "Accuracy")
        ax.set_title("Loss" if what == "loss" else "Accuracy")
        _epoch_axis(ax, epochs)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    ax_acc.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    fig.suptitle(title or "Learning curves", fontsize=13)
    return _save(fig, path)


def confusion_matrix(
    cm: Any,
    classes: Sequence[str],
    path: str | Path,
    normalize: bool = False,
    title: str | None = None,
) -> Path:
    """Heatmap of a confusion matrix: rows are true classes, columns predicted (scikit-learn's way).

    Cells show counts, or with ``normalize`` the share of each true class (rows sum to 100%).
    """
    counts = np.asarray(cm, dtype=np.float64)
    k = len(classes)
    if counts.shape != (k, k):
        raise ValueError(f"cm must be {k}x{k} for {k} classes, got shape {counts.shape}")
    if normalize:
        rows = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    else:
        values = counts
    side = min(max(4.5, 0.55 * k + 1.6), 18.0)  # the square heat map, in inches
    longest = max(len(str(c)) for c in classes)
    slanted = longest * k > 40  # as _rotate_long_labels decides
    # Fixed margins: tick labels take about 0.075 inch a character (0.05 below the axes when slanted).
    left, bottom = 0.65 + 0.075 * longest, 0.6 + (0.05 * longest if slanted else 0.2)
    width, height = left + side + 1.45, bottom + side + 0.45
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((left / width, bottom / height, side / width, side / height))
    cax = fig.add_axes(((left + side + 0.25) / width, (bottom + 0.1 * side) / height, 0.2 / width,
                        0.8 * side / height))
    cmap = colormaps["Blues"]
    norm = Normalize(vmin=0.0, vmax=1.0 if normalize else max(values.max(), 1.0))
    im = ax.imshow(values, cmap=cmap, norm=norm, interpolation="nearest", aspect="auto")
    cbar = fig.colorbar(im, cax=cax)
    cbar.set_label("share of the true class" if normalize else "number of samples")
    if normalize:
        cbar.ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))

    if k <= 30:  # beyond that the numbers cannot be read anyway
        fontsize = 10 if k <= 12 else 8 if k <= 20 else 6
        if not normalize and counts.max() >= 10_000:
            fontsize -= 2
        for i in range(k):
            for j in range(k):
                if normalize:
                    # Small shares keep a decimal so that one mistake in 200 does not read as 0%.
                    v = values[i, j]
                    text = "0" if counts[i, j] == 0 else f"{v:.1%}" if v < 0.095 else f"{v:.0%}"
                else:
                    text = f"{int(counts[i, j])}"
                r, g, b, _ = cmap(norm(values[i, j]))
                # White text on dark cells, black on light ones (relative luminance).
                dark = 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5
                color = "white" if dark else ("black" if counts[i, j] else "#b0b0b0")
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=color)

    ax.set_xticks(range(k), [str(c) for c in classes])
    ax.set_yticks(range(k), [str(c) for c in classes])
    _rotate_long_labels(ax, classes, 40)
    ax.set_xlabel("Predicted label", fontsize=11)
    ax.set_ylabel("True label", fontsize=11)
    default = "Confusion matrix (share of each true class)" if normalize else "Confusion matrix (counts)"
    ax.set_title(title or default, fontsize=13)
    return _save(fig, path)


def hardest_examples(
    images: Any,
    true: Sequence[int],
    pred: Sequence[int],
    prob_true: Sequence[float],
    classes: Sequence[str],
    path: str | Path,
    ncols: int = 5,
) -> Path:
    """The images the model found hardest, titled with true class, prediction and p(true class)."""
    arr = _images(images)
    if not len(arr) == len(true) == len(pred) == len(prob_true):
        raise ValueError("images, true, pred and prob_true must have the same length")
    titles = [
        f"true {classes[int(t)]}\npred {classes[int(p)]}\np={_prob(float(q))}"
        for t, p, q in zip(true, pred, prob_true, strict=True)
    ]
    colors = [RIGHT if int(t) == int(p) else WRONG for t, p in zip(true, pred, strict=True)]
    return image_grid(
        arr, titles, path, ncols=ncols, title_colors=colors,
        suptitle="Hardest examples: lowest probability p of the true class",
    )


def prediction_grid(
    images: Any,
    true: Sequence[int],
    pred: Sequence[int],
    classes: Sequence[str],
    path: str | Path,
    n: int = 36,
    seed: int = 0,
) -> Path:
    """A random sample of ``n`` predictions (fixed ``seed``): green title when right, red when wrong."""
    arr = _images(images)
    true, pred = np.asarray(true), np.asarray(pred)
    if not len(arr) == len(true) == len(pred):
        raise ValueError("images, true and pred must have the same length")
    n = min(n, len(arr))
    pick = np.sort(np.random.default_rng(seed).choice(len(arr), size=n, replace=False))
    titles, colors = [], []
    for i in pick:
        right = true[i] == pred[i]
        titles.append(f"pred {classes[pred[i]]}" if right else f"pred {classes[pred[i]]}\ntrue {classes[true[i]]}")
        colors.append(RIGHT if right else WRONG)
    wrong = sum(c == WRONG for c in colors)
    return image_grid(
        arr[pick], titles, path, ncols=min(6 if n <= 36 else 10, n), title_colors=colors,
        suptitle=f"Sample predictions ({n - wrong} right in green, {wrong} wrong in red)",
    )


def f1_bars(report: Mapping[str, Any], classes: Sequence[str], path: str | Path) -> Path:
    """Per-class precision, recall and F1 from a classification-report dict, with the macro F1 line.

    The y axis starts near the lowest score so that differences between good classes show.
    """
    names = [str(c) for c in classes]
    missing = [c for c in names if c not in report]
    if missing:
        raise ValueError(f"classes missing from the report: {missing}")
    scores = {key: np.array([report[c][key] for c in names], dtype=float)
              for key in ("precision", "recall", "f1-score")}
    k = len(names)
    fig = Figure(figsize=(min(max(7.0, 0.75 * k + 3.0), 22.0), 4.8), layout="constrained")
    ax = fig.subplots()
    x = np.arange(k)
    width = 0.27
    colors = {"precision": "#9ecae1", "recall": "#6baed6", "f1-score": "#08519c"}
    for offset, key in zip((-width, 0.0, width), scores, strict=True):
        ax.bar(x + offset, scores[key], width, label="F1" if key == "f1-score" else key, color=colors[key])
    if k <= 20:
        for xi, f1 in zip(x, scores["f1-score"], strict=True):
            ax.text(xi + width, f1, f"{f1:.2f}", ha="center", va="bottom", fontsize=8, rotation=90)
    macro = report.get("macro avg", {}).get("f1-score")
    if macro is not None:
        ax.axhline(macro, color=WRONG, linestyle="--", linewidth=1.3, label=f"macro F1 = {macro:.3f}")
    lowest = min(float(min(v)) for v in scores.values())
    bottom = max(0.0, math.floor((lowest - 0.05) * 10) / 10)
    ax.set_ylim(bottom, 1.04)
    ax.set_xticks(x, names)
    _rotate_long_labels(ax, names, 30)
    ax.set_xlabel("Class")
    ax.set_ylabel("Score" + (f" (axis starts at {bottom:.1f})" if bottom > 0 else ""))
    ax.set_title("Precision, recall and F1 per class", fontsize=13)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)


def reliability_diagram(bins: Sequence[Mapping[str, Any]], ece: float, path: str | Path) -> Path:
    """Accuracy against confidence per bin (from ``expected_calibration_error``).

    Bars below the diagonal are over-confident; the red hatching spans the gap between
    accuracy and mean confidence (hatching inside a bar: under-confident).
    The lower panel shows how many predictions fall in each bin (log scale: most are confident).
    """
    if not bins:
        raise ValueError("reliability_diagram needs at least one bin")
    lower = np.array([b["lower"] for b in bins], dtype=float)
    upper = np.array([b["upper"] for b in bins], dtype=float)
    counts = np.array([b["count"] for b in bins], dtype=float)
    filled = counts > 0
    acc = np.array([b["accuracy"] if b["count"] else 0.0 for b in bins], dtype=float)
    conf = np.array([b["confidence"] if b["count"] else 0.0 for b in bins], dtype=float)
    centers, widths = (lower + upper) / 2, upper - lower

    fig = Figure(figsize=(6.4, 7.2))
    _margins(fig, left=0.85, right=0.2, top=0.45, bottom=0.6, hspace=0.12)
    ax, ax_count = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(centers[filled], acc[filled], widths[filled], color="#3182bd", edgecolor="black",
           linewidth=0.6, label="accuracy")
    gap_bottom = np.minimum(acc, conf)[filled]
    ax.bar(centers[filled], np.abs(conf - acc)[filled], widths[filled], bottom=gap_bottom,
           facecolor="none", edgecolor=WRONG, hatch="///", linewidth=0.8, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1.2, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("auto")
    ax.set_ylabel("Accuracy")
    ax.set_title(f"Reliability diagram (ECE = {ece:.2%})", fontsize=13)
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)

    ax_count.bar(centers[filled], counts[filled], widths[filled], color="#6b6b6b", edgecolor="black",
                 linewidth=0.6)
    if filled.any() and counts.max() / max(counts[filled].min(), 1) > 20:
        ax_count.set_yscale("log")
    ax_count.set_xlabel("Confidence (highest predicted probability)")
    ax_count.set_ylabel("Predictions")
    ax_count.grid(alpha=0.3)
    for a in (ax, ax_count):
        a.xaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    return _save(fig, path)


def compare_curves(
    curves: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, metric: str = "val_acc"
) -> Path:
    """One line per run of ``metric`` (a history column) against the epoch."""
    fig = Figure(figsize=(8.5, 5), layout="constrained")
    ax = fig.subplots()
    plotted = 0
    for name, history in curves.items():
        values = _column(history, metric)
        if not len(values) or np.isnan(values).all():
            continue
        epochs = _column(history, "epoch")
        if np.isnan(epochs).any():
            epochs = np.arange(1, len(history) + 1, dtype=np.float64)
        ax.plot(epochs, values, marker="o" if len(values) <= 30 else None, markersize=3.5, label=str(name))
        plotted += 1
    if not plotted:
        raise ValueError(f"no run has values for '{metric}'")
    label = METRIC_LABELS.get(metric, metric)
    if _is_accuracy(metric):
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    if metric == "lr":
        ax.set_yscale("log")
    ax.set_xlabel("Epoch")
    ax.set_ylabel(label[0].upper() + label[1:])
    _epoch_axis(ax, np.concatenate([line.get_xdata() for line in ax.get_lines()]))
    ax.set_title(f"Comparison of runs: {label}", fontsize=13)
    ax.grid(alpha=0.3)
    ax.legend(title="run", fontsize=9)
    return _save(fig, path)
