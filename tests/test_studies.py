"""Notebook 004's studies on 8x8 digits: initialization x optimizer, learning rates, the LR range test."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from digitlab.cli import app
from digitlab.errors import ConfigError
from digitlab.studies import init_study, lr_find, lr_study, study_config, verdict

LN10 = math.log(10)


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_verdict_rules() -> None:
    assert verdict([2.0, 1.0, 0.5], 10) == "ok"
    assert verdict([2.6, 2.4, 2.2, 1.5], 10) == "slow"
    assert verdict([2.303, 2.303, 2.304], 10) == "stuck"
    assert verdict([9.5, 6.0, 4.0], 10) == "slow"  # falling fast but still above chance
    assert verdict([1.0, 0.5, 0.9, 0.4], 10) == "unstable"
    assert verdict([0.002, 0.0025, 0.001], 10) == "ok"  # tiny jitter is not instability
    assert verdict([], 10, diverged=True) == "diverged"


@pytest.mark.parametrize(
    "losses, start, expected",
    [
        # SGD at lr 10 on notebook 004's MLP: the first epoch averages 3x the initial loss, then it
        # recovers to a fair final loss (versions differ in how far): unstable either way
        ([8.21, 2.52, 2.32, 1.91, 1.12], 2.6, "unstable"),
        ([8.21, 2.52, 2.32, 1.91, 0.40], 2.6, "unstable"),
        ([33.7, 24.2, 24.4, 21.8, 19.7], 2.6, "unstable"),
        # a large initialization starts high and only falls: not the rate's fault
        ([9.5, 6.0, 4.0, 0.9], 14.0, "ok"),
        ([9.5, 6.0, 4.0], 14.0, "slow"),
        # a small rate: near its start the whole time
        ([2.59, 2.48, 2.37, 2.27, 2.18], 2.65, "slow"),
        ([2.31, 2.30, 2.30], 2.31, "stuck"),
        ([0.93, 0.31, 0.21, 0.16, 0.135], 2.4, "ok"),
        # up and down from epoch to epoch, never above the start
        ([1.5, 1.18, 1.11, 1.19, 1.32], 2.5, "unstable"),
        # a non-finite epoch loss is divergence even if training did not raise
        ([0.9, float("nan")], 2.4, "diverged"),
        ([0.9, float("inf")], None, "diverged"),
    ],
)
def test_verdict_on_synthetic_curves(losses: list[float], start: float | None, expected: str) -> None:
    assert verdict(losses, 10, start=start) == expected


def test_init_study_reproduces_the_notebook(tmp_path: Path) -> None:
    base = study_config(epochs=6, threads=1, runs_dir=str(tmp_path))
    result = init_study(base, out=tmp_path / "init", progress="quiet")
    loss = {(c.group, c.label): c.final_loss for c in result.curves}
    optimizers = ("SGD", "Adam", "SGD + Nesterov momentum")
    # zero init does not learn: the hidden units stay at tanh(0) = 0, so the loss stays at ln 10
    for opt in optimizers:
        assert abs(loss[opt, "zeros"] - LN10) < 0.03
        assert result.curve(opt, "zeros").status == "stuck"
    # Glorot learns with every optimizer
    for opt in optimizers:
        assert loss[opt, "Glorot uniform"] < 0.2
        assert result.curve(opt, "Glorot uniform").status == "ok"
    # with a tiny init plain SGD is stuck, Adam's per-weight step sizes still get it going
    assert abs(loss["SGD", "small (truncated normal, std 1e-3)"] - LN10) < 0.03
    assert loss["Adam", "small (truncated normal, std 1e-3)"] < 0.5 * loss["SGD", "small (truncated normal, std 1e-3)"]
    # a CSV of every curve and a readable three-panel figure
    with result.csv.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 * 6 and {r["group"] for r in rows} == set(optimizers)
    width, height = png_size(result.figure)
    assert width >= 1200 and height >= 400
    saved = json.loads((tmp_path / "init" / "init_study.json").read_text())
    assert len(saved["table"]) == 12 and not list(tmp_path.glob("curve-*"))  # no run folders left behind


def test_lr_study_slow_small_rates_and_unstable_or_diverging_large_ones(tmp_path: Path) -> None:
    base = study_config(model_options={"hidden": [100], "activation": "tanh"}, epochs=5, threads=1,
                        runs_dir=str(tmp_path))
    result = lr_study(base, lrs=(1e-3, 0.1, 10), out=tmp_path / "lr", progress="quiet")
    sgd, nesterov = "SGD (no momentum)", "SGD + Nesterov momentum 0.9"
    assert result.curve(sgd, "lr 0.001").status in ("slow", "stuck")
    assert result.curve(sgd, "lr 0.001").final_loss > 5 * result.curve(sgd, "lr 0.1").final_loss
    assert result.curve(sgd, "lr 0.1").status == "ok"
    # momentum makes up for part of a small rate (notebook 004)
    assert result.curve(nesterov, "lr 0.001").final_loss < 0.8 * result.curve(sgd, "lr 0.001").final_loss
    for group in (sgd, nesterov):
        assert result.curve(group, "lr 10").status in ("unstable", "slow", "diverged")
        assert result.curve(group, "lr 10").final_loss > result.curve(group, "lr 0.1").final_loss

    # a relu network at rate 100 blows up to NaN within the first epoch: recorded, not raised
    relu = base.replace(model_options={"hidden": [100], "activation": "relu"}, epochs=2)
    blown = lr_study(relu, lrs=(100,), out=tmp_path / "nan", progress="quiet")
    for curve in blown.curves:
        assert curve.status == "diverged" and curve.history == [] and "nan" in curve.error.lower()
    assert png_size(blown.figure)[0] > 800
    with pytest.raises(ConfigError, match="positive"):
        lr_study(base, lrs=(0.1, -1), out=tmp_path / "bad", progress="quiet")


def test_lr_find_suggests_a_rate_and_stops_on_divergence(tmp_path: Path) -> None:
    config = study_config(threads=1, runs_dir=str(tmp_path))
    result = lr_find(config, out=tmp_path / "find", progress="quiet")
    assert len(result.lrs) == 100 and not result.stopped_early
    assert result.lrs[0] == pytest.approx(1e-7) and result.lrs[-1] == pytest.approx(10)
    # on this setup plain SGD learns best around 0.1-1 (the lr study agrees): the suggestion is there
    assert 0.03 <= result.suggestion <= 5 and 0.01 <= result.min_loss_lr <= 1
    assert png_size(result.figure)[0] >= 800
    assert len(result.csv.read_text().splitlines()) == 101

    relu = config.replace(model_options={"hidden": [100], "activation": "relu"})
    blown = lr_find(relu, end_lr=1e4, num_iter=60, out=tmp_path / "blown", progress="quiet")
    assert blown.stopped_early and len(blown.lrs) < 60
    # it stops at the first step whose smoothed loss passes 4x the best so far (or at a NaN loss)
    crossed = [i for i, s in enumerate(blown.smoothed) if s > 4 * min(blown.smoothed[: i + 1])]
    assert crossed in ([], [len(blown.smoothed) - 1])
    with pytest.raises(ConfigError, match="start lr"):
        lr_find(config, start_lr=1.0, end_lr=0.1, progress="quiet")


def test_cli_study_and_lr_find(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["study", "init", "--epochs", "2", "--threads", "1", "--out", str(tmp_path / "i"),
                              "--json"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
    assert sum(1 for e in lines if e["event"] == "curve") == 12
    assert (tmp_path / "i" / "init_study.png").is_file()

    res = runner.invoke(app, ["study", "lr", "--lrs", "0.01,1", "--epochs", "2", "--threads", "1",
                              "--out", str(tmp_path / "l")])
    assert res.exit_code == 0, res.output
    assert "learning rate" in res.output and (tmp_path / "l" / "lr_study.csv").is_file()

    res = runner.invoke(app, ["lr-find", "--dataset", "digits", "--model", "mlp", "-o", "hidden=32",
                              "--optimizer", "sgd", "--batch-size", "32", "--threads", "1", "--num-iter", "40",
                              "--out", str(tmp_path / "f"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["steps"] <= 40 and out["suggestion"] > 0 and out["config"]["model_options"] == {"hidden": 32}

    res = runner.invoke(app, ["study", "lr", "--lrs", "0.1,abc", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--lrs" in res.output
