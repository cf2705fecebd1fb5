"""The model registry: every architecture digitlab can train, by name, with its options.

``build_model(name, input_shape, num_classes, **options)`` returns an ``nn.Module`` that takes float
``(N, C, H, W)`` input and returns logits ``(N, num_classes)``. The module carries ``.spec`` (name,
input shape, classes and every effective option, all JSON-able), so a run folder can rebuild it.

Options are the keyword-only arguments of each builder; their defaults fix their types, so
``hidden="300,100"`` from the command line becomes ``[300, 100]`` before the builder sees it.

Small inputs (the 8x8 ``digits``): every model adapts instead of failing. Convolution stacks track
the feature-map size while they are built and leave out a 2x2 max-pool when the map is already
smaller than 2x2 (for example cnn-small on 8x8: 8 -> conv 6 -> pool 3 -> conv 1, second pool left
out); the flatten size follows from the tracked size. The ResNets end in adaptive average pooling and
use padded convolutions, so any size works. The channel count always comes from ``input_shape``.

This module imports nothing from training: the dependency points the other way.
"""

from __future__ import annotations

import html
import inspect
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from digitlab.errors import ConfigError

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    builder: Builder
    defaults: dict[str, Any] = field(default_factory=dict)  # the builder's options and their defaults
    # Training defaults (TrainConfig fields over the fast recipe) used when the model is named without a
    # recipe: plain data, so this module still imports nothing from training.
    train_defaults: dict[str, Any] = field(default_factory=dict)


MODELS: dict[str, ModelInfo] = {}

_OPTION_TYPES = (bool, int, float, str, tuple)


def register_model(name: str, description: str, train: dict[str, Any] | None = None) -> Callable[[Builder], Builder]:
    """Register ``builder(input_shape, num_classes, *, option=default, ...) -> nn.Module`` as ``name``.

    Options must be keyword-only with a default of type bool, int, float, str or tuple of ints
    (a tuple default becomes a list option). ``train`` holds the model's training defaults: the
    TrainConfig fields that ``digitlab train --model NAME`` (no ``--recipe``) changes from the fast
    recipe, which suits convolutional networks.
    """

    def decorate(builder: Builder) -> Builder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        defaults = {}
        for param in list(inspect.signature(builder).parameters.values())[2:]:
            if param.kind is not inspect.Parameter.KEYWORD_ONLY or not isinstance(
                param.default, _OPTION_TYPES
            ):
                raise TypeError(f"option {param.name!r} of model {name!r} needs a keyword-only default")
            defaults[param.name] = param.default
        MODELS[name] = ModelInfo(name, description, builder, defaults, dict(train or {}))
        return builder

    return decorate


# --- options --------------------------------------------------------------------------------------


def parse_options(items: Iterable[str] | None) -> dict[str, Any]:
    """Parse ``["hidden=300,100", "dropout=0.2", "activation=tanh"]`` into typed values.

    Numbers become int or float, ``true``/``false`` bool, comma lists (optionally in brackets)
    lists; anything else stays a string. Dashes in keys become underscores.
    """
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"Model option '{item}' is not key=value: write it like hidden=300,100 or dropout=0.2.")
        options[key] = _parse_value(raw.strip())
    return options


def _parse_value(raw: str) -> Any:
    if raw.startswith("[") and raw.endswith("]"):
        raw = raw[1:-1]
        return [parse_scalar(part.strip()) for part in raw.split(",") if part.strip()]
    if "," in raw:
        return [parse_scalar(part.strip()) for part in raw.split(",") if part.strip()]
    return parse_scalar(raw)


def parse_scalar(raw: str) -> Any:
    """One option value from text: true/false, an int, a float, else the string itself."""
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _coerce(model: str, key: str, value: Any, default: Any) -> Any:
    """Bring ``value`` to the type of ``default`` or raise a ConfigError naming the option."""

    def fail(kind: str) -> ConfigError:
        shown = _json_default(default)
        return ConfigError(f"Option {key}={value!r} of model '{model}' must be {kind} (default {shown!r}).")

    def as_int(v: Any) -> int:
        if isinstance(v, bool):
            raise TypeError
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, int):
            return v
        if isinstance(v, str):
            return int(v.strip())
        raise TypeError

    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if value in (0, 1):
            return bool(value)
        raise fail("true or false")
    if isinstance(default, int):
        try:
            return as_int(value)
        except (TypeError, ValueError):
            raise fail("an integer") from None
    if isinstance(default, float):
        if isinstance(value, bool):
            raise fail("a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise fail("a number") from None
        if not math.isfinite(number):
            raise fail("a finite number")
        return number
    if isinstance(default, str):
        if not isinstance(value, str):
            raise fail("a string")
        return value.strip().lower()
    # tuple default: a list of ints, given as a list, a single int or a comma string
    if isinstance(value, str):
        value = _parse_value(value.strip())
        value = value if isinstance(value, list) else [value] if value != "" else []
    elif not isinstance(value, list | tuple):
        value = [value]
    try:
        return [as_int(v) for v in value]
    except (TypeError, ValueError):
        raise fail("a list of integers like 300,100") from None


def _check(model: str, ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(f"Model '{model}': {message}")


# --- building -------------------------------------------------------------------------------------


def _canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key not in MODELS:
        raise ConfigError(f"Unknown model '{name}': choose one of {', '.join(MODELS)}.")
    return key


def _check_input_shape(input_shape: Any) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(
            f"Input shape {input_shape!r} is not (channels, height, width) with positive sizes: use e.g. 1,28,28."
        )
    return shape  # type: ignore[return-value]


def build_model(
    name: str, input_shape: Iterable[int] = (1, 28, 28), num_classes: int = 10, **options: Any
) -> nn.Module:
    """Build a registered model; the result carries ``.spec`` to rebuild it exactly."""
    key = _canonical_name(name)
    info = MODELS[key]
    shape = _check_input_shape(input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes={num_classes!r} is invalid: a classifier needs an integer of at least 2.")
    unknown = sorted(set(options) - set(info.defaults))
    if unknown:
        valid = ", ".join(info.defaults) if info.defaults else "none"
        raise ConfigError(f"Model '{key}' has no option '{unknown[0]}': its options are {valid}.")
    effective = {}
    for opt, default in info.defaults.items():
        effective[opt] = _coerce(key, opt, options[opt], default) if opt in options else _json_default(default)
    model = info.builder(shape, num_classes, **effective)
    model.spec = {"name": key, "input_shape": list(shape), "num_classes": num_classes, "options": effective}
    return model


def _json_default(default: Any) -> Any:
    return list(default) if isinstance(default, tuple) else default


_PARAMS_CACHE: dict[str, int] = {}


def list_models() -> list[dict[str, Any]]:
    """Name, description, default options and parameter count on 1x28x28 input of every model."""
    rows = []
    for name, info in MODELS.items():
        if name not in _PARAMS_CACHE:
            # Parameters on the meta device hold no memory, so even ResNet50 is counted instantly.
            with torch.device("meta"):
                _PARAMS_CACHE[name] = count_parameters(build_model(name), trainable_only=False)
        rows.append(
            {
                "name": name,
                "description": info.description,
                "parameters_28x28": _PARAMS_CACHE[name],
                "options": {k: _json_default(v) for k, v in info.defaults.items()},
            }
        )
    return rows


# --- inspection -----------------------------------------------------------------------------------


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_summary(model: nn.Module, input_shape: Iterable[int] | None = None) -> list[dict[str, Any]]:
    """One row per leaf-module call on a dummy batch of one: layer, type, output_shape, params.

    ``output_shape`` leaves out the batch dimension. A module called twice gets two rows but its
    parameters count once, so the params column always adds up to ``count_parameters(model, False)``.
    """
    shape = _summary_shape(model, input_shape)
    rows: list[dict[str, Any]] = []
    seen: set[int] = set()
    hooks = []

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, _inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, tuple | list) else output
            params = 0 if id(module) in seen else sum(p.numel() for p in module.parameters(recurse=False))
            seen.add(id(module))
            rows.append(
                {
                    "layer": name,
                    "type": type(module).__name__,
                    "output_shape": list(out.shape[1:]) if isinstance(out, torch.Tensor) else None,
                    "params": params,
                }
            )

        return hook

    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    for name, module in leaves:
        hooks.append(module.register_forward_hook(record(name or type(module).__name__)))
    first = next(model.parameters(), None)
    dummy = torch.zeros(1, *shape, device=first.device if first is not None else "cpu",
                        dtype=first.dtype if first is not None else torch.float32)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(dummy)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    # Parameters of modules the forward pass never reached still belong in the totals.
    for name, module in leaves:
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if id(module) not in seen and own:
            rows.append({"layer": name, "type": type(module).__name__, "output_shape": None, "params": own})
    return rows


def _summary_shape(model: nn.Module, input_shape: Iterable[int] | None) -> tuple[int, int, int]:
    if input_shape is None:
        spec = getattr(model, "spec", None)
        input_shape = spec["input_shape"] if spec else (1, 28, 28)
    return _check_input_shape(input_shape)


class ModelSummary(str):
    """``format_summary``'s text (a ``str``: print it, compare it) that Jupyter shows as an HTML table.

    ``rows`` are ``model_summary``'s rows; ``total``, ``trainable`` and ``buffers`` the counts.
    """

    title: str
    rows: list[dict[str, Any]]
    total: int
    trainable: int
    buffers: int

    def _repr_html_(self) -> str:
        def shape(r: dict[str, Any]) -> str:
            return "?" if r["output_shape"] is None else "(None, " + ", ".join(map(str, r["output_shape"])) + ")"

        body = "".join(
            f"<tr><td style='text-align:left'>{html.escape(r['layer'])} ({html.escape(r['type'])})</td>"
            f"<td style='text-align:left'>{shape(r)}</td><td>{r['params']:,}</td></tr>"
            for r in self.rows
        )
        foot = (f"Total params: <b>{self.total:,}</b> &middot; trainable: {self.trainable:,} &middot; "
                f"non-trainable: {self.total - self.trainable:,}"
                + (f" &middot; BatchNorm buffers (not counted): {self.buffers:,}" if self.buffers else ""))
        return (f"<div><b>Model: {html.escape(self.title)}</b><table><thead><tr><th style='text-align:left'>"
                "Layer (type)</th><th style='text-align:left'>Output Shape</th><th>Param #</th></tr></thead>"
                f"<tbody>{body}</tbody></table><div>{foot}</div></div>")


def format_summary(model: nn.Module, input_shape: Iterable[int] | None = None) -> ModelSummary:
    """A Keras-style ``model.summary()`` table as plain text (an HTML table in Jupyter)."""
    rows = model_summary(model, input_shape)
    spec = getattr(model, "spec", None)
    title = spec["name"] if spec else type(model).__name__
    cells = [
        (
            f"{r['layer']} ({r['type']})",
            "?" if r["output_shape"] is None else "(None, " + ", ".join(map(str, r["output_shape"])) + ")",
            f"{r['params']:,}",
        )
        for r in rows
    ]
    head = ("Layer (type)", "Output Shape", "Param #")
    w0 = max(len(c[0]) for c in [head, *cells]) + 2
    w1 = max(len(c[1]) for c in [head, *cells]) + 2
    width = w0 + w1 + max(len(c[2]) for c in [head, *cells]) + 1
    total = count_parameters(model, trainable_only=False)
    trainable = count_parameters(model)
    buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    lines = [f'Model: "{title}"', "_" * width, f" {head[0]:<{w0}}{head[1]:<{w1}}{head[2]}", "=" * width]
    lines += [f" {a:<{w0}}{b:<{w1}}{c}" for a, b, c in cells]
    lines += [
        "=" * width,
        f"Total params: {total:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {total - trainable:,}",
    ]
    if buffers:
        lines.append(f"Buffers (BatchNorm running statistics, not counted above): {buffers:,}")
    lines.append("_" * width)
    summary = ModelSummary("\n".join(lines))
    summary.title, summary.rows, summary.total, summary.trainable, summary.buffers = (
        title, rows, total, trainable, buffers)
    return summary


# --- initialization -------------------------------------------------------------------------------

INIT_SCHEMES = ("default", "glorot-uniform", "he-normal", "truncated-normal", "normal", "zeros")


def init_weights(model: nn.Module, scheme: str = "default", std: float | None = None) -> nn.Module:
    """Re-initialize every Linear and Conv layer in place; biases start at zero as in Keras.

    ``default`` keeps the framework's initialization. ``std`` applies to ``normal`` and
    ``truncated-normal`` (default 0.05; the truncation is at two standard deviations, like Keras'
    TruncatedNormal). Normalization layers always restart at weight 1, bias 0.
    """
    key = str(scheme).strip().lower().replace("_", "-")
    if key not in INIT_SCHEMES:
        raise ConfigError(f"Unknown initialization '{scheme}': choose one of {', '.join(INIT_SCHEMES)}.")
    if std is not None and key not in ("normal", "truncated-normal"):
        raise ConfigError(f"An init std only applies to the normal and truncated-normal schemes, not '{key}'.")
    if std is not None and not (math.isfinite(std) and std > 0):
        raise ConfigError(f"Init std {std!r} must be a positive number; use the zeros scheme for all-zero weights.")
    if key == "default":
        return model
    sigma = 0.05 if std is None else float(std)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
                weight = module.weight
                if key == "glorot-uniform":
                    nn.init.xavier_uniform_(weight)
                elif key == "he-normal":
                    nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")
                elif key == "truncated-normal":
                    nn.init.trunc_normal_(weight, std=sigma, a=-2 * sigma, b=2 * sigma)
                elif key == "normal":
                    nn.init.normal_(weight, std=sigma)
                else:
                    nn.init.zeros_(weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
                if getattr(module, "weight", None) is not None:
                    nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
    return model


# --- building blocks ------------------------------------------------------------------------------

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class _Stack:
    """Collects named layers of a conv net while tracking the (C, H, W) of the feature map."""

    def __init__(self, model: str, input_shape: tuple[int, int, int]):
        self.model = model
        self.c, self.h, self.w = input_shape
        self.layers: OrderedDict[str, nn.Module] = OrderedDict()

    def conv(self, name: str, out: int, k: int = 3, stride: int = 1, padding: int = 0, bn: bool = False) -> None:
        """Conv (+ BatchNorm, then no conv bias: BN would cancel it) + ReLU."""
        if self.h + 2 * padding < k or self.w + 2 * padding < k:
            raise ConfigError(
                f"Input {self.h}x{self.w} at layer {name} is too small for model '{self.model}': "
                "use a larger input or another model."
            )
        self.layers[name] = nn.Conv2d(self.c, out, k, stride=stride, padding=padding, bias=not bn)
        if bn:
            self.layers[name.replace("conv", "bn")] = nn.BatchNorm2d(out)
        self.layers[name.replace("conv", "relu")] = nn.ReLU(inplace=True)
        self.c = out
        self.h = (self.h + 2 * padding - k) // stride + 1
        self.w = (self.w + 2 * padding - k) // stride + 1

    def pool(self, name: str) -> None:
        """2x2 max-pool, left out once the map is below 2x2 (small inputs such as 8x8 digits)."""
        if min(self.h, self.w) >= 2:
            self.layers[name] = nn.MaxPool2d(2)
            self.h, self.w = self.h // 2, self.w // 2

    def add(self, name: str, module: nn.Module) -> None:
        self.layers[name] = module

    @property
    def flat(self) -> int:
        return self.c * self.h * self.w


class KernelL2Sequential(nn.Sequential):
    """A Sequential with Keras-style L2 on every kernel: ``l2 * sum(w**2)`` per Conv/Linear weight."""

    def __init__(self, layers: OrderedDict[str, nn.Module], l2: float):
        super().__init__(layers)
        self.l2 = float(l2)

    def regularization_loss(self) -> torch.Tensor:
        kernels = [m.weight for m in self.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
        return self.l2 * sum((w**2).sum() for w in kernels)


# --- the notebooks' models ------------------------------------------------------------------------

# Dense models see no image structure: the fast recipe's rotations, shears, stroke-width changes and pen
# skips, and its label smoothing, only make their task harder (logreg: 88.4% in 2 epochs with them,
# 92.7% in 5 without; mlp 97.8% in 5). Five epochs of the fast recipe's AdamW one-cycle schedule.
DENSE_TRAINING = dict(augment=False, aug_morph=0.0, aug_skip=0.0, label_smoothing=0.0, epochs=5)


@register_model("logreg", "Softmax regression: one dense layer from the pixels to the classes (notebook 000).",
                train=DENSE_TRAINING)
def _logreg(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return nn.Sequential(
        OrderedDict(flatten=nn.Flatten(), fc=nn.Linear(math.prod(input_shape), num_classes))
    )


@register_model("mlp", "Multi-layer perceptron: hidden dense layers with an activation and optional dropout.",
                train=DENSE_TRAINING)
def _mlp(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    hidden: tuple[int, ...] = (128,),
    activation: str = "relu",
    dropout: float = 0.0,
) -> nn.Module:
    _check("mlp", all(h >= 1 for h in hidden), f"hidden={list(hidden)} needs positive layer sizes.")
    _check("mlp", activation in _ACTIVATIONS, f"activation must be one of {', '.join(_ACTIVATIONS)}.")
    _check("mlp", 0.0 <= dropout < 1.0, f"dropout={dropout} must be in [0, 1).")
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width = math.prod(input_shape)
    for i, size in enumerate(hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(width, size)
        layers[f"{activation}{i}"] = _ACTIVATIONS[activation]()
        if dropout > 0:
            layers[f"dropout{i}"] = nn.Dropout(dropout)
        width = size
    layers["out"] = nn.Linear(width, num_classes)
    return nn.Sequential(layers)


@register_model(
    "cnn-small",
    "Notebook 001's CNN: conv 8 + pool, conv 16 + pool, dense 128, Keras-style L2 1e-3 on every kernel.",
)
def _cnn_small(input_shape: tuple[int, int, int], num_classes: int, *, l2: float = 1e-3) -> nn.Module:
    _check("cnn-small", l2 >= 0, f"l2={l2} must be zero or positive.")
    s = _Stack("cnn-small", input_shape)
    s.conv("conv1", 8)  # Keras Conv2D defaults: 'valid' padding, with bias
    s.pool("pool1")
    s.conv("conv2", 16)
    s.pool("pool2")
    s.add("flatten", nn.Flatten())
    s.add("fc1", nn.Linear(s.flat, 128))
    s.add("relu3", nn.ReLU(inplace=True))
    s.add("out", nn.Linear(128, num_classes))
    return KernelL2Sequential(s.layers, l2)


@register_model("keras-convnet", "keras-io's mnist_convnet: conv 32, pool, conv 64, pool, dropout 0.5, dense.")
def _keras_convnet(input_shape: tuple[int, int, int], num_classes: int, *, dropout: float = 0.5) -> nn.Module:
    _check("keras-convnet", 0.0 <= dropout < 1.0, f"dropout={dropout} must be in [0, 1).")
    s = _Stack("keras-convnet", input_shape)
    s.conv("conv1", 32)
    s.pool("pool1")
    s.conv("conv2", 64)
    s.pool("pool2")
    s.add("flatten", nn.Flatten())
    s.add("dropout", nn.Dropout(dropout))
    s.add("out", nn.Linear(s.flat, num_classes))
    return nn.Sequential(s.layers)


@register_model(
    "pytorch-example", "pytorch/examples' MNIST Net: two convs, pool, dropout, dense 128, dropout, dense."
)
def _pytorch_example(
    input_shape: tuple[int, int, int], num_classes: int, *, dropout1: float = 0.25, dropout2: float = 0.5
) -> nn.Module:
    for key, p in (("dropout1", dropout1), ("dropout2", dropout2)):
        _check("pytorch-example", 0.0 <= p < 1.0, f"{key}={p} must be in [0, 1).")
    s = _Stack("pytorch-example", input_shape)
    s.conv("conv1", 32)
    s.conv("conv2", 64)
    s.pool("pool")
    s.add("dropout1", nn.Dropout(dropout1))
    s.add("flatten", nn.Flatten())
    s.add("fc1", nn.Linear(s.flat, 128))
    s.add("relu3", nn.ReLU(inplace=True))
    s.add("dropout2", nn.Dropout(dropout2))
    s.add("fc2", nn.Linear(128, num_classes))
    return nn.Sequential(s.layers)


# --- ResNets --------------------------------------------------------------------------------------


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, eps: float = 1e-5) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(c_out, eps=eps)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut, as in ResNet18."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = _conv_bn(c_in, c_out, 3, stride)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = _conv_bn(c_out, c_out, 3)
        self.shortcut = _conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(self.conv2(self.relu1(self.conv1(x))) + self.shortcut(x))


class Bottleneck(nn.Module):
    """Keras ResNet50 (v1) bottleneck: the stride sits on the first 1x1 conv, BN eps 1.001e-5.

    Keras' convs also carry biases; they are left out here because the BatchNorm right after
    each conv cancels them (they would get zero gradient), which saves 26,560 no-op parameters.
    """

    def __init__(self, c_in: int, filters: int, stride: int):
        super().__init__()
        eps = 1.001e-5
        c_out = 4 * filters
        self.conv1 = _conv_bn(c_in, filters, 1, stride, eps)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = _conv_bn(filters, filters, 3, 1, eps)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = _conv_bn(filters, c_out, 1, 1, eps)
        self.shortcut = _conv_bn(c_in, c_out, 1, stride, eps) if stride != 1 or c_in != c_out else nn.Identity()
        self.relu3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        return self.relu3(y + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, stem: nn.Module, stages: list[nn.Module], features: int, num_classes: int):
        super().__init__()
        self.stem = stem
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))


@register_model(
    "resnet18",
    "ResNet18 for small grey images: 3x3 stride-1 stem, no stem pool, basic blocks [2,2,2,2].",
)
def _resnet18(input_shape: tuple[int, int, int], num_classes: int, *, width: int = 64) -> nn.Module:
    _check("resnet18", width >= 1, f"width={width} must be at least 1.")
    stem = nn.Sequential(_conv_bn(input_shape[0], width, 3), nn.ReLU(inplace=True))
    stages, c = [], width
    for i, mult in enumerate((1, 2, 4, 8)):
        out = width * mult
        stride = 1 if i == 0 else 2  # padded 3x3 convs: any input size keeps at least 1x1
        stages.append(nn.Sequential(BasicBlock(c, out, stride), BasicBlock(out, out, 1)))
        c = out
    return ResNet(stem, stages, c, num_classes)


@register_model(
    "resnet50-padded",
    "Notebook 001's Keras ResNet50 (weights=None) on input zero-padded by 2 (28x28 -> 32x32); ~23.5M params.",
)
def _resnet50_padded(
    input_shape: tuple[int, int, int], num_classes: int, *, width: int = 64, pad: int = 2
) -> nn.Module:
    _check("resnet50-padded", width >= 1, f"width={width} must be at least 1.")
    _check("resnet50-padded", pad >= 0, f"pad={pad} must be zero or positive.")
    stem = nn.Sequential(
        nn.ZeroPad2d(pad),
        _conv_bn(input_shape[0], width, 7, 2, eps=1.001e-5),
        nn.ReLU(inplace=True),
        # Keras zero-pads before this pool; after a ReLU that equals PyTorch's -inf padding.
        nn.MaxPool2d(3, stride=2, padding=1),
    )
    stages, c = [], width
    for i, blocks in enumerate((3, 4, 6, 3)):
        filters = width * 2**i
        stage = [Bottleneck(c, filters, 1 if i == 0 else 2)]
        stage += [Bottleneck(4 * filters, filters, 1) for _ in range(blocks - 1)]
        stages.append(nn.Sequential(*stage))
        c = 4 * filters
    return ResNet(stem, stages, c, num_classes)


# --- our own --------------------------------------------------------------------------------------


@register_model(
    "fast",
    "Small BN CNN for speed: 5x5 stride-2 stem, conv + pool, wide conv, global max-pool (widths w, 2w, top*w).",
)
def _fast(
    input_shape: tuple[int, int, int], num_classes: int, *, width: int = 16, top: int = 12, dropout: float = 0.0
) -> nn.Module:
    _check("fast", width >= 1 and top >= 1, f"width={width} and top={top} must be at least 1.")
    _check("fast", 0.0 <= dropout < 1.0, f"dropout={dropout} must be in [0, 1).")
    s = _Stack("fast", input_shape)
    # Why this shape: on 2 CPU cores memory traffic, not FLOPs, dominates. The stride-2 stem avoids
    # full-resolution maps; the second conv is max-pooled *before* its BatchNorm and ReLU, so those
    # memory-bound passes run on a quarter of the pixels; the last conv is the wide one because at
    # 7x7 extra channels are cheap (measured: top=8 costs 1.35x top=4 and is more accurate and robust;
    # top=12 costs 1.17x top=8 and reads ~1 point more of whole multi-digit fields, docs/real-images.md).
    # Channel counts are multiples of 16, which oneDNN's bf16 kernels handle fastest.
    s.conv("conv1", width, k=5, stride=2, padding=2, bn=True)
    s.add("conv2", nn.Conv2d(s.c, 2 * width, 3, padding=1, bias=False))
    s.c = 2 * width
    s.pool("pool2")
    s.add("bn2", nn.BatchNorm2d(s.c))
    s.add("relu2", nn.ReLU(inplace=True))
    s.conv("conv3", top * width, padding=1, bn=True)
    s.add("pool3", nn.AdaptiveMaxPool2d(1))
    s.add("flatten", nn.Flatten())
    if dropout > 0:
        s.add("dropout", nn.Dropout(dropout))
    s.add("out", nn.Linear(top * width, num_classes))
    return nn.Sequential(s.layers)


@register_model(
    "best",
    "Accuracy-first BN CNN: two blocks of two 3x3 convs (w, 2w) with pooling and dropout, BN dense layer, dropout.",
)
def _best(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    width: int = 32,
    hidden: int = 128,
    dropout: float = 0.4,
    block_dropout: float = 0.1,
) -> nn.Module:
    _check("best", width >= 1 and hidden >= 1, f"width={width} and hidden={hidden} must be at least 1.")
    for key, p in (("dropout", dropout), ("block_dropout", block_dropout)):
        _check("best", 0.0 <= p < 1.0, f"{key}={p} must be in [0, 1).")
    s = _Stack("best", input_shape)
    for block, channels in ((1, width), (2, 2 * width)):
        s.conv(f"conv{block}a", channels, padding=1, bn=True)
        s.conv(f"conv{block}b", channels, padding=1, bn=True)
        s.pool(f"pool{block}")
        if block_dropout > 0:
            s.add(f"dropout{block}", nn.Dropout2d(block_dropout))
    s.add("flatten", nn.Flatten())
    s.add("fc", nn.Linear(s.flat, hidden, bias=False))
    s.add("bn_fc", nn.BatchNorm1d(hidden))
    s.add("relu_fc", nn.ReLU(inplace=True))
    if dropout > 0:
        s.add("dropout", nn.Dropout(dropout))
    s.add("out", nn.Linear(hidden, num_classes))
    return nn.Sequential(s.layers)


# --- ensembles ------------------------------------------------------------------------------------


class Ensemble(nn.Module):
    """Several trained models as one: each gets the input rescaled its own way (``x * scale + shift``
    on inputs scaled to [0, 1]), and the output is the log of their average probabilities, so a softmax
    of it is that average (and a temperature applies to the ensemble as a whole).

    ``escalate_below`` makes it a cascade: the first member answers alone for the images where its
    top probability is at least that, and only the others are averaged over all members (the first
    member should be the cheap one: most images then cost one model).
    """

    def __init__(self, members: list[nn.Module], escalate_below: float | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.escalate_below = escalate_below
        for i in range(len(members)):
            self.register_buffer(f"scale{i}", torch.ones(()))
            self.register_buffer(f"shift{i}", torch.zeros(()))

    def _member(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.members[i](x * getattr(self, f"scale{i}") + getattr(self, f"shift{i}")), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.members)
        if self.escalate_below is None or _exporting():
            logs = [self._member(i, x) for i in range(n)]
            mean = torch.logsumexp(torch.stack(logs), 0) - math.log(n)
            if self.escalate_below is None:
                return mean
            # an exported graph (ONNX) cannot pick rows by value: every member runs, the answer is the same
            return torch.where(logs[0].amax(1, keepdim=True) < math.log(self.escalate_below), mean, logs[0])
        first = self._member(0, x)
        unsure = torch.nonzero(first.amax(1) < math.log(self.escalate_below)).squeeze(1)
        xs = x.index_select(0, unsure)
        logs = [first.index_select(0, unsure)] + [self._member(i, xs) for i in range(1, n)]
        return first.index_copy(0, unsure, torch.logsumexp(torch.stack(logs), 0) - math.log(n))


def _exporting() -> bool:
    return bool(torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing())


def ensemble_of(models: list[nn.Module], escalate_below: float | None = None) -> Ensemble:
    """An ``Ensemble`` of models made by ``build_model`` (trained or not), with its ``.spec``."""
    if len(models) < 2:
        raise ConfigError(f"An ensemble needs two or more member models, got {len(models)}.")
    if escalate_below is not None and not 0.0 < escalate_below <= 1.0:
        raise ConfigError(f"escalate_below={escalate_below} is not a probability in (0, 1]: give e.g. 0.9, or none.")
    first = models[0].spec
    model = Ensemble(models, escalate_below)
    model.spec = {"name": "ensemble", "input_shape": list(first["input_shape"]), "num_classes": first["num_classes"],
                  "options": {}, "members": [m.spec for m in models], "escalate_below": escalate_below}
    return model


def build_ensemble(members: list[dict[str, Any]], escalate_below: float | None = None) -> Ensemble:
    """An untrained ``Ensemble`` of registered models (``members``: their specs, as ``model.json`` stores them)."""
    return ensemble_of([build_model(m["name"], tuple(m["input_shape"]), m["num_classes"], **m["options"])
                        for m in members], escalate_below)
