"""Where the parity data of ``shared/parity`` lies (beside the checkout, or NAPARI_CASS_PARITY_DIR)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_CANDIDATES = [
    os.environ.get("NAPARI_CASS_PARITY_DIR", ""),
    str(Path(__file__).resolve().parents[1] / "shared" / "parity"),
    str(Path(__file__).resolve().parents[2] / "shared" / "parity"),
]
PARITY_DIR = next((Path(c) for c in _CANDIDATES if c and (Path(c) / "seeded_weights.py").is_file()), None)

needs_parity_data = pytest.mark.skipif(
    PARITY_DIR is None,
    reason="parity data (shared/parity) is not beside this checkout; set NAPARI_CASS_PARITY_DIR",
)


@pytest.fixture
def parity_dir() -> Path:
    if PARITY_DIR is None:
        pytest.fail("shared/parity not found: set NAPARI_CASS_PARITY_DIR")
    return PARITY_DIR
