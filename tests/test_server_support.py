"""Shared pieces of the server tests (no tests here): tiny segmenters, a gated or crashing wrapper."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

SMALL = {"short_side": 112, "mode": "whole"}  # one 112 px pass: fast on two cores


def tiny_segmenter(models=None, small: bool = True, **kwargs) -> Any:
    """A Segmenter on tiny random-weight models (fresh seeded models unless given)."""
    from napari_cass.engine import Segmenter, get_preset
    from napari_cass.engine.testing import tiny_models

    models = models or tiny_models()
    preset = get_preset("interactive")
    if small:
        preset = preset.with_(**SMALL)
    return Segmenter.from_models(*models, preset=preset, device="cpu", **kwargs)


def images(n: int, seed: int = 0, shape=(40, 52, 3)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


class Wrapped:
    """A Segmenter whose ``segment`` can be held at a gate, made slow, or made to crash.

    ``gate``: segment waits (bounded) until it is set. ``slow``: segment polls
    ``cancel`` for up to this many seconds first. Classes named "boom" raise.
    """

    def __init__(self, inner: Any, gate: threading.Event | None = None, slow: float = 0.0):
        self.inner, self.gate, self.slow = inner, gate, slow
        self.started = threading.Event()
        self.saw_cancel = threading.Event()
        self.calls: list[list[str]] = []  # class names of each call, in the order they ran
        self.active = self.max_active = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def segment(self, image, classes, progress=None, cancel=None, *, background=None):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.calls.append([getattr(c, "name", c) for c in classes])
        try:
            return self._segment(image, classes, progress, cancel, background)
        finally:
            with self._lock:
                self.active -= 1

    def _segment(self, image, classes, progress, cancel, background):
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(30), "test gate never opened"
        end = time.monotonic() + self.slow
        while time.monotonic() < end:
            if cancel is not None and cancel():
                self.saw_cancel.set()
                break
            time.sleep(0.01)
        if any(getattr(c, "name", "") == "boom" for c in classes):
            raise RuntimeError("simulated engine crash")
        return self.inner.segment(image, classes, progress, cancel, background=background)


def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)
