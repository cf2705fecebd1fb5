"""digitlab.explain on tiny real runs: weights, contributions, feature maps, saliency and the figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from digitlab import explain
from digitlab.cli import app
from digitlab.config import TrainConfig
from digitlab.errors import ConfigError, ImageError
from digitlab.evaluate import load_split
from digitlab.predict import Predictor
from digitlab.training import train

pytestmark = pytest.mark.xdist_group("explain")

TINY = dict(train_subset=300, val_size=500, epochs=1, batch_size=32, optimizer="adam", lr=3e-3,
            schedule="constant", label_smoothing=0.0, report=False, threads=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Predictor]:
    """Three tiny MNIST runs (300 images, 1 epoch): softmax regression, a 16-unit MLP, notebook 001's CNN."""
    root = tmp_path_factory.mktemp("explain-runs")
    models = {"logreg": ("logreg", {}), "mlp": ("mlp", {"hidden": [16]}), "cnn": ("cnn-small", {})}
    out = {}
    for name, (model, options) in models.items():
        run = train(TrainConfig(model=model, model_options=options, name=name, runs_dir=str(root), **TINY),
                    progress="quiet")
        out[name] = Predictor.from_run(run.path)
    return out


@pytest.fixture(scope="module")
def digit(runs) -> tuple[np.ndarray, int]:
    x, y, _ = load_split(runs["logreg"].path, "test")
    return x[0], int(y[0])


def _scaled(p: Predictor, img: np.ndarray) -> torch.Tensor:
    return p.scaler.transform(img[None])[0]


def _png_ok(path, min_bytes: int = 3_000) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > min_bytes
    with Image.open(path) as im:
        assert im.format == "PNG"
        pixels = np.asarray(im.convert("RGB"))
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # not a blank canvas
        return im.size


def test_model_kinds(runs):
    assert [explain.model_kind(runs[n].model) for n in ("logreg", "mlp", "cnn")] == ["linear", "mlp", "cnn"]


def test_class_templates_are_the_logreg_weights(runs):
    model = runs["logreg"].model
    t = explain.class_templates(model)
    assert t.shape == (10, 28, 28)
    np.testing.assert_array_equal(t.reshape(10, -1), model.fc.weight.detach().numpy())
    with pytest.raises(ConfigError, match="softmax-regression"):
        explain.class_templates(runs["mlp"].model)


def test_mlp_masks_and_hidden_to_output(runs):
    model = runs["mlp"].model
    masks = explain.first_layer_masks(model)
    assert masks.shape == (16, 28, 28)
    np.testing.assert_array_equal(masks.reshape(16, -1), model.fc1.weight.detach().numpy())
    np.testing.assert_array_equal(explain.hidden_to_output(model), model.out.weight.detach().numpy().T)
    with pytest.raises(ConfigError):
        explain.first_layer_masks(runs["cnn"].model)


def test_feature_contributions_are_activation_times_outgoing_weight(runs, digit):
    p = runs["mlp"]
    model, x = p.model, _scaled(p, digit[0])
    info = explain.feature_contributions(model, x)
    with torch.no_grad():
        hidden = torch.relu(model.fc1(x.reshape(1, -1)))[0].numpy()
        logits = model(x[None, None])[0].numpy()
    w2, b2 = model.out.weight.detach().numpy(), model.out.bias.detach().numpy()
    np.testing.assert_allclose(info["activations"], hidden, atol=1e-6)
    np.testing.assert_allclose(info["contributions"], hidden[None, :] * w2, atol=1e-6)
    # With one hidden layer the contributions add up to the logit minus the output bias.
    np.testing.assert_allclose(info["contributions"].sum(axis=1) + b2, logits, atol=1e-4)
    np.testing.assert_allclose(info["probs"], p.predict_proba(digit[0][None])[0], atol=1e-5)
    assert (info["activations"] >= 0).all() and (info["activations"] > 0).any()


def test_gradient_x_input_of_logreg_is_weight_times_input(runs, digit):
    p = runs["logreg"]
    model, x = p.model, _scaled(p, digit[0])
    k = 3
    sal = explain.saliency(model, x, "grad-x-input", target=k)
    w = model.fc.weight.detach().numpy()[k].reshape(28, 28)
    np.testing.assert_allclose(sal, w * x.numpy(), atol=1e-6)
    np.testing.assert_allclose(explain.saliency(model, x, "gradient", target=k), w, atol=1e-6)
    # Measured from the scaled blank image, the background contributes nothing.
    blank = _scaled(p, np.zeros_like(digit[0]))
    from_blank = explain.saliency(model, x, "grad-x-input", target=k, baseline=blank)
    assert np.all(from_blank[digit[0] == 0] == 0)
    with pytest.raises(ConfigError, match="Unknown saliency"):
        explain.saliency(model, x, "magic")


def test_occlusion(runs, digit):
    p = runs["cnn"]
    img = digit[0]
    x, blank = _scaled(p, img), _scaled(p, np.zeros_like(img))
    heat = explain.occlusion(p.model, x, patch=4, baseline=blank)
    assert heat.shape == (28, 28) and np.isfinite(heat).all()
    # Corners hold no ink: hiding them changes nothing, so their drop is zero (up to batching round-off).
    assert np.abs(heat[:2, :2]).max() < 1e-6 and np.abs(heat[-2:, -2:]).max() < 1e-6
    assert np.abs(heat).max() > 0
    # The predicted class's probability falls most where the digit is.
    assert heat[img > 0].mean() > heat[img == 0].mean()
    assert np.allclose(explain.saliency(p.model, x, "occlusion", baseline=blank), heat)


def test_cnn_filters_and_feature_maps(runs, digit):
    p = runs["cnn"]
    model, x = p.model, _scaled(p, digit[0])
    filters = explain.first_layer_filters(model)
    assert filters.shape == (8, 3, 3)
    np.testing.assert_array_equal(filters, model.conv1.weight.detach().numpy()[:, 0])
    maps = explain.feature_maps(model, x)
    with torch.no_grad():
        expected = torch.relu(model.conv1(x[None, None]))[0].numpy()
    assert maps.shape == (8, 26, 26)
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    with pytest.raises(ConfigError):
        explain.feature_maps(runs["mlp"].model, x)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("logreg", {"input", "weights", "saliency"}),
        ("mlp", {"input", "weights", "hidden_to_output", "active_features", "contributions", "saliency"}),
        ("cnn", {"input", "weights", "feature_maps", "saliency"}),
    ],
)
def test_explain_run_writes_every_figure(runs, name, expected, tmp_path):
    figures = explain.explain_run(runs[name].path, image=5, out=tmp_path)
    assert set(figures) == expected
    sizes = {key: _png_ok(path) for key, path in figures.items()}
    assert all(path.parent == tmp_path for path in figures.values())
    assert not list(tmp_path.glob("*.tmp"))
    for w, h in sizes.values():
        assert 250 <= w <= 2600 and 150 <= h <= 2000
    assert sizes["saliency"][0] > 1000  # three panels side by side


def test_explain_run_on_an_ensemble(runs, tmp_path):
    """An ensemble run (reader.combine, as the bundled reader is made) explains like its first member:
    that member's filters and maps, the ensemble's prediction and saliency."""
    from digitlab.reader import combine

    combine([runs["cnn"].path, runs["cnn"].path], tmp_path / "ens")
    figures = explain.explain_run(tmp_path / "ens", image=5, out=tmp_path / "figures")
    assert set(figures) == {"input", "weights", "feature_maps", "saliency"}
    for path in figures.values():
        _png_ok(path)
    member = explain.feature_maps(runs["cnn"].model, _scaled(runs["cnn"], load_split(runs["cnn"].path, "test")[0][5]))
    ens = Predictor.from_run(tmp_path / "ens")
    assert explain.whose_layers(ens.model) == " of member 1 of 2 (cnn-small)"  # in the figures' titles
    assert explain.whose_layers(runs["cnn"].model) == ""
    assert np.allclose(explain.feature_maps(ens.model, _scaled(ens, load_split(ens.path, "test")[0][5])), member,
                       atol=1e-5)


def test_explain_run_default_folder_and_image_file(runs, digit, tmp_path):
    # A photo-like file: dark ink on white, larger than 28x28, goes through preprocess.
    path = tmp_path / "digit.png"
    Image.fromarray(255 - digit[0]).resize((140, 140)).save(path)
    figures = explain.explain_run(runs["mlp"].path, image=str(path))
    assert figures["input"].parent == runs["mlp"].path / "figures" / "explain"
    _png_ok(figures["contributions"])


def test_explain_errors(runs, tmp_path):
    with pytest.raises(ConfigError, match="outside the test set"):
        explain.explain_run(runs["logreg"].path, image=10_000, out=tmp_path)
    with pytest.raises(ImageError, match="does not exist"):
        explain.explain_run(runs["logreg"].path, image=str(tmp_path / "missing.png"), out=tmp_path)


def test_weights_figures_have_a_shared_colour_bar(runs, tmp_path):
    out = explain.weights_figure(runs["logreg"].model, runs["logreg"].classes, tmp_path / "t.png")
    pixels = np.asarray(Image.open(out).convert("RGB")).astype(int)
    # The diverging colour bar: strong red and strong blue both appear (right quarter of the picture).
    bar = pixels[:, int(pixels.shape[1] * 0.75):]
    assert ((bar[..., 0] > 150) & (bar[..., 2] < 80)).sum() > 50
    assert ((bar[..., 2] > 120) & (bar[..., 0] < 60)).sum() > 50


def test_cli_explain_json(runs, tmp_path):
    result = CliRunner().invoke(app, ["explain", str(runs["cnn"].path), "--image", "2", "--out", str(tmp_path),
                                      "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert set(figures) == {"input", "weights", "feature_maps", "saliency"}
    bad = CliRunner().invoke(app, ["explain", str(runs["cnn"].path), "--image", "nope.png"])
    assert bad.exit_code == 2 and "does not exist" in bad.output
