"""ONNX and TorchScript export: same outputs as PyTorch, dynamic batch, the onnx runtime of predict."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from digitlab.cli import app
from digitlab.data import load_dataset
from digitlab.errors import ConfigError
from digitlab.export import export_model
from digitlab.predict import Predictor


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    return load_dataset("mnist").test_images[:1000]


@pytest.fixture(scope="module")
def onnx_path(quick_run, tmp_path_factory) -> Path:
    return export_model(quick_run, "onnx", out=tmp_path_factory.mktemp("onnx") / "model.onnx")


def test_onnx_matches_pytorch_on_1000_test_images(quick_run, onnx_path, test_images):
    import onnx
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = test_images.astype(np.float32)  # raw pixel values: the scaler is inside the graph
    logits, probs = session.run(["logits", "probabilities"], {"images": x})
    torch_probs = Predictor.from_run(quick_run).predict_proba(test_images)
    assert probs.shape == (1000, 10) and np.abs(probs - torch_probs).max() < 1e-4
    assert np.array_equal(probs.argmax(1), torch_probs.argmax(1))
    assert np.allclose(probs, torch.softmax(torch.from_numpy(logits), 1).numpy(), atol=1e-6)
    for n in (1, 7):  # the batch axis is free
        assert session.run(["probabilities"], {"images": x[:n]})[0].shape == (n, 10)
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    meta = json.loads((quick_run / "model.json").read_text())
    assert json.loads(props["classes"]) == meta["classes"] and json.loads(props["threshold"]) == meta["threshold"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_matches_pytorch(quick_run, test_images, tmp_path):
    path = export_model(quick_run, "torchscript", out=tmp_path)
    assert path == tmp_path / "model.pt"
    scripted = torch.jit.load(str(path))
    with torch.inference_mode():
        _, probs = scripted(torch.from_numpy(test_images[:200].astype(np.float32)))
    torch_probs = Predictor.from_run(quick_run).predict_proba(test_images[:200])
    assert np.abs(probs.numpy() - torch_probs).max() < 1e-5


def test_onnx_runtime_in_predictor_and_cli(quick_run, onnx_path, test_images, tmp_path):
    onnx_pred = Predictor.from_run(quick_run, runtime="onnx")  # no RUN/model.onnx yet: exported in memory
    assert not (quick_run / "model.onnx").exists()
    torch_probs = Predictor.from_run(quick_run).predict_proba(test_images[:300])
    assert np.abs(onnx_pred.predict_proba(test_images[:300]) - torch_probs).max() < 1e-4

    runner = CliRunner()
    out = runner.invoke(app, ["export", str(quick_run)])
    assert out.exit_code == 0, out.output
    default = quick_run / "model.onnx"
    assert default.is_file() and str(default) in out.stdout.replace("\n", "")
    Image.fromarray(255 - test_images[0]).resize((120, 120)).save(tmp_path / "seven.png")
    out = runner.invoke(app, ["predict", str(quick_run), str(tmp_path / "seven.png"), "--runtime", "onnx", "--json"])
    assert out.exit_code == 0, out.output
    row = json.loads(out.stdout)[0]
    same = Predictor.from_run(quick_run).predict_image(tmp_path / "seven.png")[0]
    assert row["class"] == same.name == "7" and abs(row["confidence"] - same.confidence) < 1e-4
    # A model.onnx older than the weights is not trusted: the predictor exports afresh.
    old = default.stat().st_mtime - 3600
    os.utime(default, (old, old))
    default.write_bytes(b"stale")
    os.utime(default, (old, old))
    assert Predictor.from_run(quick_run, runtime="onnx").predict_proba(test_images[:5]).shape == (5, 10)
    default.unlink()

    out = runner.invoke(app, ["export", str(quick_run), "--format", "tflite"])
    assert out.exit_code == 2 and "onnx or torchscript" in out.output
    with pytest.raises(ConfigError):
        export_model(quick_run, "keras")
