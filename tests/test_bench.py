"""The benchmarks: the quick training benchmark end to end, inference and robustness on a tiny run.

No timing assertions (the machine is shared): these keep the benchmark code from rotting.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from digitlab.bench import (
    ENTRIES,
    QUICK_TARGETS,
    ROBUST_SETS,
    _PerSampleMNIST,
    _Tracker,
    print_train,
    robust_sets,
    shift_tta_proba,
    speedups,
)
from digitlab.cli import app
from digitlab.data import load_dataset

pytestmark = pytest.mark.xdist_group("train")


def test_bench_train_quick_runs_every_recipe_and_the_command(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "train", "--quick", "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data == json.loads(out.read_text())
    assert set(data["recipes"]) == set(ENTRIES)
    assert data["targets"] == list(QUICK_TARGETS)
    for key, r in data["recipes"].items():
        assert r["runs"][0]["curve"], key
        assert 0.0 < r["final_accuracy"] <= 1.0
        assert r["train_seconds"] > 0
        # the references are fed as the originals: fp32
        if ENTRIES[key].reference:
            assert r["precision"] == "fp32"
    assert data["recipes"]["pytorch-example-dataloader"]["loader"] == "dataloader"
    assert set(data["speedups"]) == set(ENTRIES) - {"fast"}
    cmd = data["train_command"]
    assert cmd["wall_seconds"] > cmd["train_seconds"] > 0 and 0.5 < cmd["test_accuracy"] <= 1.0
    assert data["machine"]["cores"] >= 1 and data["machine"]["torch"] == torch.__version__
    assert data["compute_floor"]["train_flops_per_epoch"] > 0 and data["compute_floor"]["matmul_flops_bf16"] > 0
    # the text report of the same result
    console = Console(record=True, width=160)
    print_train(data, console)
    text = console.export_text()
    assert "Training seconds to test accuracy" in text and "pytorch-example-dataloader" in text
    assert "Speed-up of 'fast'" in text and "compute floor" in text


def test_bench_train_errors_are_one_line():
    runner = CliRunner()
    bad = runner.invoke(app, ["bench", "train", "--recipes", "fast,nope"])
    assert bad.exit_code == 2 and "Unknown benchmark recipe 'nope'" in bad.output
    bad = runner.invoke(app, ["bench", "train", "--recipes", "fast", "--max-seconds-per-recipe", "0"])
    assert bad.exit_code == 2 and "must be positive" in bad.output


def test_tracker_records_targets_and_caps():
    accs = iter([0.5, 0.85, 0.93, 0.96])
    tr = _Tracker(lambda: next(accs), every=10, targets=(0.8, 0.9, 0.95), max_seconds=None, max_steps=None)
    stops = [tr.point(step, 40, step / 10) for step in range(1, 41)]
    assert stops.index(True) == 39 and sum(stops) == 1  # evaluated at 10, 20, 30, 40; stops at the last target
    res = tr.result()
    assert res["seconds_to"] == {"0.800": 2.0, "0.900": 3.0, "0.950": 4.0} and not res["capped"]
    capped = _Tracker(lambda: 0.5, every=100, targets=(0.9,), max_seconds=3.0, max_steps=None)
    assert not capped.point(1, 100, 1.0) and capped.point(2, 100, 3.5)
    assert capped.result()["capped"] and capped.result()["seconds_to"] == {"0.900": None}


def test_speedups_ratio_and_lower_bound():
    results = {
        "fast": {"seconds_to": {"0.990": 2.0, "0.995": None}, "train_seconds": 5.0},
        "ref": {"seconds_to": {"0.990": 40.0, "0.995": None}, "train_seconds": 100.0},
        "slow": {"seconds_to": {"0.990": None, "0.995": None}, "train_seconds": 60.0},
    }
    sp = speedups(results, (0.99, 0.995))
    assert sp["ref"]["0.990"] == {"ratio": 20.0, "lower_bound": False}
    assert sp["slow"]["0.990"] == {"ratio": 30.0, "lower_bound": True}
    assert sp["ref"]["0.995"] is None


def test_per_sample_dataset_matches_totensor_normalize():
    ds = load_dataset("mnist")
    item, label = _PerSampleMNIST(ds.train_images[:3], ds.train_labels[:3])[1]
    expected = (torch.as_tensor(ds.train_images[1]).float() / 255 - 0.1307) / 0.3081
    assert item.shape == (1, 28, 28) and item.dtype == torch.float32 and label == int(ds.train_labels[1])
    torch.testing.assert_close(item[0], expected)


def test_robust_sets_are_deterministic_and_change_the_digits():
    x = load_dataset("mnist").test_images[:64]
    a, b = robust_sets(x), robust_sets(x)
    assert list(a) == list(ROBUST_SETS)
    for name in ROBUST_SETS:
        assert a[name].dtype == torch.uint8 and a[name].shape == (64, 28, 28)
        assert torch.equal(a[name], b[name])
    assert torch.equal(a["clean"], torch.as_tensor(x))
    ink = {k: v.float().sum().item() for k, v in a.items()}
    assert ink["thicker"] > 1.3 * ink["clean"] > 1.3 * 1.3 * ink["thinner"]
    assert ink["scale 1.2x"] > ink["clean"] > ink["scale 0.8x"]
    for name in ("rotate ±15°", "shear ±0.3", "shift 3px"):
        assert not torch.equal(a[name], a["clean"]), name
        assert abs(ink[name] - ink["clean"]) < 0.1 * ink["clean"], name  # moved, not erased
    # a 3-pixel shift moves the centre of mass by 3 pixels (image 0 goes right)
    cols = torch.arange(28).float()
    com = [(v[0].float().sum(0) * cols).sum() / v[0].float().sum() for v in (a["clean"], a["shift 3px"])]
    assert com[1] - com[0] == pytest.approx(3.0, abs=0.3)


def test_shift_tta_averages_five_passes():
    x = np.zeros((2, 28, 28), np.uint8)
    x[:, 10:18, 10:18] = 255
    seen = []

    def proba(images: np.ndarray) -> np.ndarray:
        seen.append(images.copy())
        p = np.zeros((len(images), 10), np.float32)
        p[:, 0] = images.reshape(len(images), -1)[:, :14 * 28].mean(1) / 255  # ink in the upper half
        p[:, 1] = 1 - p[:, 0]
        return p

    out = shift_tta_proba(proba, x)
    passes = list(seen)
    assert len(passes) == 5 and out.shape == (2, 10)
    np.testing.assert_allclose(out, np.mean([proba(s) for s in passes], axis=0), rtol=1e-6)
    assert all(s.sum() == x.sum() for s in passes)  # shifts by one pixel lose no ink here
    assert sum(np.array_equal(s, x) for s in passes) == 1  # the original once, four shifted copies


def test_bench_robust_tta_does_not_shift_a_model_that_shifts_itself(quick_run, tmp_path, monkeypatch):
    """--tta averages the 1-pixel shifts of the models that do not already do it (model.json "tta")."""
    import shutil

    import digitlab.bench as bench

    tta_run = tmp_path / "tta"
    shutil.copytree(quick_run, tta_run)
    meta = json.loads((tta_run / "model.json").read_text())
    (tta_run / "model.json").write_text(json.dumps({**meta, "tta": "shift"}))
    calls = []
    real = bench.shift_tta_proba
    monkeypatch.setattr(bench, "shift_tta_proba", lambda f, x: calls.append(len(x)) or real(f, x))
    own = bench.bench_robust(tta_run, tta=True, limit=50)
    assert calls == [] and own["tta"]
    assert own["accuracy"] == bench.bench_robust(tta_run, limit=50)["accuracy"]
    both = bench.bench_robust([tta_run, quick_run], tta=True, limit=50)  # only the plain model is shifted here
    assert calls == [50] * len(both["accuracy"])


def test_bench_predict_and_robust_on_a_quick_run(quick_run):
    # The session's quick model (conftest), which the predict and serve tests train anyway.
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "predict", str(quick_run), "--json", "--repeats", "1",
                                 "--latency-samples", "5", "--threads", "1"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["images_per_second"] > 0 and data["latency_ms_median"] > 0 and data["images"] == 10_000
    assert 0.5 < data["test_accuracy"] <= 1.0
    result = runner.invoke(app, ["bench", "robust", str(quick_run), "--json", "--limit", "300"])
    assert result.exit_code == 0, result.output
    rob = json.loads(result.output)
    assert list(rob["accuracy"]) == list(ROBUST_SETS) and rob["images"] == 300
    assert all(0.0 <= v <= 1.0 for v in rob["accuracy"].values())
    assert rob["worst_transformed"] <= rob["mean_transformed"] <= max(rob["accuracy"].values())
    text = runner.invoke(app, ["bench", "robust", str(quick_run), str(quick_run), "--tta", "--limit", "100"])
    assert text.exit_code == 0 and "shift TTA" in text.output and "thinner" in text.output
    missing = runner.invoke(app, ["bench", "predict", str(quick_run) + "-nope"])
    assert missing.exit_code == 2 and "No run found" in missing.output
