"""The parity data: the authors' CASS outputs on seeded random weights, shipped with the tests.

``tests/data/parity`` holds a copy of the team's ``shared/parity`` (2.4 MB): the reference
outputs, the input picture and ``seeded_weights.py`` (our own file, which draws the
deterministic random weights). It is part of the repository, so a fresh clone runs the
parity tests and never skips them. ``NAPARI_CASS_PARITY_DIR`` may point at another copy
(e.g. further reference cases); when it is set it must hold the files.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

SHIPPED_DIR = Path(__file__).resolve().parent / "data" / "parity"
FILES = ("seeded_weights.py", "inputs_astronaut.npz", "astronaut__voc20__exact.npz")


def find_parity_dir() -> Path:
    """The folder with the parity files; raises with what is missing and how to fix it."""
    override = os.environ.get("NAPARI_CASS_PARITY_DIR")
    folder = Path(override) if override else SHIPPED_DIR
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        where = "NAPARI_CASS_PARITY_DIR" if override else "the repository (tests/data/parity)"
        raise FileNotFoundError(
            f"Parity data missing in {folder} ({where}): {', '.join(missing)}. "
            "Restore tests/data/parity from git, or unset NAPARI_CASS_PARITY_DIR."
        )
    return folder


def seeded_weights() -> ModuleType:
    """Import the shipped ``seeded_weights.py`` (our own code, not a user file)."""
    path = find_parity_dir() / "seeded_weights.py"
    spec = importlib.util.spec_from_file_location("napari_cass_seeded_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PARITY_DIR = find_parity_dir()

# Kept for tests written when the data lived outside the repository: it no longer skips,
# it only requests the fixture below (which fails loudly if the data is missing).
needs_parity_data = pytest.mark.usefixtures("parity_dir")


@pytest.fixture
def parity_dir() -> Path:
    """The parity data folder (see :func:`find_parity_dir`)."""
    return find_parity_dir()
