"""The reader shipped inside the package (digitlab/_reader, docs/reader.md) and RUN-less commands."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from digitlab.cli import app
from digitlab.reader import ReaderError, describe, load_reader, reader_dir, resolve_model_arg, sha256_file

CARD = Path(__file__).resolve().parents[1] / "docs" / "reader.md"


def _card_value(pattern: str) -> str:
    match = re.search(pattern, CARD.read_text(encoding="utf-8"))
    assert match, f"docs/reader.md does not state {pattern}"
    return match.group(1)


@pytest.fixture(scope="module")
def reader():
    return load_reader()


def test_the_bundled_reader_loads_and_is_small(reader):
    folder = reader_dir()
    assert (folder / "model.safetensors").stat().st_size + (folder / "model.json").stat().st_size <= 5 * 2**20
    assert reader.classes == [str(i) for i in range(10)] and reader.input_shape == (1, 28, 28)
    assert describe(reader).startswith("bundled reader")
    assert reader.temperature != 1.0  # calibrated


def test_its_checksum_matches_the_model_card(reader):
    digest = sha256_file(reader_dir() / "model.safetensors")
    assert _card_value(r"SHA-256 of `model.safetensors`: `([0-9a-f]{64})`") == digest
    assert reader.meta["weights_sha256"] == digest


def test_it_reaches_the_cards_mnist_figure_on_a_sample(reader):
    from digitlab.data import load_dataset

    card = float(_card_value(r"MNIST test \(10,000, arrays\) \| [^|]+\| ([0-9.]+)%")) / 100
    ds = load_dataset("mnist")
    idx = np.random.default_rng(0).choice(len(ds.test_labels), 3000, replace=False)
    acc = float((reader.predict_proba(ds.test_images[idx]).argmax(1) == ds.test_labels[idx]).mean())
    # three standard errors of a 3,000-digit sample below the card's figure on all 10,000
    assert acc >= card - 3 * np.sqrt(card * (1 - card) / len(idx))


def test_a_corrupted_bundled_file_is_one_clear_sentence(tmp_path, monkeypatch):
    copy = tmp_path / "_reader"
    shutil.copytree(reader_dir(), copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ReaderError) as err:
        load_reader(copy)
    message = str(err.value)
    assert "damaged" in message and "reinstall" in message and message.count(". ") == 0 and "\n" not in message

    (copy / "model.json").write_text("{ not json")
    with pytest.raises(ReaderError, match="model.json is damaged"):
        load_reader(copy)
    (copy / "model.json").unlink()
    with pytest.raises(ReaderError, match="missing"):
        load_reader(copy)

    # the command line says the same sentence and exits 2, no traceback
    shutil.copytree(reader_dir(), tmp_path / "again")
    (tmp_path / "again" / "model.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr("digitlab.reader.reader_dir", lambda: tmp_path / "again")
    image = tmp_path / "d.png"
    Image.new("L", (60, 60), 255).save(image)
    out = CliRunner().invoke(app, ["predict", str(image)])
    assert out.exit_code == 2 and "Traceback" not in out.output and "damaged" in out.output


def test_predict_without_a_run_uses_the_bundled_reader_and_says_so(tmp_path):
    from digitlab.data import load_dataset

    x = load_dataset("mnist").test_images[:3]  # 7, 2, 1
    paths = []
    for i, digit in enumerate(x):
        paths.append(tmp_path / f"d{i}.png")
        Image.fromarray(255 - digit).resize((90, 90)).save(paths[-1])
    out = CliRunner().invoke(app, ["predict", *map(str, paths)])
    assert out.exit_code == 0, out.output
    assert "model: bundled reader" in out.output
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert [line.split()[1] for line in lines] == ["7", "2", "1"]
    out = CliRunner().invoke(app, ["predict", str(paths[0]), "--json"])
    assert json.loads(out.stdout)[0]["class"] == "7"


def test_resolve_model_arg_tells_runs_from_inputs(quick_run, tmp_path):
    image = tmp_path / "a.png"
    Image.new("L", (10, 10)).save(image)
    assert resolve_model_arg([str(image)]) == (None, [str(image)])
    assert resolve_model_arg([str(tmp_path)]) == (None, [str(tmp_path)])  # a folder of images
    assert resolve_model_arg([str(quick_run), str(image)]) == (str(quick_run), [str(image)])
    assert resolve_model_arg([]) == (None, [])
    out = CliRunner().invoke(app, ["predict", str(quick_run)])
    assert out.exit_code == 2 and "no images follow" in out.output


def test_combine_averages_the_members_probabilities_each_with_its_own_scaling(quick_run, tmp_path):
    from digitlab.data import load_dataset
    from digitlab.predict import Predictor
    from digitlab.reader import combine

    # the bundled reader's first member and the quick run were scaled differently (mean-std fitted on
    # other data): the ensemble must give each its own inputs
    fast = tmp_path / "fast"
    shutil.copytree(quick_run, fast)
    meta = json.loads((fast / "model.json").read_text())
    meta["scaler"] = {"name": "unit", "max_value": 255.0}  # same weights, another scaling: other answers
    (fast / "model.json").write_text(json.dumps(meta))
    out = tmp_path / "ens"
    made = combine([quick_run, fast], out)
    assert made["spec"]["name"] == "ensemble" and len(made["spec"]["members"]) == 2
    assert (out / "config.json").is_file()  # from the last run: 'digitlab calibrate OUT' has a validation split
    x = load_dataset("mnist").test_images[:64]
    a, b = Predictor.from_run(quick_run), Predictor.from_run(fast)
    a.temperature = b.temperature = 1.0
    expected = (a.predict_proba(x) + b.predict_proba(x)) / 2
    assert not np.allclose(a.predict_proba(x), b.predict_proba(x), atol=1e-3)
    got = Predictor.from_run(out).predict_proba(x)
    assert np.allclose(got, expected, atol=1e-5)


def test_combine_refuses_one_run_and_runs_of_other_tasks(quick_run, tmp_path):
    from digitlab.errors import RunError
    from digitlab.reader import combine

    with pytest.raises(RunError, match="two or more runs"):
        combine([quick_run], tmp_path / "one")
    other = tmp_path / "other"
    shutil.copytree(quick_run, other)
    meta = json.loads((other / "model.json").read_text())
    meta["classes"] = [f"c{i}" for i in range(10)]
    (other / "model.json").write_text(json.dumps(meta))
    with pytest.raises(RunError, match="differs .* in classes"):
        combine([quick_run, other], tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()  # nothing written half-way


def test_the_bundled_reader_is_the_cascade_its_card_describes(reader):
    import torch

    from digitlab.data import load_dataset

    x = load_dataset("mnist").test_images[:300]
    model = reader.model
    assert reader.meta["spec"]["name"] == "ensemble" and len(model.members) == 2
    assert model.escalate_below == float(_card_value(r"escalate_below=([0-9.]+)"))
    with torch.inference_mode():
        unit = torch.as_tensor(x).float().unsqueeze(1) / 255
        p = [torch.softmax(m(unit * getattr(model, f"scale{i}") + getattr(model, f"shift{i}")), 1).numpy()
             for i, m in enumerate(model.members)]
    sure = p[0].max(1) >= model.escalate_below
    assert 0 < sure.mean() < 1  # both branches are taken on real digits
    expected = np.where(sure[:, None], p[0], (p[0] + p[1]) / 2)
    reader_t, reader.temperature = reader.temperature, 1.0
    try:
        got = reader.predict_proba(x)
    finally:
        reader.temperature = reader_t
    assert np.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("escalate_below", [0.9, 1.0, 1e-6])
def test_a_cascade_lets_the_first_model_answer_where_it_is_sure(quick_run, tmp_path, escalate_below):
    from digitlab.data import load_dataset
    from digitlab.predict import Predictor
    from digitlab.reader import combine

    other = tmp_path / "other"
    shutil.copytree(quick_run, other)
    meta = json.loads((other / "model.json").read_text())
    meta["scaler"] = {"name": "unit", "max_value": 255.0}
    (other / "model.json").write_text(json.dumps(meta))
    out = tmp_path / "cascade"
    assert combine([quick_run, other], out, escalate_below=escalate_below)["spec"]["escalate_below"] == escalate_below
    x = load_dataset("mnist").test_images[:64]
    a, b = Predictor.from_run(quick_run), Predictor.from_run(other)
    a.temperature = b.temperature = 1.0
    pa, pb = a.predict_proba(x), b.predict_proba(x)
    expected = np.where((pa.max(1) >= escalate_below)[:, None], pa, (pa + pb) / 2)
    assert np.allclose(Predictor.from_run(out).predict_proba(x), expected, atol=1e-5)


def test_a_cascade_threshold_outside_0_1_is_one_clear_error(quick_run, tmp_path):
    from digitlab.errors import ConfigError
    from digitlab.reader import combine

    with pytest.raises(ConfigError, match="escalate_below=1.5 is not a probability"):
        combine([quick_run, quick_run], tmp_path / "bad", escalate_below=1.5)


def test_a_cascade_exports_to_onnx_with_the_same_answers(quick_run, tmp_path):
    # torch.export cannot pick rows by value: the exported graph runs every member and selects
    from digitlab.data import load_dataset
    from digitlab.predict import Predictor
    from digitlab.reader import combine

    other = tmp_path / "other"
    shutil.copytree(quick_run, other)
    meta = json.loads((other / "model.json").read_text())
    meta["scaler"] = {"name": "unit", "max_value": 255.0}
    (other / "model.json").write_text(json.dumps(meta))
    combine([quick_run, other], tmp_path / "cascade", escalate_below=0.9)
    x = load_dataset("mnist").test_images[:64]
    torch_p = Predictor.from_run(tmp_path / "cascade").predict_proba(x)
    onnx_p = Predictor.from_run(tmp_path / "cascade", runtime="onnx").predict_proba(x)
    assert np.allclose(torch_p, onnx_p, atol=1e-4)
