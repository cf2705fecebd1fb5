"""Shared fixtures. Tests never touch the network: real data comes from ../shared/datasets."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/datasets is not present")
    return SHARED_DATA
