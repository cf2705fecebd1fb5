"""Data-parallel training: two processes on 127.0.0.1 (torchrun, gloo) against one, resume, sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from digitlab import distributed as dd
from digitlab.cli import app
from digitlab.config import TrainConfig, validate
from digitlab.errors import ConfigError
from digitlab.runs import Run
from digitlab.training import open_run, train

pytestmark = pytest.mark.xdist_group("distributed")

ROOT = Path(__file__).resolve().parents[1]
# An MNIST subset, SGD with momentum (the linear scaling rule's home ground), light augmentation so
# that the per-rank augmentation seeds are exercised; a constant rate so that a run extended by
# --resume must repeat an uninterrupted one exactly.
CFG = dict(
    dataset="mnist", model="mlp", model_options={"hidden": [128]}, train_subset=6000, val_size=1000, epochs=2,
    batch_size=64, optimizer="momentum", lr=0.05, schedule="constant", weight_decay=0.0, label_smoothing=0.0,
    augment=True, aug_shift=1.0, aug_rotate=5.0, aug_scale=0.05, aug_shear=0.05, precision="fp32", recipe="fast",
)
SAME_ROW = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")


def digitlab(*args: str, torchrun: int | None = None) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(torchrun)] \
        if torchrun else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, "-m", "digitlab", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


@pytest.fixture(scope="session")  # once per worker, however xdist orders the modules it is sent
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ddp")
    cfg_file = tmp / "config.json"
    cfg_file.write_text(json.dumps(CFG))
    # One process, in this one.
    one = train(TrainConfig(**CFG, threads=1, runs_dir=str(tmp / "one"), name="one", report=False),
                progress="quiet").path
    # Two processes through `digitlab train --nproc 2` (torchrun --standalone), JSON events on stdout.
    two = digitlab("train", "--config", str(cfg_file), "--nproc", "2", "--runs-dir", str(tmp / "two"), "--json")
    (tmp / "two-events.jsonl").write_text(two.stdout)
    # Two processes started by torchrun itself for one epoch, then extended to two by --resume.
    digitlab("train", "--config", str(cfg_file), "--epochs", "1", "--runs-dir", str(tmp / "res"), "--name", "r",
             "--no-report", "--quiet", torchrun=2)
    digitlab("train", "--resume", str(tmp / "res" / "r"), "--epochs", "2", "--quiet")
    [two_dir] = list((tmp / "two").iterdir())
    return {"one": one, "two": two_dir, "resumed": tmp / "res" / "r", "tmp": tmp}


def test_two_processes_reach_the_accuracy_of_one(runs: dict[str, Path]) -> None:
    one, two = Run.load(runs["one"]), Run.load(runs["two"])
    acc1, acc2 = one.metrics["test"]["accuracy"], two.metrics["test"]["accuracy"]
    assert acc1 > 0.88 and acc2 > 0.88
    assert abs(acc1 - acc2) < 0.03, (acc1, acc2)
    # batch 64 per process, 128 in all: half the steps, twice the learning rate (linear scaling)
    assert [r["lr"] for r in two.history] == [pytest.approx(0.1)] * 2
    assert [r["lr"] for r in one.history] == [pytest.approx(0.05)] * 2


def test_the_run_folder_is_complete_and_written_once(runs: dict[str, Path]) -> None:
    two = runs["two"]
    assert len(list(two.parent.iterdir())) == 1  # one run folder, named once for both processes
    # the same files as one process (which skipped the report): nothing per rank, nothing missing
    report = {f for f in files(two) if f == "report.html" or f.startswith("figures/")}
    assert "report.html" in report and files(two) - report == files(runs["one"])
    assert {"config.json", "history.csv", "metrics.json", "model.safetensors", "checkpoint/state.json"} <= files(two)
    run = Run.load(two)
    assert [int(r["epoch"]) for r in run.history] == [1, 2]
    assert (two / "history.csv").read_text().count("\n") == 3
    assert run.config["nproc"] == 2
    assert json.loads((two / "checkpoint" / "state.json").read_text())["world_size"] == 2
    # only rank 0 reports: one line per epoch and one 'done', not one per process
    events = [json.loads(line) for line in (runs["tmp"] / "two-events.jsonl").read_text().splitlines()
              if line.startswith("{")]
    kinds = [e["event"] for e in events]
    assert kinds.count("epoch") == 2 and kinds.count("done") == 1 and kinds.count("config") == 1
    assert any("data-parallel: 2 processes (gloo)" in e.get("text", "") for e in events)


def test_resume_of_a_two_process_run_repeats_it_exactly(runs: dict[str, Path]) -> None:
    straight, resumed = Run.load(runs["two"]), Run.load(runs["resumed"])
    assert [[r[k] for k in SAME_ROW] for r in resumed.history] == [[r[k] for k in SAME_ROW] for r in straight.history]
    assert resumed.metrics["test"]["accuracy"] == straight.metrics["test"]["accuracy"]
    # a different number of processes would change shards, steps and learning rate: refused
    with pytest.raises(ConfigError, match="same number"):
        open_run(None, runs["resumed"], None)


def test_shards_partition_each_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    assert torch.equal(dd.shard(perm), perm) and dd.shard_size(11) == 11
    monkeypatch.setattr(dd, "world_size", lambda: 3)
    parts = []
    for r in range(3):
        monkeypatch.setattr(dd, "rank", lambda r=r: r)
        parts.append(dd.shard(perm))
    assert [len(p) for p in parts] == [dd.shard_size(11)] * 3 == [4, 4, 4]
    joined = torch.cat(parts)
    assert set(joined.tolist()) == set(range(11)) and len(joined) == 12  # one index padded in once
    assert dd.lr_factor("linear", 4) == 4 and dd.lr_factor("sqrt", 4) == 2 and dd.lr_factor("none", 4) == 1


def test_options_and_their_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nproc"):
        validate(TrainConfig(nproc=0))
    with pytest.raises(ConfigError, match="lr scaling"):
        validate(TrainConfig(lr_scaling="cubic"))
    with pytest.raises(ConfigError, match="Callbacks"):
        train(TrainConfig(nproc=2, runs_dir=str(tmp_path)), callbacks=[lambda state: None], progress="quiet")
    out = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "--nproc" in out and "--lr-scaling" in out
