"""Engines (one per GPU) behind one bounded FIFO queue, and the store of uploaded images.

Each engine runs in its own worker thread and takes one job at a time, so jobs from
several annotators are served in arrival order and never share an engine mid-run. A full queue is
refused at once (the caller answers 429); a cancelled job is skipped, or stops at the
engine's next cancel check.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["EngineWorker", "ImageStore", "Job", "QueueFull"]


class QueueFull(RuntimeError):
    """The queue holds ``max_queue`` jobs already."""


@dataclass
class Job:
    """One segmentation request on its way through the queue."""

    id: str
    image: np.ndarray
    classes: list
    background: list[str] | None = None
    method: str | None = None
    preset: str | None = None
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    progress: tuple[int, int, str] = (0, 0, "queued")
    enqueued: float = field(default_factory=time.perf_counter)
    started: float | None = None

    def on_progress(self, done: int, total: int, message: str) -> None:
        self.progress = (int(done), int(total), str(message))

    def cancel(self) -> None:
        self.cancelled.set()


class _Engine:
    """One segmenter, its thread, and the method/preset it was built with."""

    def __init__(self, segmenter: Any, index: int):
        self.segmenter = segmenter
        self.index = index
        self.method = getattr(segmenter, "method", None)
        self.preset = getattr(segmenter, "preset", None)  # restored after a job that changed it
        self.thread: threading.Thread | None = None
        self.running: Job | None = None


class EngineWorker:
    """Run jobs on one or more segmenters (one per GPU), each in its own thread, from one
    FIFO queue of at most ``max_queue`` waiting jobs.

    Parameters
    ----------
    segmenters : Segmenter-like or list of them
        Anything with ``segment(image, classes, progress, cancel, background=...)``;
        ``set_method``/``set_preset`` are used when a job asks for another method/preset.
        Several segmenters must hold the same models (one copy per device).
    max_queue : int
        Jobs that may wait while the engines are busy.
    """

    def __init__(self, segmenters: Any, max_queue: int = 32):
        listed = list(segmenters) if isinstance(segmenters, (list, tuple)) else [segmenters]
        if not listed:
            raise ValueError("The server needs at least one segmenter.")
        self.engines = [_Engine(seg, i) for i, seg in enumerate(listed)]
        self.segmenter = listed[0]
        self.max_queue = int(max_queue)
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=self.max_queue)
        self._lock = threading.Lock()
        self._waiting: list[Job] = []
        self._durations: list[float] = []
        self.default_method = self.engines[0].method
        self.default_preset = getattr(self.engines[0].preset, "name", self.engines[0].preset)
        self.served = 0
        self.failed = 0

    @property
    def devices(self) -> list[str]:
        return [str(getattr(e.segmenter, "device", "unknown")) for e in self.engines]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        for engine in self.engines:
            if engine.thread is None or not engine.thread.is_alive():
                engine.thread = threading.Thread(target=self._run, args=(engine,), daemon=True,
                                                 name=f"napari-cass-engine-{engine.index}")
                engine.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel waiting and running jobs and end the threads."""
        with self._lock:
            for job in [*self._waiting, *(e.running for e in self.engines if e.running)]:
                job.cancel()
        alive = [e.thread for e in self.engines if e.thread is not None and e.thread.is_alive()]
        for _ in alive:
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                break
        for thread in alive:
            thread.join(timeout)

    @property
    def alive(self) -> bool:
        return all(e.thread is not None and e.thread.is_alive() for e in self.engines)

    # ------------------------------------------------------------------ jobs
    def submit(self, job: Job) -> Job:
        """Queue ``job``; raises :class:`QueueFull` when ``max_queue`` jobs already wait."""
        with self._lock:
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise QueueFull(f"{self.max_queue} requests are already waiting.") from None
            self._waiting.append(job)
        return job

    def position(self, job: Job) -> int:
        """Jobs waiting ahead of ``job`` (0 when it runs or is next)."""
        with self._lock:
            try:
                return self._waiting.index(job)
            except ValueError:
                return 0

    def queued(self) -> int:
        with self._lock:
            return len(self._waiting)

    def retry_after(self) -> int:
        """Seconds after which a refused client may try again: the queue's expected drain time."""
        typical = float(np.median(self._durations)) if self._durations else 1.0
        return max(1, int(round(typical * (self.queued() + 1) / len(self.engines))))

    def _run(self, engine: _Engine) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self._waiting.remove(job)
                engine.running = job
            try:
                self._execute(engine, job)
            finally:
                with self._lock:
                    engine.running = None

    def _execute(self, engine: _Engine, job: Job) -> None:
        from ..engine import SegmentationCancelled

        if job.cancelled.is_set():
            job.future.set_exception(SegmentationCancelled("Cancelled before it started."))
            return
        job.started = time.perf_counter()
        job.progress = (0, 0, "started")
        try:
            self._configure(engine, job)
            result = engine.segmenter.segment(
                job.image, job.classes, progress=job.on_progress, cancel=job.cancelled.is_set,
                background=job.background,
            )
        except BaseException as exc:  # a crash in one request must not end the worker
            with self._lock:
                self.failed += 1
            job.future.set_exception(exc)
            return
        with self._lock:
            self.served += 1
            self._durations = (self._durations + [time.perf_counter() - job.started])[-20:]
        job.future.set_result(result)

    @staticmethod
    def _configure(engine: _Engine, job: Job) -> None:
        seg = engine.segmenter
        method = job.method or engine.method
        if method and getattr(seg, "method", method) != method:
            seg.set_method(method)
        current = getattr(seg, "preset", None)
        if job.preset is not None:
            if getattr(current, "name", current) != job.preset:
                seg.set_preset(job.preset)
        elif engine.preset is not None and current is not engine.preset:
            seg.set_preset(engine.preset)  # the very object it was built with (may be customised)


class ImageStore:
    """Recently uploaded images by key, bounded by count and bytes (least recently used out)."""

    def __init__(self, max_images: int = 64, max_bytes: int = 2 * 2**30):
        self.max_images = int(max_images)
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            arr = self._items.get(key)
            if arr is not None:
                self._items.move_to_end(key)
            return arr

    def put(self, key: str, image: np.ndarray) -> None:
        image.flags.writeable = False  # shared by every job that names this key
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[key] = image
            self._bytes += image.nbytes
            while self._items and (len(self._items) > self.max_images or self._bytes > self.max_bytes):
                if len(self._items) == 1:
                    break  # keep the image just uploaded even if it alone exceeds max_bytes
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes

    def __len__(self) -> int:
        return len(self._items)
