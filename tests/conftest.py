"""Shared fixtures. Tests never touch the network: real data comes from ../shared/datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
