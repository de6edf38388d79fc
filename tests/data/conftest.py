"""Shared fixtures for the data tests."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


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
