"""`digitlab explore`: the notebook-002 questions as JSON and a table, and three readable PNGs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from digitlab import data
from digitlab.cli import app
from digitlab.explore import explore

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def explored(tmp_path_factory) -> dict[str, dict]:
    """`digitlab explore NAME --json` once per dataset; the parsed JSON by name."""
    results = {}
    for name in ("mnist", "fashion-mnist", "digits"):
        out = tmp_path_factory.mktemp(name)
        result = runner.invoke(app, ["explore", name, "--json", "--out", str(out)])
        assert result.exit_code == 0, result.output
        results[name] = json.loads(result.stdout)
    return results


def test_mnist_answers(explored):
    s = explored["mnist"]
    assert s["dataset"] == "mnist" and s["size"] == 70000
    assert s["train"]["size"] == 60000 and s["test"]["size"] == 10000
    assert s["image_shape"] == [28, 28] and s["input_shape"] == [1, 28, 28]
    assert s["dtype"] == "uint8" and s["label_dtype"] == "int64" and s["container"] == "numpy.ndarray"
    assert (s["min"], s["max"], s["max_value"]) == (0, 255, 255)
    assert s["labels"] == list(range(10)) and s["classes"] == [str(i) for i in range(10)]
    assert list(s["train"]["class_counts"].values()) == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert sum(s["test"]["class_counts"].values()) == 10000 and s["test"]["class_counts"]["1"] == 1135
    assert 30 < s["train"]["pixel_mean"] < 36 and 75 < s["train"]["pixel_std"] < 82


def test_fashion_mnist_answers(explored):
    s = explored["fashion-mnist"]
    assert s["train"]["size"] == 60000 and s["test"]["size"] == 10000 and s["image_shape"] == [28, 28]
    assert (s["min"], s["max"], s["dtype"]) == (0, 255, "uint8")
    assert s["train"]["class_counts"] == {name: 6000 for name in data.FASHION_CLASSES}
    assert set(s["test"]["class_counts"].values()) == {1000}


def test_digits_answers(explored):
    s = explored["digits"]
    assert s["size"] == 1797 and s["train"]["size"] + s["test"]["size"] == 1797
    assert s["image_shape"] == [8, 8] and (s["min"], s["max"], s["max_value"]) == (0, 16, 16)
    assert s["dtype"] == "uint8" and sum(s["train"]["class_counts"].values()) == 1437


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "digits"])
def test_pngs_are_valid_sized_and_not_blank(explored, name):
    figures = explored[name]["figures"]
    assert set(figures) == {"samples", "class_distribution", "mean_images"}
    for path in figures.values():
        assert Path(path).parent == Path(explored[name]["out"])
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert 400 <= image.width <= 2000 and 300 <= image.height <= 2000
            pixels = np.asarray(image.convert("L"), dtype=np.float64)
        assert pixels.std() > 20 and len(np.unique(pixels)) > 30  # real content, not an empty canvas


def test_table_output_and_default_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["explore", "digits"])
    assert result.exit_code == 0, result.output
    for text in ("Dataset digits", "Images per class", "8 x 8", "0..16", "numpy.ndarray", "samples.png"):
        assert text in result.stdout
    assert sorted(p.name for p in (tmp_path / "runs" / "explore-digits").iterdir()) == [
        "class_distribution.png", "mean_images.png", "samples.png"]


def test_unknown_dataset_is_one_line_and_exit_code_2():
    result = runner.invoke(app, ["explore", "emnist", "--json"])
    assert result.exit_code == 2
    assert "Unknown dataset 'emnist'" in result.output and "Traceback" not in result.output


def test_explore_a_folder_dataset_with_other_classes(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_preprocess_hook", lambda: None)
    rng = np.random.default_rng(0)
    for name in ("cat", "dog", "owl"):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(6):
            canvas = np.zeros((40, 40), np.uint8)
            top, left = rng.integers(2, 20, 2)
            canvas[top:top + 15, left:left + 10] = 255
            Image.fromarray(canvas).save(tmp_path / "pets" / name / f"{i}.png")
    s = explore(f"folder:{tmp_path / 'pets'}", out=tmp_path / "out")
    assert s["classes"] == ["cat", "dog", "owl"] and s["image_shape"] == [28, 28] and s["size"] == 18
    assert sum(s["train"]["class_counts"].values()) + sum(s["test"]["class_counts"].values()) == 18
    for path in s["figures"].values():
        with Image.open(path) as image:
            assert image.width >= 300


def test_python_m_digitlab_explore_help():
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "digitlab", "explore", "--help"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for text in ("--json", "--out", "--data-dir", "DATASET".lower()):
        assert text in result.stdout.lower()
