"""Look inside a trained model (notebook 000, tasks 1.3 and 2.2; CNN filters; saliency).

- Softmax regression: one weight per pixel and class, so each class has a 28x28 *template*: ink on
  a positive weight speaks for the class, ink on a negative weight against it.
- MLP: each first-layer unit is such a mask (a learned feature); the hidden-to-output weights say
  how much each feature counts for each class. For one image, a feature's *contribution* to a
  class is its activation times the gradient of the class logit with respect to it, which with
  one hidden layer is exactly activation x outgoing weight (the notebook's picture) and the
  contributions then add up to the logit minus the output bias.
- CNN: the first layer's filters and the feature maps they produce for one image.
- Any model: gradient x input (measured from a blank image, see ``saliency``) and occlusion.

Inputs ``x`` are what the model sees: the run's scaler applied to the uint8 image,
``Predictor.scaler.transform(img)``, as (H, W), (1, H, W) or (1, 1, H, W).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import nn

from digitlab import plots
from digitlab.errors import ConfigError, ImageError

DIVERGING = "RdBu_r"  # red: positive weight, blue: negative; white is zero
MAX_TILES = 100  # masks or maps drawn at most (a 300-unit layer would make an unreadable wall)


# --- model structure ------------------------------------------------------------------------------


def _weighted_layers(model: nn.Module) -> list[nn.Module]:
    """Linear and Conv2d layers in registration order, which is the forward order for every model
    in ``digitlab.models`` (Sequentials, and ResNets whose stem is registered first)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


def model_kind(model: nn.Module) -> str:
    """'linear' (one dense layer on the pixels), 'mlp' (dense layers only) or 'cnn' (starts with a conv)."""
    layers = _weighted_layers(model)
    if not layers:
        raise ConfigError(f"Model {type(model).__name__} has no Linear or Conv2d layer to explain.")
    if isinstance(layers[0], nn.Conv2d):
        return "cnn"
    if any(isinstance(m, nn.Conv2d) for m in layers):
        raise ConfigError("Models that start with a dense layer and then convolve are not supported by explain.")
    return "linear" if len(layers) == 1 else "mlp"


def whose_layers(model: nn.Module) -> str:
    """Whose layers the filter, mask and map figures show: '' for one model; for an ensemble (the bundled
    reader) its first member's, which ``_weighted_layers`` meets first, and the figures say so."""
    members = getattr(model, "members", None)
    if members is None or len(members) < 2:
        return ""
    name = getattr(members[0], "spec", {}).get("name", type(members[0]).__name__)
    return f" of member 1 of {len(members)} ({name})"


def _input_hw(model: nn.Module, fallback: int) -> tuple[int, int]:
    spec = getattr(model, "spec", None)
    if spec:
        return int(spec["input_shape"][1]), int(spec["input_shape"][2])
    side = math.isqrt(fallback)
    return side, fallback // side


def _as_input(model: nn.Module, x: Any) -> torch.Tensor:
    """(H, W), (1, H, W) or (1, 1, H, W) floats to a (1, 1, H, W) tensor on the model's device."""
    t = torch.as_tensor(x, dtype=torch.float32)
    while t.ndim < 4:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[0] != 1:
        raise ValueError(f"x must be one scaled image (H, W) or (1, 1, H, W), got shape {tuple(t.shape)}")
    param = next(model.parameters())
    return t.to(param.device)


def first_layer_masks(model: nn.Module) -> np.ndarray:
    """The first dense layer's weights, one (H, W) mask per unit: (units, H, W)."""
    first = _weighted_layers(model)[0] if _weighted_layers(model) else None
    if not isinstance(first, nn.Linear):
        raise ConfigError("first_layer_masks needs a model whose first layer is dense (logreg or mlp).")
    w = first.weight.detach().cpu().float().numpy()
    h, wd = _input_hw(model, w.shape[1])
    if h * wd != w.shape[1]:  # a multi-channel input: show the first channel
        w = w[:, : h * wd]
    return w.reshape(len(w), h, wd)


def class_templates(model: nn.Module) -> np.ndarray:
    """Softmax regression's weights as one (H, W) template per class: (K, H, W)."""
    if model_kind(model) != "linear":
        raise ConfigError("class_templates needs a softmax-regression model (logreg); use first_layer_masks.")
    return first_layer_masks(model)


def hidden_to_output(model: nn.Module) -> np.ndarray:
    """Weights from the last hidden layer to the classes, (units, K). With one hidden layer (notebook 000)
    the units are the first-layer features of ``first_layer_masks``."""
    if model_kind(model) != "mlp":
        raise ConfigError("hidden_to_output needs an MLP (a model of dense layers with a hidden layer).")
    return _weighted_layers(model)[-1].weight.detach().cpu().float().numpy().T


def _split_after_first_activation(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """An MLP as (pixels -> first hidden activations, activations -> logits)."""
    if not isinstance(model, nn.Sequential):
        raise ConfigError("feature_contributions needs a sequential MLP such as digitlab's 'mlp'.")
    children = list(model.children())
    first = next(i for i, m in enumerate(children) if isinstance(m, nn.Linear))
    cut = first + 1
    # The activation right after the first dense layer belongs to the features.
    if cut < len(children) and not isinstance(children[cut], nn.Linear | nn.Dropout):
        cut += 1
    return nn.Sequential(*children[:cut]), nn.Sequential(*children[cut:])


def feature_contributions(model: nn.Module, x: Any) -> dict[str, np.ndarray]:
    """For one image: first-layer ``activations`` (units,), ``contributions`` (K, units) = activation x
    d logit / d activation, ``logits`` and ``probs`` (K,). Positive contributions speak for a class."""
    if model_kind(model) != "mlp":
        raise ConfigError("feature_contributions needs an MLP (a model of dense layers with a hidden layer).")
    head, tail = _split_after_first_activation(model)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            h = head(_as_input(model, x)).detach()[0]
            jac = torch.autograd.functional.jacobian(lambda a: tail(a[None])[0], h)  # (K, units)
            logits = tail(h[None])[0].detach()
    finally:
        model.train(was_training)
    return {
        "activations": h.cpu().numpy(),
        "contributions": (jac * h[None]).cpu().numpy(),
        "logits": logits.cpu().numpy(),
        "probs": torch.softmax(logits, 0).cpu().numpy(),
    }


def first_layer_filters(model: nn.Module) -> np.ndarray:
    """The first convolution's kernels on the (first) input channel: (filters, k, k)."""
    first = _weighted_layers(model)[0]
    if not isinstance(first, nn.Conv2d):
        raise ConfigError("first_layer_filters needs a CNN (a model whose first layer is a convolution).")
    return first.weight.detach().cpu().float().numpy()[:, 0]


def feature_maps(model: nn.Module, x: Any) -> np.ndarray:
    """The first convolution's feature maps for one image, after its activation when it has one
    (conv -> [BatchNorm] -> ReLU): (filters, h, w)."""
    leaves = [m for m in model.modules() if not list(m.children())]
    conv = next((i for i, m in enumerate(leaves) if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ConfigError("feature_maps needs a CNN (a model with a convolution).")
    target = leaves[conv]
    for m in leaves[conv + 1 : conv + 3]:  # the BatchNorm and/or the activation right after it
        if isinstance(m, nn.ReLU | nn.GELU | nn.Tanh | nn.Sigmoid | nn.LeakyReLU):
            target = m
            break
    captured: list[torch.Tensor] = []
    hook = target.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().clone()))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(_as_input(model, x))
    finally:
        hook.remove()
        model.train(was_training)
    return captured[0][0].float().cpu().numpy()


def _probs(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(batch).float(), 1)


def saliency(
    model: nn.Module, x: Any, method: str = "grad-x-input", target: int | None = None, baseline: Any = None
) -> np.ndarray:
    """Which pixels drive the logit of ``target`` (default: the predicted class), as (H, W).

    ``gradient``: d logit / d pixel. ``grad-x-input``: gradient x (x - baseline), where ``baseline``
    is the scaled blank image (default zeros); with a scaler that does not map a blank pixel to 0
    (mean-std), measuring from the blank keeps the background at zero, as with raw pixels.
    ``occlusion``: see ``occlusion``.
    """
    if method == "occlusion":
        return occlusion(model, x, target=target, baseline=baseline)
    if method not in ("gradient", "grad-x-input"):
        raise ConfigError(f"Unknown saliency method '{method}': use gradient, grad-x-input or occlusion.")
    inp = _as_input(model, x)
    base = torch.zeros_like(inp) if baseline is None else _as_input(model, baseline)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            inp = inp.clone().requires_grad_(True)
            logits = model(inp).float()
            k = int(logits.argmax(1)) if target is None else int(target)
            (grad,) = torch.autograd.grad(logits[0, k], inp)
    finally:
        model.train(was_training)
    out = grad if method == "gradient" else grad * (inp.detach() - base)
    return out[0, 0].cpu().numpy()


def occlusion(
    model: nn.Module,
    x: Any,
    patch: int = 4,
    stride: int | None = None,
    target: int | None = None,
    baseline: Any = None,
) -> np.ndarray:
    """How much the probability of ``target`` (default: the predicted class) drops when a
    ``patch`` x ``patch`` square around each pixel is blanked (set to ``baseline``, default zeros),
    averaged over the squares that cover the pixel: (H, W). Positive: the pixel's region speaks for
    the class. All squares go through the model in batches."""
    if patch < 1:
        raise ConfigError(f"The occlusion patch must be at least 1 pixel, got {patch}.")
    inp = _as_input(model, x)
    base = torch.zeros_like(inp) if baseline is None else _as_input(model, baseline)
    h, w = inp.shape[2:]
    patch = min(patch, h, w)
    stride = stride or max(1, patch // 2)
    tops = sorted({*range(0, h - patch + 1, stride), h - patch})
    lefts = sorted({*range(0, w - patch + 1, stride), w - patch})
    windows = [(t, left) for t in tops for left in lefts]
    was_training = model.training
    model.eval()
    try:
        p0 = _probs(model, inp)[0]
        k = int(p0.argmax()) if target is None else int(target)
        drops = []
        for i in range(0, len(windows), 256):
            chunk = windows[i : i + 256]
            batch = inp.repeat(len(chunk), 1, 1, 1)
            for j, (t, left) in enumerate(chunk):
                batch[j, :, t : t + patch, left : left + patch] = base[0, :, t : t + patch, left : left + patch]
            drops.append(p0[k] - _probs(model, batch)[:, k])
    finally:
        model.train(was_training)
    drop = torch.cat(drops).cpu().numpy()
    heat, count = np.zeros((h, w)), np.zeros((h, w))
    for d, (t, left) in zip(drop, windows, strict=True):
        heat[t : t + patch, left : left + patch] += d
        count[t : t + patch, left : left + patch] += 1
    return heat / np.maximum(count, 1)


# --- figures --------------------------------------------------------------------------------------


def _symmetric(values: np.ndarray) -> float:
    v = float(np.nanmax(np.abs(values))) if values.size else 0.0
    return v if v > 0 else 1.0


def _upscale(tiles: np.ndarray, min_side: int = 24) -> np.ndarray:
    """Tiny kernels (3x3, 5x5) repeated pixel by pixel so that they draw as tiles, not specks."""
    f = max(1, math.ceil(min_side / max(tiles.shape[1:3])))
    return tiles.repeat(f, axis=1).repeat(f, axis=2) if f > 1 else tiles


def _unit_grid(n: int) -> int:
    return max(1, math.ceil(math.sqrt(n)))


def weights_figure(model: nn.Module, classes: list[str], path: str | Path) -> Path:
    """The one picture of what a model learned: class templates (logreg), first-layer masks (MLP)
    or first-layer filters (CNN), all on one symmetric diverging colour scale."""
    kind = model_kind(model)
    if kind == "linear":
        w = class_templates(model)
        v = _symmetric(w)
        return plots.image_grid(
            w, [str(c) for c in classes], path, ncols=5, cmap=DIVERGING, vmin=-v, vmax=v, colorbar=True,
            colorbar_label="weight", suptitle="Class templates: ink on red speaks for the class, on blue against",
        )
    whose = whose_layers(model)
    if kind == "mlp":
        w = first_layer_masks(model)
        n = min(len(w), MAX_TILES)
        v = _symmetric(w[:n])
        shown = f" (first {n} of {len(w)})" if n < len(w) else ""
        return plots.image_grid(
            w[:n], [f"z{i + 1}" for i in range(n)], path, ncols=_unit_grid(n), cmap=DIVERGING, vmin=-v, vmax=v,
            colorbar=True, colorbar_label="weight from the pixel", cell=0.9,
            suptitle=f"First-layer units{whose} as masks{shown}",
        )
    f = first_layer_filters(model)
    n = min(len(f), MAX_TILES)
    v = _symmetric(f[:n])
    k = f.shape[-1]
    return plots.image_grid(
        _upscale(f[:n]), [f"f{i + 1}" for i in range(n)], path, ncols=min(8, n), cmap=DIVERGING, vmin=-v, vmax=v,
        colorbar=True, colorbar_label="kernel weight", cell=0.75,
        suptitle=(f"First-layer filters{whose} ({k}x{k}, {len(f)} in all)" if n < len(f)
                  else f"First-layer filters{whose} ({k}x{k})"),
    )


def hidden_to_output_figure(model: nn.Module, classes: list[str], path: str | Path) -> Path:
    """Heat map of the hidden-to-output weights: one row per hidden unit, one column per class."""
    w = hidden_to_output(model)
    units = len(w)
    v = _symmetric(w)
    row = 0.24 if units <= 40 else 0.1
    height = max(3.5, units * row + 1.4)
    width = max(5.5, 0.55 * len(classes) + 2.6)
    longest = max(len(str(c)) for c in classes)
    bottom = 0.6 + (0.065 * longest if longest * len(classes) > 40 else 0.1)  # slanted labels need room
    height += bottom - 0.85
    fig = Figure(figsize=(width, height))
    plots._margins(fig, left=0.8, right=1.3, top=0.55, bottom=bottom)
    ax = fig.subplots()
    im = ax.imshow(w, cmap=DIVERGING, vmin=-v, vmax=v, aspect="auto", interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax, fraction=0.5 / width, pad=0.03)
    cbar.set_label("weight (+: the unit speaks for the class)")
    ax.set_xticks(range(len(classes)), [str(c) for c in classes])
    plots._rotate_long_labels(ax, classes, 40)
    step = 1 if units <= 40 else 10
    layers = _weighted_layers(model)
    prefix = "z" if len(layers) == 2 else f"h{len(layers) - 1}."
    ax.set_yticks(range(0, units, step), [f"{prefix}{i + 1}" for i in range(0, units, step)])
    ax.set_xlabel("Class")
    ax.set_ylabel("Hidden unit" + ("" if len(layers) == 2 else " (last hidden layer)"))
    ax.set_title("Hidden-to-output weights", fontsize=13)
    return plots._save(fig, path)


def active_features_figure(model: nn.Module, x: Any, path: str | Path, label: str = "the image") -> Path:
    """The first-layer masks, each as opaque as its unit is active for this image (notebook 000, 2.2.3)."""
    masks = first_layer_masks(model)
    act = feature_contributions(model, x)["activations"]
    n = min(len(masks), MAX_TILES)
    order = np.argsort(-np.abs(act), kind="stable")[:n] if n < len(masks) else np.arange(n)
    strength = np.abs(act[order]) / _symmetric(act)
    v = _symmetric(masks[order])
    return plots.image_grid(
        masks[order], [f"z{i + 1}: {act[i]:.2f}" for i in order], path, ncols=_unit_grid(n), cmap=DIVERGING,
        vmin=-v, vmax=v, colorbar=True, colorbar_label="weight from the pixel", alphas=strength, cell=0.9,
        suptitle=f"Which features are active for {label}? (opacity = activation"
        + (f"; the {n} most active of {len(masks)} units)" if n < len(masks) else ")"),
    )


def contributions_figure(
    model: nn.Module, x: Any, classes: list[str], path: str | Path, true: int | None = None, max_units: int = 64
) -> Path:
    """Per class, the features that speak for it (green) or against it (red): activation x outgoing
    weight, opacity = strength (on one scale for all classes, so the predicted class stands out)."""
    masks = first_layer_masks(model)
    info = feature_contributions(model, x)
    contrib, probs = info["contributions"], info["probs"]
    units = np.arange(len(masks))
    if len(units) > max_units:  # the most active units: inactive ReLU units contribute nothing
        units = np.sort(np.argsort(-np.abs(info["activations"]), kind="stable")[:max_units])
    v = _symmetric(masks[units])
    strength = np.abs(contrib[:, units]) / _symmetric(contrib[:, units])
    green, red = colormaps["Greens"], colormaps["Reds"]
    scaled = (masks[units] + v) / (2 * v)  # the mask's weights, dark where most positive
    ncols = _unit_grid(len(units))
    panels, titles, colors = [], [], []
    pred = int(np.argmax(probs))
    for c in range(len(classes)):
        tiles = np.where((contrib[c, units] >= 0)[:, None, None, None], green(scaled), red(scaled))
        # Blend over a light grey slot, so that silent features still show where they sit in the grid.
        a = strength[c][:, None, None, None]
        tiles[..., :3] = a * tiles[..., :3] + (1 - a) * 0.93
        tiles[..., 3] = 1.0
        panel, _ = plots.mosaic(tiles, ncols, gap=2)
        panels.append(panel)
        pos, neg = contrib[c, units][contrib[c, units] > 0].sum(), contrib[c, units][contrib[c, units] < 0].sum()
        mark = " (true)" if true == c else ""
        titles.append(f"{classes[c]}{mark}: p = {probs[c]:.2f}\nfor {pos:+.1f}, against {neg:+.1f}")
        right = true is None or pred == true
        colors.append((plots.RIGHT if right else plots.WRONG) if c == pred else "black")
    return plots.image_grid(
        np.stack(panels), titles, path, ncols=5, cell=2.4, gap=0.3, title_colors=colors,
        suptitle="Features for (green) and against (red) each class: activation x weight, "
        "opacity = strength (grey: silent)"
        + (f"\nthe {len(units)} most active of {len(masks)} first-layer units" if len(units) < len(masks) else ""),
    )


def input_figure(
    image: np.ndarray, probs: np.ndarray, classes: list[str], path: str | Path, title: str, max_value: float = 255
) -> Path:
    """The image the model saw (uint8, full scale ``max_value``) and its class probabilities."""
    k = len(classes)
    fig = Figure(figsize=(8.0, max(3.2, 0.28 * k + 1.2)))
    plots._margins(fig, left=0.3, right=0.3, top=0.6, bottom=0.55, wspace=0.35)
    ax_img, ax_p = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    ax_img.imshow(image, cmap="gray", vmin=0, vmax=max_value,
                  interpolation="nearest")
    ax_img.set_axis_off()
    ax_img.set_title("Model input", fontsize=11)
    pred = int(np.argmax(probs))
    ax_p.barh(range(k), probs, color=[plots.RIGHT if i == pred else "#8c8c8c" for i in range(k)])
    ax_p.set_yticks(range(k), [str(c) for c in classes])
    ax_p.invert_yaxis()
    ax_p.set_xlim(0, 1)
    ax_p.set_xlabel("Probability")
    ax_p.set_title("Class probabilities", fontsize=11)
    ax_p.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=13)
    return plots._save(fig, path)


def feature_maps_figure(model: nn.Module, x: Any, path: str | Path, label: str = "the image") -> Path:
    """The first convolution's feature maps for one image, on one shared scale."""
    maps = feature_maps(model, x)
    n = min(len(maps), MAX_TILES)
    lo, hi = float(maps[:n].min()), float(maps[:n].max())
    diverging = lo < 0  # no ReLU after the conv: show the sign
    v = _symmetric(maps[:n])
    return plots.image_grid(
        maps[:n], [f"f{i + 1}" for i in range(n)], path, ncols=min(8, n),
        cmap=DIVERGING if diverging else "viridis", vmin=-v if diverging else 0.0, vmax=v if diverging else hi,
        colorbar=True, colorbar_label="activation", cell=1.0,
        suptitle=f"First-layer feature maps{whose_layers(model)} for {label} ({maps.shape[1]}x{maps.shape[2]})",
    )


def saliency_figure(
    model: nn.Module, x: Any, image: np.ndarray, classes: list[str], path: str | Path,
    baseline: Any = None, target: int | None = None, patch: int | None = None, max_value: float = 255,
) -> Path:
    """Input, gradient x input and occlusion for one image and one class, side by side. The occlusion
    patch defaults to 4 pixels on 28x28 images, in proportion on others (2 on 8x8 digits)."""
    patch = patch or max(2, round(4 * image.shape[0] / 28))
    probs = _probs(model, _as_input(model, x))[0].cpu().numpy()
    k = int(np.argmax(probs)) if target is None else int(target)
    gxi = saliency(model, x, "grad-x-input", target=k, baseline=baseline)
    occ = occlusion(model, x, patch=patch, target=k, baseline=baseline)
    # Three 3.3-inch squares, the two heat maps with a colour bar and its label on their right.
    side, width, height = 3.3, 13.6, 4.5
    fig = Figure(figsize=(width, height))
    lefts = (0.25, 0.25 + side + 0.6, 0.25 + 2 * side + 2.1)
    axes = [fig.add_axes((x0 / width, 0.3 / height, side / width, side / height)) for x0 in lefts]
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=max_value,
                   interpolation="nearest")
    axes[0].set_title("Input", fontsize=11)
    panels = (
        (axes[1], gxi, f"Gradient x input (logit of {classes[k]})", "contribution to the logit"),
        (axes[2], occ, f"Occlusion ({patch}x{patch} patches)", f"drop in p({classes[k]}) when hidden"),
    )
    for ax, values, title, label in panels:
        v = _symmetric(values)
        im = ax.imshow(values, cmap=DIVERGING, vmin=-v, vmax=v, interpolation="nearest")
        # The digit's outline on top, so that the heat can be placed.
        ax.contour(image.astype(np.float64), levels=[0.5 * float(image.max() or 1)], colors="black",
                   linewidths=0.6, alpha=0.6)
        pos = ax.get_position()
        cax = fig.add_axes((pos.x1 + 0.12 / width, pos.y0, 0.15 / width, pos.height))
        cbar = fig.colorbar(im, cax=cax)
        cbar.set_label(label)
        ax.set_title(title, fontsize=11)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(f"What makes the model say {classes[k]} (p = {probs[k]:.2f})? Red: for, blue: against",
                 fontsize=13)
    return plots._save(fig, path)


# --- a run ----------------------------------------------------------------------------------------


def _load_image(run: Any, predictor: Any, image: int | str | Path | None) -> tuple[np.ndarray, int | None, str]:
    """(uint8 image, true label or None, description) for a test-set index or an image file."""
    from digitlab.evaluate import load_split

    if image is None:
        image = 0
    if isinstance(image, str) and image.strip().isdigit():
        image = int(image)
    if isinstance(image, int | np.integer):
        x, y, _ = load_split(run, "test")
        if not 0 <= int(image) < len(x):
            raise ConfigError(f"Image index {image} is outside the test set (0..{len(x) - 1}): pick one in range.")
        return x[int(image)], int(y[int(image)]), f"test image #{int(image)}"
    from digitlab.preprocess import preprocess

    path = Path(image)
    if not path.is_file():
        raise ImageError(f"Image file '{path}' does not exist: give a test-set index or the path of an image.")
    return preprocess(path, predictor.target), None, f"'{path.name}'"


def explain_run(run: Any, image: int | str | Path | None = None, out: str | Path | None = None) -> dict[str, Path]:
    """All explanation figures of a run for one image (a test-set index, default 0, or an image file),
    written to ``out`` (default RUN/figures/explain). Returns {figure name: PNG path}."""
    from digitlab.predict import Predictor
    from digitlab.runs import Run

    run = run if isinstance(run, Run) else Run.load(run)
    predictor = Predictor.from_run(run.path)
    model, classes = predictor.model, predictor.classes
    out = Path(out) if out is not None else run.path / "figures" / "explain"
    out.mkdir(parents=True, exist_ok=True)
    img, true, label = _load_image(run, predictor, image)
    if img.shape != tuple(predictor.input_shape[1:]):
        raise ImageError(f"The image is {img.shape[0]}x{img.shape[1]} but the model takes "
                         f"{predictor.input_shape[1]}x{predictor.input_shape[2]}: use a test index or an image file.")
    x = predictor.scaler.transform(img[None])[0]
    blank = predictor.scaler.transform(np.zeros_like(img)[None])[0]
    probs = predictor.predict_proba(img[None])[0]
    pred = int(np.argmax(probs))
    truth = f"true {classes[true]}, " if true is not None else ""
    title = f"{label}: {truth}predicted {classes[pred]} (p = {probs[pred]:.2f})"

    max_value = float(predictor.meta.get("max_value", 255))
    figures = {"input": input_figure(img, probs, classes, out / "input.png", title, max_value)}
    kind = model_kind(model)
    figures["weights"] = weights_figure(model, classes, out / ("templates.png" if kind == "linear" else
                                                                "masks.png" if kind == "mlp" else "filters.png"))
    if kind == "mlp":
        figures["hidden_to_output"] = hidden_to_output_figure(model, classes, out / "hidden_to_output.png")
        figures["active_features"] = active_features_figure(model, x, out / "active_features.png", label)
        figures["contributions"] = contributions_figure(model, x, classes, out / "contributions.png", true)
    if kind == "cnn":
        figures["feature_maps"] = feature_maps_figure(model, x, out / "feature_maps.png", label)
    figures["saliency"] = saliency_figure(model, x, img, classes, out / "saliency.png", baseline=blank,
                                          max_value=max_value)
    return figures
