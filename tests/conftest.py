"""Fixtures shared by the whole suite: the real data sets and small random BLO-SAM models."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT / ".." / "shared" / "data"

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n 2: one core per worker, no oversubscription
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the commands the tests start inherit it


@pytest.fixture
def real_data() -> Path:
    """The real data sets, or a skip when this machine does not have them."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not found at {REAL_DATA.resolve()} (only on development machines)")
    return REAL_DATA


@pytest.fixture(autouse=True)
def _quiet_monai_dicom_warning():
    # MONAI warns on every LoadImage that the optional nvImageCodec DICOM plugin is missing.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
        yield


@pytest.fixture
def tiny_net():
    """A small random BLO-SAM: tiny ViT encoder, SAM's real prompt encoder and decoder shapes."""
    from bundle.networks import BLOSAM

    torch.manual_seed(0)
    return BLOSAM("sam_tiny", num_classes=1)


def pytest_collection_modifyitems(config, items):
    """Real-data tests first: the longest (a smoke few-shot grid, minutes) then runs beside the rest in
    the other worker (pytest -n 2) instead of alone at the end."""

    def rank(item) -> int:
        return 0 if item.path.name == "test_realdata.py" else 1 if item.get_closest_marker("realdata") else 2

    items.sort(key=rank)
