"""Engines (one per GPU) behind one bounded FIFO queue.

Each engine runs in its own worker thread and takes one job at a time, so jobs from
several annotators are served in arrival order and never share an engine mid-run. A full queue is
refused at once (the caller answers 429); a job whose client left is taken out of the
queue at once (:meth:`EngineWorker.drop`, its image unpinned), or stops at the engine's
next cancel check. A job's reply is encoded in the engine's thread, so the full-size
result arrays never outlive the engine's turn.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["EngineWorker", "Job", "QueueFull"]


class QueueFull(RuntimeError):
    """The queue holds ``max_queue`` jobs already."""


@dataclass
class Job:
    """One segmentation request on its way through the queue.

    ``finish(result)`` (optional) turns the engine's result into the reply in the
    engine's thread; ``on_done()`` runs once when the job leaves the server (finished,
    failed, cancelled or dropped), e.g. to unpin its image.
    """

    id: str
    image: np.ndarray | None
    classes: list
    background: list[str] | None = None
    method: str | None = None
    preset: str | None = None
    refine: str | None = None  # "pamr" / "none"; None: the engine's default
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)
    progress: tuple[int, int, str] = (0, 0, "queued")
    enqueued: float = field(default_factory=time.perf_counter)
    started: float | None = None
    finish: Callable[[Any], Any] | None = None
    on_done: Callable[[], None] | None = None

    def on_progress(self, done: int, total: int, message: str) -> None:
        self.progress = (int(done), int(total), str(message))

    def cancel(self) -> None:
        self.cancelled.set()

    def leave(self) -> None:
        """Let go of the image and run ``on_done`` (once)."""
        done, self.on_done = self.on_done, None
        self.image = None
        if done is not None:
            done()


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
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._waiting: deque[Job] = deque()
        self._stopping = False
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
        with self._lock:
            self._stopping = False
        for engine in self.engines:
            if engine.thread is None or not engine.thread.is_alive():
                engine.thread = threading.Thread(target=self._run, args=(engine,), daemon=True,
                                                 name=f"napari-cass-engine-{engine.index}")
                engine.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Drop waiting jobs, cancel running ones and end the threads."""
        from ..engine import SegmentationCancelled

        with self._lock:
            self._stopping = True
            dropped, self._waiting = list(self._waiting), deque()
            running = [e.running for e in self.engines if e.running]
            self._ready.notify_all()
        for job in running:
            job.cancel()
        for job in dropped:
            job.cancel()
            _settle(job, SegmentationCancelled("The server stopped before the job started."))
        for engine in self.engines:
            if engine.thread is not None:
                engine.thread.join(timeout)

    @property
    def alive(self) -> bool:
        return all(e.thread is not None and e.thread.is_alive() for e in self.engines)

    # ------------------------------------------------------------------ jobs
    def submit(self, job: Job) -> Job:
        """Queue ``job``; raises :class:`QueueFull` when ``max_queue`` jobs already wait."""
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are already waiting.")
            self._waiting.append(job)
            self._ready.notify()
        return job

    def drop(self, job: Job) -> bool:
        """Cancel ``job``; a job still waiting leaves the queue (and its image) at once.

        Returns True when it was waiting (it will never run).
        """
        from ..engine import SegmentationCancelled

        job.cancel()
        with self._lock:
            try:
                self._waiting.remove(job)
            except ValueError:
                return False
        _settle(job, SegmentationCancelled("Cancelled before it started."))
        return True

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
            with self._lock:
                while not self._waiting and not self._stopping:
                    self._ready.wait()
                if self._stopping:
                    return
                job = self._waiting.popleft()
                engine.running = job
            try:
                self._execute(engine, job)
            finally:
                with self._lock:
                    engine.running = None

    def _execute(self, engine: _Engine, job: Job) -> None:
        from ..engine import SegmentationCancelled

        if job.cancelled.is_set():
            _settle(job, SegmentationCancelled("Cancelled before it started."))
            return
        job.started = time.perf_counter()
        job.progress = (0, 0, "started")
        try:
            self._configure(engine, job)
            result = engine.segmenter.segment(
                job.image, job.classes, progress=job.on_progress, cancel=job.cancelled.is_set,
                background=job.background, **({"refine": job.refine} if job.refine is not None else {}),
            )
            job.image = None
            if job.finish is not None:
                result = job.finish(result)
        except BaseException as exc:  # a crash in one request must not end the worker
            with self._lock:
                self.failed += 1
            _settle(job, exc)
            return
        with self._lock:
            self.served += 1
            self._durations = (self._durations + [time.perf_counter() - job.started])[-20:]
        _settle(job, None, result)

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


def _settle(job: Job, exc: BaseException | None, result: Any = None) -> None:
    """Release the job's image, then deliver its outcome (once)."""
    job.leave()
    if job.future.done():
        return
    if exc is not None:
        job.future.set_exception(exc)
    else:
        job.future.set_result(result)
