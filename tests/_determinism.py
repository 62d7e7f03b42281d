"""pytest plugin for CI's second numeric run: deterministic torch algorithms, reported setup.

A test that passes only with one machine's float rounding (a threshold on a partial sum, a
near-tied argmax, an equality of floats) shows up when the same suite runs with another
BLAS thread count (GEMM blocking and reduction order change) and with
``torch.use_deterministic_algorithms(True)`` (other kernels, and an error for any op that
has no deterministic implementation). CI runs the numeric test files a second time as::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=tests python -m pytest -p _determinism \\
        tests/test_spectral.py tests/test_presence.py ...

Loaded with ``-p`` rather than from ``conftest.py`` so that the ordinary run is unchanged.
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # cuBLAS needs a fixed workspace to be deterministic; it must be set before CUDA starts.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    torch.use_deterministic_algorithms(True)
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_report_header(config: pytest.Config) -> str:
    import torch

    return (
        f"determinism run: torch.use_deterministic_algorithms={torch.are_deterministic_algorithms_enabled()}, "
        f"torch threads={torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
