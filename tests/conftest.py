"""Shared fixtures: the real LSM data beside the repo, temporary folders, torch threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("SELMA3D_REAL_DATA", REPO.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Root of ../shared/data/real (read-only; never copied into the repo)."""
    if not REAL_DATA.exists():
        message = f"real test data not found at {REAL_DATA}; set SELMA3D_REAL_DATA"
        if os.environ.get("SELMA3D_REQUIRE_REAL_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return REAL_DATA


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch

        torch.set_num_threads(1)  # tests run on small tensors; 2 threads only contend
    except ImportError:
        pass
