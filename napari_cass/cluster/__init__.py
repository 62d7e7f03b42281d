"""Batch segmentation on a Ray cluster (``napari-cass segment ... --ray [ADDRESS]``).

Qt-free, and importable without Ray (Ray is imported when a run starts; install it with
``pip install "napari-cass[cluster]"``). A run is the single-machine CLI's run: the same
checks, output names, resume decision and ``classes.json`` (its own code, in
:mod:`napari_cass.cli` and :mod:`napari_cass.io`), with the per-image loop replaced by a
Ray Data pipeline: :func:`segment_on_ray` (driver), :class:`SegmentWorker` (one actor per
GPU, or per few CPUs, loading the models once), :func:`plan_workers` (pool size from the
cluster's nodes).
"""

from __future__ import annotations

from ._driver import FAILED_FILE, WORKER_RETRIES, require_ray, segment_on_ray
from ._layout import DEFAULT_CPU_THREADS, WorkerLayout, plan_workers
from ._worker import SEGMENT_ATTEMPTS, SegmentWorker, TableGate

__all__ = [
    "DEFAULT_CPU_THREADS",
    "FAILED_FILE",
    "SEGMENT_ATTEMPTS",
    "WORKER_RETRIES",
    "SegmentWorker",
    "TableGate",
    "WorkerLayout",
    "plan_workers",
    "require_ray",
    "segment_on_ray",
]
