"""The model registry: exact parameter counts, shapes and gradients everywhere, overfitting a tiny
batch (Karpathy's recipe), weight initialization, summaries, options and the `models` command."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from digitlab.errors import ConfigError
from digitlab.models import (
    MODELS,
    build_model,
    count_parameters,
    format_summary,
    init_weights,
    list_models,
    model_summary,
    parse_options,
    register_model,
)

SHAPES = [(1, 28, 28), (1, 8, 8)]

# Keras' ResNet50 (weights=None, classes=10) on 28x28x1 zero-padded to 32x32 has 23,548,810 trainable
# parameters; ours leaves out the 26,560 conv biases that the following BatchNorm cancels.
KERAS_RESNET50_TRAINABLE = 23_548_810
RESNET50_CONV_BIASES = 26_560


@pytest.mark.parametrize(
    ("name", "shape", "options", "expected"),
    [
        ("logreg", (1, 28, 28), {}, 7_850),
        ("mlp", (1, 28, 28), {"hidden": [36]}, 28_630),
        ("mlp", (1, 28, 28), {"hidden": [128]}, 101_770),
        ("mlp", (1, 28, 28), {}, 101_770),
        ("mlp", (1, 28, 28), {"hidden": [64, 64, 64]}, 59_210),
        ("mlp", (1, 28, 28), {"hidden": [300, 100]}, 266_610),
        ("mlp", (1, 28, 28), {"hidden": "300,100"}, 266_610),
        ("mlp", (1, 8, 8), {"hidden": [100], "activation": "tanh"}, 7_510),
        # conv 8 (80) + conv 16 (1,168) + dense 400->128 (51,328) + dense 128->10 (1,290)
        ("cnn-small", (1, 28, 28), {}, 53_866),
        ("keras-convnet", (1, 28, 28), {}, 34_826),
        ("pytorch-example", (1, 28, 28), {}, 1_199_882),
        ("resnet18", (1, 28, 28), {}, 11_172_810),
        ("resnet50-padded", (1, 28, 28), {}, KERAS_RESNET50_TRAINABLE - RESNET50_CONV_BIASES),
    ],
)
def test_parameter_counts(name, shape, options, expected):
    with torch.device("meta"):  # no memory for the big ones
        model = build_model(name, shape, 10, **options)
    assert count_parameters(model) == expected


def test_resnet18_width_scales_and_list_matches_counts():
    assert count_parameters(build_model("resnet18", width=8)) < count_parameters(build_model("resnet18")) / 50
    rows = {row["name"]: row for row in list_models()}
    assert list(rows) == list(MODELS)
    for name in ("logreg", "mlp", "cnn-small", "fast", "best"):
        assert rows[name]["parameters_28x28"] == count_parameters(build_model(name))
        assert rows[name]["description"]


def _param_groups(name: str) -> list[str]:
    return [n for n, _ in build_model(name).named_parameters()]


@pytest.mark.parametrize("shape", SHAPES, ids=["28x28", "8x8"])
@pytest.mark.parametrize("name", list(MODELS))
def test_forward_shapes_and_every_parameter_gets_a_gradient(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, 10)
    batch = 2 if name == "resnet50-padded" else 4
    x = torch.randn(batch, *shape)
    y = torch.arange(batch) % 10
    model.train()
    logits = model(x)
    assert logits.shape == (batch, 10)
    assert torch.isfinite(logits).all()
    loss = F.cross_entropy(logits, y)
    if hasattr(model, "regularization_loss"):
        loss = loss + model.regularization_loss()
    loss.backward()
    for pname, p in model.named_parameters():
        # Not just non-zero: a conv bias right before BatchNorm gets ~1e-7 of rounding noise, a
        # parameter that matters gets >1e-3 here.
        assert p.grad is not None and p.grad.abs().max() > 1e-5, f"{name}: {pname} got no gradient"
    model.eval()
    with torch.no_grad():
        single = model(x[:1])
    assert single.shape == (1, 10) and torch.isfinite(single).all()


@pytest.mark.parametrize("name", [n for n in MODELS if n != "resnet50-padded"])
def test_three_channel_input_and_other_class_counts(name):
    model = build_model(name, (3, 32, 32), 5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.fixture(scope="module")
def mnist_256():
    from digitlab.data import load_dataset

    ds = load_dataset("mnist")
    x = torch.as_tensor(ds.train_images[:256]).float().div(255).unsqueeze(1)
    return x, torch.as_tensor(ds.train_labels[:256]).long()


# (images, lr, options): the big models overfit fewer images, at reduced width, to keep this fast.
OVERFIT = {
    "logreg": (256, 1e-2, {}),
    "mlp": (256, 3e-3, {}),
    "cnn-small": (256, 3e-3, {}),
    "keras-convnet": (128, 3e-3, {}),
    "pytorch-example": (64, 1e-3, {}),
    "resnet18": (32, 3e-3, {"width": 16}),
    "resnet50-padded": (32, 3e-3, {"width": 8}),
    "fast": (256, 3e-3, {}),
    "best": (64, 3e-3, {}),
}


def test_overfit_table_covers_every_model():
    assert set(OVERFIT) == set(MODELS)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith("resnet") else n for n in OVERFIT]
)
def test_overfits_a_tiny_batch(name, mnist_256):
    """Karpathy's recipe: a model that cannot fit a few hundred images perfectly has a bug."""
    n, lr, options = OVERFIT[name]
    x, y = mnist_256[0][:n], mnist_256[1][:n]
    torch.manual_seed(0)
    model = build_model(name, (1, 28, 28), 10, **options)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    acc = 0.0
    for step in range(1, 151):
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            model.eval()  # dropout off, BatchNorm on running statistics: the accuracy that counts
            with torch.no_grad():
                acc = (model(x).argmax(1) == y).float().mean().item()
            if acc >= 0.99:
                break
    assert acc >= 0.99, f"{name} reached only {acc:.3f} training accuracy on {n} images"


# --- initialization -------------------------------------------------------------------------------


def test_init_zeros_gives_all_zero_weights_and_keeps_batchnorm_identity():
    model = init_weights(build_model("mlp", hidden=[64, 32]), "zeros")
    assert all((p == 0).all() for p in model.parameters())
    fast = init_weights(build_model("fast"), "zeros")
    for module in fast.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            assert (module.weight == 0).all()
        if isinstance(module, nn.BatchNorm2d):
            assert (module.weight == 1).all() and (module.bias == 0).all()


def test_init_glorot_uniform_bounds_and_zero_biases():
    torch.manual_seed(0)
    model = init_weights(build_model("cnn-small"), "glorot-uniform")
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            w = module.weight
            receptive = w[0, 0].numel() if w.dim() > 2 else 1
            bound = math.sqrt(6 / ((w.shape[0] + w.shape[1]) * receptive))
            assert w.abs().max() <= bound
            assert w.abs().max() > 0.9 * bound  # really spread over the range, not tiny
            assert (module.bias == 0).all()


@pytest.mark.parametrize("std", [1e-3, 1.0])
def test_init_normal_has_requested_std(std):
    torch.manual_seed(0)
    model = init_weights(build_model("mlp", hidden=[300, 100]), "normal", std=std)
    w = model.fc1.weight
    assert w.std().item() == pytest.approx(std, rel=0.02)
    assert w.mean().abs().item() < 0.01 * std
    assert (model.fc1.bias == 0).all()


def test_init_truncated_normal_and_he_normal():
    torch.manual_seed(0)
    model = init_weights(build_model("mlp", hidden=[300, 100]), "truncated-normal", std=0.1)
    w = model.fc1.weight
    assert w.abs().max() <= 0.2  # truncated at two standard deviations
    assert w.std().item() == pytest.approx(0.1 * 0.8796, rel=0.03)  # std of a normal cut at +-2 sigma
    model = init_weights(build_model("mlp", hidden=[300, 100]), "he-normal")
    assert model.fc1.weight.std().item() == pytest.approx(math.sqrt(2 / 784), rel=0.03)


def test_init_default_keeps_weights_and_bad_arguments_raise():
    model = build_model("mlp")
    before = [p.clone() for p in model.parameters()]
    init_weights(model, "default")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with pytest.raises(ConfigError, match="Unknown initialization"):
        init_weights(model, "lecun")
    with pytest.raises(ConfigError, match="std"):
        init_weights(model, "glorot-uniform", std=0.1)
    with pytest.raises(ConfigError, match="std"):
        init_weights(model, "normal", std=0)


# --- summaries ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_summary_totals_match_count_parameters(name):
    model = build_model(name)
    rows = model_summary(model)
    total = count_parameters(model, trainable_only=False)
    assert sum(r["params"] for r in rows) == total
    assert rows[-1]["output_shape"] == [10]
    text = format_summary(model)
    assert f"Total params: {total:,}" in text
    assert f"Trainable params: {total:,}" in text
    assert "Non-trainable params: 0" in text


def test_summary_rows_and_frozen_layers():
    model = build_model("cnn-small")
    rows = model_summary(model)
    assert rows[0] == {"layer": "conv1", "type": "Conv2d", "output_shape": [8, 26, 26], "params": 80}
    assert [r["output_shape"] for r in rows if r["type"] == "Flatten"] == [[400]]
    small = model_summary(build_model("cnn-small", (1, 8, 8)))
    assert [r["layer"] for r in small if r["type"] == "MaxPool2d"] == ["pool1"]  # 1x1 map: pool left out
    model.conv1.weight.requires_grad_(False)
    text = format_summary(model)
    assert "Trainable params: 53,794" in text and "Non-trainable params: 72" in text
    assert model.training  # the summary's eval() does not stick


# --- options, specs, errors -----------------------------------------------------------------------


def test_parse_options():
    got = parse_options(["hidden=300,100", "dropout=0.2", "activation=tanh", "flag=true", "w=[1, 2]", "block-x=3"])
    assert got == {"hidden": [300, 100], "dropout": 0.2, "activation": "tanh", "flag": True, "w": [1, 2], "block_x": 3}
    assert parse_options(None) == {}
    with pytest.raises(ConfigError, match="key=value"):
        parse_options(["dropout"])


def test_spec_rebuilds_the_same_model():
    model = build_model("mlp", (1, 8, 8), 10, **parse_options(["hidden=32,16", "activation=tanh"]))
    spec = json.loads(json.dumps(model.spec))
    assert spec == {
        "name": "mlp",
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "options": {"hidden": [32, 16], "activation": "tanh", "dropout": 0.0},
    }
    again = build_model(spec["name"], spec["input_shape"], spec["num_classes"], **spec["options"])
    again.load_state_dict(model.state_dict())
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(again(x), model(x))
    assert build_model("CNN_small").spec["name"] == "cnn-small"


@pytest.mark.parametrize(
    ("args", "options", "match"),
    [
        (("vgg",), {}, "Unknown model 'vgg'.*logreg"),
        (("mlp",), {"hiden": [3]}, "no option 'hiden'.*hidden, activation, dropout"),
        (("logreg",), {"hidden": [3]}, "no option 'hidden'"),
        (("mlp",), {"activation": "swish"}, "activation must be one of"),
        (("mlp",), {"dropout": 1.5}, "dropout"),
        (("mlp",), {"hidden": "a,b"}, "list of integers"),
        (("mlp",), {"hidden": [0]}, "positive"),
        (("fast",), {"width": 2.5}, "integer"),
        (("mlp", (28, 28)), {}, "channels, height, width"),
        (("cnn-small", (1, 4, 4)), {}, "too small"),
        (("mlp", (1, 28, 28), 1), {}, "num_classes"),
    ],
)
def test_build_model_errors(args, options, match):
    with pytest.raises(ConfigError, match=match):
        build_model(*args, **options)


def test_cnn_small_l2_is_keras_style():
    model = build_model("cnn-small")
    kernels = [model.conv1.weight, model.conv2.weight, model.fc1.weight, model.out.weight]
    expected = sum(1e-3 * (w**2).sum() for w in kernels)
    assert torch.allclose(model.regularization_loss(), expected)
    assert build_model("cnn-small", l2=0).regularization_loss().item() == 0.0


def test_register_model_adds_a_builder_with_typed_options():
    @register_model("test-tiny", "A test model.")
    def _tiny(input_shape, num_classes, *, scale: float = 1.0):
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))

    try:
        model = build_model("test-tiny", (1, 8, 8), 3, scale=2)
        assert model.spec["options"] == {"scale": 2.0} and isinstance(model.spec["options"]["scale"], float)
        with pytest.raises(ValueError, match="twice"):
            register_model("test-tiny", "again")(_tiny)
        with pytest.raises(TypeError, match="keyword-only"):
            register_model("test-bad", "no default")(lambda input_shape, num_classes, *, x: None)
    finally:
        MODELS.pop("test-tiny", None)
        MODELS.pop("test-bad", None)


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_models_list_summary_and_errors():
    from digitlab.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["models", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert {r["name"]: r["parameters_28x28"] for r in rows}["keras-convnet"] == 34_826

    table = runner.invoke(app, ["models"])
    assert table.exit_code == 0 and "pytorch-example" in table.stdout and "1,199,882" in table.stdout

    summary = runner.invoke(app, ["models", "mlp", "--summary", "--input-shape", "1,8,8", "-o", "hidden=100",
                                  "--option", "activation=tanh"])
    assert summary.exit_code == 0, summary.output
    assert "Total params: 7,510" in summary.stdout and "tanh1 (Tanh)" in summary.stdout

    spec = json.loads(runner.invoke(app, ["models", "cnn-small", "--summary", "--json"]).stdout)
    assert spec["parameters"] == 53_866 and spec["layers"][0]["layer"] == "conv1"

    bad = runner.invoke(app, ["models", "mlp", "-o", "widht=3"])
    assert bad.exit_code == 2 and "no option 'widht'" in bad.output
