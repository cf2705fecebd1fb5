"""Shared fixtures. Tests never touch the network: real data comes from ../shared/datasets."""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

import pytest

# Under pytest-xdist each worker gets one thread: two workers with two OpenMP threads each on two
# cores spin against each other and run many times slower than either alone.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "datasets"

if SHARED_DATA.is_dir():
    os.environ.setdefault("DIGITLAB_DATA_DIR", str(SHARED_DATA))
# Keep the user's real cache out of the tests.
os.environ.setdefault("DIGITLAB_CACHE_DIR", str(ROOT / ".pytest_cache" / "digitlab-cache"))
os.environ.setdefault("MPLBACKEND", "Agg")
# Never the network: a dataset missing from the shared data would be fetched from public mirrors;
# point them at a closed local port, so such a test fails at once instead of downloading.
os.environ["DIGITLAB_FASHION_MIRRORS"] = "http://127.0.0.1:9/"


def require_binary(name: str) -> str:
    """The path of program ``name`` (on PATH, or PostgreSQL's /usr/lib/postgresql/*/bin): a missing one
    skips the test locally and fails it under CI (CI=true), which must prove what it runs."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                        None)
    if found:
        return found
    message = f"'{name}' is not installed (see .ci/run for the packages that provide it)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message}; CI must not skip this test", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/datasets is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory) -> Path:
    """A quick MNIST model (1 epoch on 10,000 images, ~97.5%), trained once per test worker and shared
    by the predict, fields, export and serve tests."""
    from digitlab.config import TrainConfig
    from digitlab.training import train

    runs = tmp_path_factory.getbasetemp() / "digitlab-quick-model"
    if not (runs / "quick" / "model.json").is_file():
        train(TrainConfig(train_subset=10_000, epochs=1, report=False, runs_dir=str(runs), name="quick", threads=1),
              progress="quiet")
    return runs / "quick"


@pytest.fixture(scope="session")
def predictor(quick_run):
    from digitlab.predict import Predictor

    return Predictor.from_run(quick_run)
