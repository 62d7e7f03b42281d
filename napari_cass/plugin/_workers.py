"""The segmentation job that runs off the GUI thread.

:func:`run_job` is a generator: napari's ``thread_worker`` machinery runs it in
a worker thread, and its yields (device used, slices done) arrive in the GUI
thread. The engine's per-crop ``progress`` callback is called in the worker
thread, so it goes through :class:`ProgressRelay`, a QObject whose signal Qt
delivers to the GUI thread. Cancelling sets a ``threading.Event`` that the
engine polls between crops (-> ``SegmentationCancelled``).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, Signal

__all__ = ["JobFailed", "JobOutput", "ProgressRelay", "SegmentJob", "friendly_error", "run_job"]

#: Share of the progress bar for the engine; the rest is the merge into the layer.
ENGINE_SHARE = 0.95


class ProgressRelay(QObject):
    """Carries ``(fraction done, message)`` from the worker thread to the GUI thread."""

    progressed = Signal(float, str)


@dataclass
class SegmentJob:
    """Everything one run needs; built in the GUI thread, consumed in the worker."""

    images: Sequence[np.ndarray]
    classes: Sequence[Any]
    background: list[str] | None
    build: Callable[[], Any]
    cancel_event: threading.Event = field(default_factory=threading.Event)
    report: Callable[[float, str], None] | None = None
    #: ``"pamr"`` to refine boundaries; None leaves the segmenter's default (and works with
    #: a custom ``segmenter_factory`` whose ``segment`` takes no ``refine``).
    refine: str | None = None
    #: ``finish(results, check)``: merge into the layer's labels, in the worker thread.
    finish: Callable[[list[Any], Callable[[], None]], Any] | None = None


@dataclass
class JobOutput:
    """What reaches the GUI thread: the merged output and a few facts about the run.

    The engine's full-size results are dropped in the worker once merged (at
    24 MP they hold ~200 MB the GUI thread never needs).
    """

    output: Any
    from_cache: bool
    slices: int
    timings: dict[str, float]


class JobFailed(Exception):
    """A ``RuntimeError`` of the job, carried out of the worker thread as another type.

    superqt's ``GeneratorWorker`` takes a ``RuntimeError`` raised by the generator for
    a deleted worker and emits neither ``errored`` nor ``finished``: the run would look
    busy forever. Torch errors and :class:`~napari_cass.server.RemoteSegmenterError`
    (a server that is down) are RuntimeErrors, so :func:`run_job` wraps them;
    :func:`friendly_error` unwraps. ``error`` is the original exception.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def run_job(job: SegmentJob) -> Generator[tuple, None, Any]:
    """Build (or reuse) the segmenter, then segment every image of the job.

    Yields ``("device", name)`` once, then ``("slice", done, total)``; returns the
    list of :class:`~napari_cass.engine.SegmentationResult`, or a :class:`JobOutput`
    when the job has a ``finish`` step. A ``RuntimeError`` leaves as
    :class:`JobFailed` (see there).
    """
    try:
        return (yield from _run(job))
    except RuntimeError as err:
        raise JobFailed(err) from err


def _run(job: SegmentJob) -> Generator[tuple, None, Any]:
    from napari_cass.engine import SegmentationCancelled

    def report(fraction: float, message: str) -> None:
        if job.report is not None:
            job.report(float(min(max(fraction, 0.0), 1.0)), message)

    report(0.0, "loading models…")
    segmenter = job.build()
    yield ("device", str(segmenter.device))
    total = len(job.images)
    results = []
    for i, image in enumerate(job.images):
        if job.cancel_event.is_set():
            raise SegmentationCancelled("Segmentation cancelled.")

        def progress(done: int, steps: int, message: str, _i: int = i) -> None:
            report(ENGINE_SHARE * (_i + done / max(steps, 1)) / total, message)

        results.append(
            segmenter.segment(
                image, list(job.classes), progress=progress,
                cancel=job.cancel_event.is_set, background=job.background,
                **({"refine": job.refine} if job.refine else {}),
            )
        )
        report(ENGINE_SHARE * (i + 1) / total, f"slice {i + 1}/{total} done" if total > 1 else "done")
        yield ("slice", i + 1, total)
    if job.finish is None:
        return results

    def check() -> None:
        if job.cancel_event.is_set():
            raise SegmentationCancelled("Segmentation cancelled.")

    report(ENGINE_SHARE, "merging into the labels layer…")
    import pandas  # noqa: F401 - napari imports it for layer.features: not on the GUI thread
    meta = JobOutput(
        None, all(getattr(r, "from_cache", False) for r in results), len(results),
        dict(getattr(results[-1], "timings", {})) if results else {},
    )
    meta.output = job.finish(results, check)
    del results
    check()
    report(1.0, "done")
    return meta


def friendly_error(err: BaseException) -> tuple[str, bool]:
    """The message to show for an error, and whether it is an expected one.

    Expected errors (bad input, a path that is a folder or is not one, missing
    weights, cancel, out of GPU memory, a segmentation server that is down or
    refuses) get their own message and no traceback.
    """
    from napari_cass.engine import SegmentationCancelled

    if isinstance(err, JobFailed):
        err = err.error
    if isinstance(err, SegmentationCancelled):
        return "Segmentation cancelled: the layers are unchanged.", True
    if _is_oom(err):
        return ("Out of GPU memory while segmenting. Try a smaller image (or crop it), a smaller "
                "backbone, or choose 'cpu' as the device."), True
    if isinstance(err, (IsADirectoryError, NotADirectoryError)) and err.filename:
        what = ("is a folder where a file was expected: give the file's path" if isinstance(
            err, IsADirectoryError) else "goes through a file as if it were a folder: check the path")
        return f"{err.filename} {what}.", True
    if isinstance(err, (ValueError, FileNotFoundError, FileExistsError, PermissionError,
                        IsADirectoryError, NotADirectoryError)):
        return str(err), True
    if _is_server_error(err):  # its message says what to do (start the server, fix the token, ...)
        return str(err), True
    return f"Segmentation failed ({type(err).__name__}): {err}", False


def _is_server_error(err: BaseException) -> bool:
    """A :class:`~napari_cass.server.RemoteSegmenterError` or ``TokenError`` (the "server…" device).

    Only looked up when the server client was imported: a local run never imports it.
    """
    server = sys.modules.get("napari_cass.server")
    if server is None:
        return False
    return isinstance(err, (server.RemoteSegmenterError, server.TokenError))


def _is_oom(err: BaseException) -> bool:
    try:
        import torch

        oom = getattr(torch.cuda, "OutOfMemoryError", None)
        if oom is not None and isinstance(err, oom):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
