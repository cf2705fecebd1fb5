"""Hyperparameter search: search spaces, a resumed study, pruning, grid search, shared storage, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from PIL import Image
from typer.testing import CliRunner

from digitlab.cli import app
from digitlab.config import TrainConfig
from digitlab.errors import ConfigError
from digitlab.tune import (
    PRESETS,
    SearchSpace,
    apply_values,
    build_search,
    default_space,
    parse_dimension,
    preset_config,
    tune,
)

DIGITS = dict(dataset="digits", model="mlp", model_options={"hidden": [32]}, optimizer="sgd", momentum=0.0, lr=0.1,
              schedule="constant", weight_decay=0.0, label_smoothing=0.0, scaler="standard", batch_size=32,
              epochs=3, threads=1, report=False)


def digits_base(tmp_path: Path, **kw) -> TrainConfig:
    return TrainConfig(**{**DIGITS, "runs_dir": str(tmp_path), **kw})


def png_ok(path: Path) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= 800 and im.size[1] >= 400


# --- the search space -------------------------------------------------------------------------------


def test_parse_dimension_forms() -> None:
    assert parse_dimension("optimizer", "sgd,adam").choices == ["sgd", "adam"]
    lr = parse_dimension("lr", "1e-5..1e-1")
    assert (lr.low, lr.high, lr.log, lr.is_int) == (1e-5, 0.1, True, False)  # scale parameters: log by default
    units = parse_dimension("units", "50..300")
    assert (units.low, units.high, units.log, units.is_int) == (50, 300, False, True)
    assert parse_dimension("dropout", "0.1..0.5:log").log and not parse_dimension("lr", "1e-3..1:linear").log
    assert parse_dimension("n_hidden", [1, 2]).choices == [1, 2]
    assert parse_dimension("lr", {"low": 1e-4, "high": 1e-2}).log
    assert parse_dimension("epochs", "5").fixed
    assert parse_dimension("lr", "1e-5..1e-1").grid(5) == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
    assert parse_dimension("units", "50..300").grid(3) == [50, 175, 300]
    for bad, match in (("1..0.1", "LOW <= HIGH"), ("0..1:log", "positive"), ("a..b", "two numbers"),
                       ("1..2:cubic", ":log or :linear")):
        with pytest.raises(ConfigError, match=match):
            parse_dimension("dropout" if "log" in bad else "lr", bad)


def test_space_maps_to_config_and_is_conditional_on_the_model() -> None:
    base = TrainConfig(model="mlp", model_options={"hidden": [300, 100], "activation": "relu"})
    cfg = apply_values(base, {"n_hidden": 1, "units": 64, "activation": "tanh", "lr": 0.01, "batch_size": 64})
    assert cfg.model_options == {"hidden": [64], "activation": "tanh"} and (cfg.lr, cfg.batch_size) == (0.01, 64)
    assert apply_values(base, {"n_hidden": 3}).model_options["hidden"] == [300, 300, 300]

    space = SearchSpace.from_dict({"model": ["mlp", "fast"], "units": "16..64", "activation": "relu,tanh",
                                   "width": [8, 16], "dropout": "0..0.5", "lr": "1e-3..1e-1"})
    space.check(base)
    fast = space.sample(optuna.trial.FixedTrial({"model": "fast", "width": 8, "dropout": 0.2, "lr": 0.01}), base)
    assert fast.model == "fast" and fast.model_options == {"width": 8, "dropout": 0.2} and fast.lr == 0.01
    mlp = space.sample(optuna.trial.FixedTrial({"model": "mlp", "units": 20, "activation": "tanh", "dropout": 0.1,
                                                "lr": 0.05}), base)
    assert mlp.model_options == {"hidden": [20, 20], "activation": "tanh", "dropout": 0.1}

    with pytest.raises(ConfigError, match="'colour' is neither"):
        SearchSpace.from_dict({"colour": ["red", "blue"]}).check(base)
    with pytest.raises(ConfigError, match="empty"):
        SearchSpace.from_dict({"lr": "0.1"}).check(base)
    with pytest.raises(ConfigError, match="unknown model"):
        SearchSpace.from_dict({"model": ["mlp", "nope"]}).check(base)


def test_presets_and_build_search(tmp_path: Path) -> None:
    space, base = preset_config("notebook-003")
    assert set(space.dims) == {"n_hidden", "units", "lr"} and space.dims["lr"].choices == [0.1, 0.01, 1e-3, 1e-4, 1e-5]
    assert (base.dataset, base.split, base.optimizer, base.epochs, base.batch_size) == (
        "fashion-mnist", "notebook-003", "sgd", 30, 32)
    assert base.early_stopping and base.patience == 10 and base.monitor == "val_loss"
    assert "mlp" in PRESETS
    spec = tmp_path / "space.toml"
    spec.write_text('[space]\nlr = {low = 1e-3, high = 0.3}\noptimizer = ["sgd", "adam"]\n'
                    '[train]\ndataset = "digits"\nepochs = 4\n')
    space, base = build_search("notebook-003", spec, {"units": "10..20", "dropout": None}, None, None, {"epochs": 2})
    assert space.dims["lr"].low == 1e-3 and space.dims["units"].high == 20 and "optimizer" in space.dims
    assert (base.dataset, base.epochs, base.recipe) == ("digits", 2, "notebook-003-mlp")
    with pytest.raises(ConfigError, match="Unknown tuning preset"):
        build_search("notebook-999")


# --- studies ------------------------------------------------------------------------------------------


def test_tune_resumes_prunes_retrains_once_and_plots(tmp_path: Path) -> None:
    base = digits_base(tmp_path)
    space = {"lr": [0.1, 1e-5], "units": "16..64"}
    first = tune(space, base, n_trials=7, sampler="random", study_name="s1", progress="quiet")
    assert first.new_trials == list(range(7)) and first.n_trials == 7
    states = {t["number"]: t["state"] for t in first.trials}
    pruned = [t for t in first.trials if t["state"] == "PRUNED"]
    # a trial at lr 1e-5 learns nothing; once 4 trials are done the median pruner stops such trials
    assert pruned and all(t["params"]["lr"] == 1e-5 and t["epochs"] == 2 for t in pruned), states
    assert first.best_params["lr"] == 0.1 and first.best_value > 0.8
    # the best config was retrained once, deterministically, and tested
    metrics = json.loads((first.final_run / "metrics.json").read_text())
    assert metrics["val"]["accuracy"] == pytest.approx(first.best_value)
    assert first.test_accuracy == pytest.approx(metrics["test"]["accuracy"])
    assert first.path == tmp_path / "tune-s1" and (first.path / "study.db").is_file()
    for name in ("optimization_history", "param_importances", "parallel_coordinate"):
        png_ok(first.figures[name])
    assert len((first.path / "trials.csv").read_text().splitlines()) == 8
    # nothing but the tune folder in the runs folder: trials ran in temporary folders
    assert [p.name for p in tmp_path.iterdir()] == ["tune-s1"]

    # asked again, the same best trial is reported from the study: no second look at the test set
    mtime = (first.final_run / "metrics.json").stat().st_mtime_ns
    again = tune(space, base, n_trials=0, study_name="s1", progress="quiet")
    assert again.new_trials == [] and again.best_trial == first.best_trial
    assert again.test_accuracy == first.test_accuracy
    assert (first.final_run / "metrics.json").stat().st_mtime_ns == mtime

    second = tune(space, base, n_trials=2, sampler="random", study_name="s1", final=False, progress="quiet")
    assert second.new_trials == [7, 8] and second.n_trials == 9  # the study continued
    assert second.test_accuracy == (first.test_accuracy if second.best_trial == first.best_trial else None)
    saved = json.loads((first.path / "result.json").read_text())
    assert saved["n_trials"] == 9 and saved["best_trial"] == second.best_trial


def test_grid_sampler_covers_the_grid_once(tmp_path: Path) -> None:
    space = {"lr": [0.1, 0.01], "n_hidden": [1, 2]}
    result = tune(space, digits_base(tmp_path, epochs=1), n_trials=10, sampler="grid", prune=False, final=False,
                  study_name="g", progress="quiet")
    combos = {(t["params"]["lr"], t["params"]["n_hidden"]) for t in result.trials}
    assert result.n_trials == 4 and len(combos) == 4
    assert result.final_run is None and result.test_accuracy is None
    # too few completed trials for importances is a note, not a crash
    one = tune({"lr": "0.01..0.1"}, digits_base(tmp_path, epochs=1), n_trials=1, final=False, study_name="one",
               progress="quiet")
    assert "param_importances" not in one.figures and any("importance" in n for n in one.notes)


def test_shared_storage_url_and_two_folders(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    space = {"lr": "0.01..0.3"}
    a = tune(space, digits_base(tmp_path, epochs=2), n_trials=2, storage=url, study_name="shared",
             out=tmp_path / "a", prune=False, progress="quiet")
    b = tune(space, digits_base(tmp_path, epochs=2), n_trials=1, storage=url, study_name="shared",
             out=tmp_path / "b", prune=False, final=False, progress="quiet")
    assert a.new_trials == [0, 1] and b.new_trials == [2] and b.n_trials == 3
    # the other worker reports the recorded test result of the best trial (if it still is the best)
    assert b.test_accuracy == (a.test_accuracy if b.best_trial == a.best_trial else None)
    cfg = optuna.load_study(study_name="shared", storage=url).best_trial.user_attrs["config"]
    assert cfg["dataset"] == "digits" and "runs_dir" not in cfg  # every trial carries its full config


def test_tune_refuses_bad_setups(tmp_path: Path) -> None:
    space = {"lr": "0.01..0.1"}
    with pytest.raises(ConfigError, match="validation split"):
        tune(space, digits_base(tmp_path, split="none"), n_trials=1, progress="quiet")
    with pytest.raises(ConfigError, match="Unknown sampler"):
        tune(space, digits_base(tmp_path), sampler="anneal", progress="quiet")
    with pytest.raises(ConfigError, match="storage"):
        tune(space, digits_base(tmp_path), storage="nosuchdb://x/y", progress="quiet")


def test_cli_tune_twice_continues_the_study(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["tune", "--preset", "notebook-003", "--dataset", "digits", "--split", "default", "--epochs", "2",
            "--units", "16..48", "--n-trials", "2", "--threads", "1", "--runs-dir", str(tmp_path), "--no-prune",
            "--no-report"]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    events = [json.loads(line) for line in res.output.splitlines()]
    assert [e["number"] for e in events if e["event"] == "trial"] == [0, 1]
    result = events[-1]
    assert result["event"] == "result" and result["study_name"] == "notebook-003"
    assert Path(result["final_run"]).is_dir() and 0 < result["test_accuracy"] <= 1

    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "trial   2" in res.output and "trial   3" in res.output and "best trial #" in res.output
    assert "study notebook-003: 4 trials" in res.output


def test_cli_tune_without_a_space_searches_the_default_space_and_continues(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["tune", "--dataset", "digits", "--n-trials", "3", "--threads", "1", "--runs-dir", str(tmp_path),
            "--no-report"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "default space of model fast" in first.output and "study digits-search: 3 trials" in first.output
    second = runner.invoke(app, [*args, "--json"])
    assert second.exit_code == 0, second.output
    result = [json.loads(line) for line in second.output.splitlines()][-1]
    assert result["n_trials"] == 6 and result["new_trials"] == [3, 4, 5]
    study = optuna.load_study(study_name="digits-search", storage=result["storage"])
    assert len(study.trials) == 6  # one database holds both calls' trials
    searched = set(study.trials[0].params)
    assert searched == {"lr", "batch_size", "width", "weight_decay"}


def test_default_space_follows_the_model() -> None:
    mlp = default_space(TrainConfig(model="mlp", lr=0.01, batch_size=64))
    assert set(mlp.dims) == {"lr", "batch_size", "units", "weight_decay"}
    assert (mlp.dims["lr"].low, mlp.dims["lr"].high, mlp.dims["lr"].log) == (0.001, 0.1, True)
    assert mlp.dims["batch_size"].choices == [32, 64, 128]
    logreg = default_space(TrainConfig(model="logreg"))
    assert set(logreg.dims) == {"lr", "batch_size", "weight_decay"}  # nothing to widen
    fast = default_space(TrainConfig(model="fast", model_options={"width": 24}))
    assert fast.dims["width"].choices == [12, 24, 48]


def test_a_worker_between_two_trials_keeps_the_test_set_closed(tmp_path: Path) -> None:
    # Another worker on the roll call (listed, no trial running at this moment): the best may still
    # change, so this worker does not retrain; the last one to finish retrains once.
    from digitlab.tune.storage import enlist_worker, other_workers, retire_worker

    url = f"sqlite:///{tmp_path / 'roll.db'}"
    study = optuna.create_study(storage=url, study_name="roll", direction="maximize")
    other = enlist_worker(url, study)
    assert other_workers(url, study) == 1
    space, base = {"lr": "0.01..0.3"}, digits_base(tmp_path, epochs=1)
    first = tune(space, base, n_trials=1, storage=url, study_name="roll", progress="quiet")
    assert first.final_run is None and first.test_accuracy is None
    assert any("still searching" in n for n in first.notes)
    assert other_workers(url, study) == 1  # this worker took only its own marker off
    retire_worker(url, other)
    assert other_workers(url, study) == 0
    last = tune(space, base, n_trials=1, storage=url, study_name="roll", progress="quiet")
    assert last.final_run is not None and last.final_run.name == f"best-trial-{last.best_trial}"
