"""Progress, cancel and per-stage timing of one segmentation."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable

import torch

from ._result import SegmentationCancelled

__all__ = ["ProgressCallback", "CancelCallback", "Reporter", "StageTimer"]

ProgressCallback = Callable[[int, int, str], None]
CancelCallback = Callable[[], bool]


class StageTimer:
    """Seconds per named stage; synchronises CUDA so GPU work is charged to its stage."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start


class Reporter:
    """Progress and cancel callbacks behind one object."""

    def __init__(self, progress: ProgressCallback | None, cancel: CancelCallback | None, total: int):
        self.progress, self.cancel, self.total, self.done = progress, cancel, total, 0

    def check(self) -> None:
        """Raise :class:`SegmentationCancelled` if the cancel callback says so."""
        if self.cancel is not None and self.cancel():
            raise SegmentationCancelled("Segmentation cancelled.")

    def bands(self, steps: int, message: str) -> Callable[[int, int], None]:
        """An ``on_band(rows_done, rows)`` callback: ``steps`` progress steps over a
        banded stage, and a cancel check after every band (each takes well under
        a second, so Cancel stops the full-resolution stage promptly too)."""
        sent = 0

        def on_band(done: int, rows: int) -> None:
            nonlocal sent
            self.check()
            target = done * steps // max(rows, 1)
            while sent < min(target, steps):
                sent += 1
                self.step(f"{message} {sent}/{steps}")

        return on_band

    def step(self, message: str) -> None:
        """Count one step done and report it."""
        self.done += 1
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total, message)
