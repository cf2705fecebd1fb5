"""Many workers on one search: two `digitlab tune` processes share a study on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from conftest import require_binary
from optuna.trial import TrialState

pytestmark = pytest.mark.xdist_group("distributed")

ROOT = Path(__file__).resolve().parents[1]
PER_WORKER = (3, 2)  # trials each worker runs: different, so the count shows that both were recorded


def start_worker(url: str, study: str, n_trials: int, out: Path, runs: Path) -> subprocess.Popen:
    # Tiny trials: the 8x8 digits, one epoch of the notebook-004 MLP, one thread.
    cmd = [sys.executable, "-m", "digitlab", "tune", "--recipe", "notebook-004-mlp", "--epochs", "1",
           "--lr", "0.01..0.5", "--units", "16..64", "--n-trials", str(n_trials), "--threads", "1", "--no-prune",
           "--no-report", "--storage", url, "--study", study, "--out", str(out), "--runs-dir", str(runs), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_two_workers(url: str, tmp_path: Path, study: str = "shared") -> list[dict]:
    """Start both workers at once on one study; return each one's final JSON result."""
    procs = [start_worker(url, study, n, tmp_path / "tune", tmp_path / "runs") for n in PER_WORKER]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert events[-1]["event"] == "result", out[-2000:]
        results.append(events[-1])
    return results


def check_shared_study(url: str, results: list[dict], tmp_path: Path, study_name: str = "shared") -> None:
    study = optuna.load_study(study_name=study_name, storage=url)
    trials = study.get_trials(deepcopy=False)
    # all recorded, none lost or duplicated, every one finished
    assert len(trials) == sum(PER_WORKER)
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(sum(PER_WORKER)))
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    # each worker ran exactly its own trials, and the trials say which worker ran them
    mine = [r["new_trials"] for r in results]
    assert [len(m) for m in mine] == list(PER_WORKER)
    assert sorted(mine[0] + mine[1]) == sorted(numbers)
    workers = Counter(t.user_attrs["worker"] for t in trials)
    assert sorted(workers.values()) == sorted(PER_WORKER)
    # the best trial was retrained and tested once, by one worker, and is the study's best
    final = study.user_attrs["final"]
    assert final["trial"] == study.best_trial.number and 0 < final["test_accuracy"] <= 1
    assert [p.name for p in (tmp_path / "tune").glob("best-trial-*")] == [f"best-trial-{final['trial']}"]
    claims = [n for n in optuna.get_all_study_names(url) if n.startswith(study_name + ":")]
    assert claims == [f"{study_name}:final-{final['trial']}"]
    assert max(r["n_trials"] for r in results) == sum(PER_WORKER)  # the last to finish saw every trial
    tested = [r for r in results if r["test_accuracy"] is not None]
    assert tested and all(r["best_trial"] == final["trial"] and r["test_accuracy"] == final["test_accuracy"]
                          for r in tested)


def test_two_workers_share_one_sqlite_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    results = run_two_workers(url, tmp_path)
    check_shared_study(url, results, tmp_path)


# --- a real PostgreSQL server on 127.0.0.1 ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL cluster: trust auth, 127.0.0.1 on a free port, stopped at teardown.

    PostgreSQL refuses to run as root: as root the cluster is made and run by the 'postgres' user.
    """
    # CI must run this test: require_binary fails there (and skips elsewhere) when PostgreSQL is missing.
    bindir = Path(require_binary("initdb")).resolve().parent  # its siblings (createdb, pg_ctl) live there
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = [require_binary("runuser"), "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="digitlab-pg-"))
    if as_user:
        shutil.chown(root, user="postgres")
    data, port = root / "data", _free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=60)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
    opts = f"-h 127.0.0.1 -p {port} -k {root} -F -c max_connections=40 -c shared_buffers=16MB"
    try:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "-t", "60", "start")
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "digitlab")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/digitlab"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_postgresql_study(postgres_url: str, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    results = run_two_workers(postgres_url, tmp_path)
    check_shared_study(postgres_url, results, tmp_path)
    # A later call with --n-trials 0 reports the recorded best and test result without retraining.
    proc = start_worker(postgres_url, "shared", 0, tmp_path / "tune", tmp_path / "runs")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    result = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    final = optuna.load_study(study_name="shared", storage=postgres_url).user_attrs["final"]
    assert result["n_trials"] == sum(PER_WORKER) and result["new_trials"] == []
    assert result["best_trial"] == final["trial"] and result["test_accuracy"] == final["test_accuracy"]
    assert len(list((tmp_path / "tune").glob("best-trial-*"))) == 1
    assert time.perf_counter() - t0 < 120
