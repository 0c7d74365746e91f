"""Shared fixtures: where the bundled demo sample and the full MILES set live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    return REPO / "resources" / "demo"


@pytest.fixture(scope="session")
def miles_dir() -> Path:
    """The full MILES set beside the checkout (``../shared/data/miles``) or $LATENTVO_MILES_DIR."""
    path = Path(os.environ.get("LATENTVO_MILES_DIR", REPO.parent / "shared" / "data" / "miles"))
    if not (path / "miles_spectra.fits").exists():
        pytest.fail(f"MILES data not found at {path}; set LATENTVO_MILES_DIR")
    return path
