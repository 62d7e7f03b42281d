"""One segmentation run at a time: model building, worker thread, progress, cancel.

The controller owns the :class:`~napari_cass.engine.Segmenter` cache and the
napari thread worker. The model is built (or downloaded) *inside* the worker,
with its download progress shown and Cancel honoured. Cancel means cancel at
every stage: the engine polls the flag between crops, the download progress
callback raises on it, and whatever comes back after Cancel was pressed is
dropped before it reaches a layer (a cached prompt-only re-run or the text
stage can finish before the engine looks at the flag).
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, Signal

from ._workers import ProgressRelay, SegmentJob, friendly_error, run_job

__all__ = ["RunController", "default_segmenter_factory"]

_log = logging.getLogger(__name__)

ModelKey = tuple[str, str, str, str, str]  # clip, vfm, method, preset, device


def default_segmenter_factory(
    clip: str, vfm: str, method: str, preset: str, device: str, progress: Any = None
) -> Any:
    """The real thing: pretrained CLIP + DINO weights (downloaded or from the cache)."""
    from napari_cass.engine import Segmenter

    return Segmenter.from_pretrained(
        clip=clip, clip_weights="openai", vfm=vfm, method=method, preset=preset, device=device,
        progress=progress,
    )


def _accepts_progress(factory: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return "progress" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _close(segmenter: Any) -> None:
    """Release what a segmenter holds open, if it can (a ``RemoteSegmenter``'s connections)."""
    close = getattr(segmenter, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # noqa: BLE001 - releasing is best effort
            _log.debug("closing the previous segmenter failed", exc_info=True)


class RunController(QObject):
    """Runs jobs in a napari thread worker (or synchronously) and reports back.

    Signals
    -------
    started : ()
    progressed : (percent, message)
    device : (name)
    finished : (ok, message, results, seconds); ``results`` is None unless ok.
    """

    started = Signal()
    progressed = Signal(int, str)
    device = Signal(str)
    finished = Signal(bool, str, object, float)

    def __init__(self, get_factory: Callable[[], Callable[..., Any]], parent: QObject | None = None):
        super().__init__(parent)
        self._get_factory = get_factory
        self.segmenter: Any = None
        self._segmenter_key: tuple | None = None
        self._factory_used: Any = None  # a new segmenter_factory means a new model
        self._worker: Any = None
        self._cancel: threading.Event | None = None
        self._running = False
        self._pbar: Any = None
        self._pbar_value = 0
        self.run_in_thread = True
        # No parent: the worker thread may still emit after this controller is gone
        # (viewer closed mid-run); a parentless relay lives until the job drops it,
        # and Qt disconnects it from a deleted receiver.
        self._relay = ProgressRelay()
        self._relay.progressed.connect(self._on_progress)
        self._closed = threading.Event()
        self._in_progress = False
        self._pending: tuple[int, str] | None = None
        self._done: threading.Event | None = None

    @property
    def is_running(self) -> bool:
        return self._running

    @property
    def cancelled(self) -> bool:
        return self._cancel is not None and self._cancel.is_set()

    # --------------------------------------------------------- segmenter
    def _segmenter_for(self, key: ModelKey, cancel: threading.Event) -> Any:
        """Build the Segmenter once per (backbones, device); runs in the worker."""
        from napari_cass.engine import SegmentationCancelled

        clip, vfm, method, preset, device = key
        factory = self._get_factory()
        build_key = (clip, vfm, device)
        seg = self.segmenter
        if seg is not None and self._segmenter_key == build_key and self._factory_used is factory:
            try:  # method / preset switch in place: no reload, the image cache stays valid
                if seg.method != method:
                    seg.set_method(method)
                if seg.preset.name != preset:
                    seg.set_preset(preset)
                return seg
            except (ValueError, AttributeError):
                pass  # e.g. a method that needs the VFM the segmenter was built without
        kwargs: dict[str, Any] = {
            "clip": clip, "vfm": vfm, "method": method, "preset": preset, "device": device,
        }
        if _accepts_progress(factory):
            def progress(done: int, total: int, message: str) -> None:
                if cancel.is_set():
                    raise SegmentationCancelled("Model download cancelled.")
                self._relay.progressed.emit(float(done) / max(float(total), 1.0) * 0.5, message)

            kwargs["progress"] = progress
        _close(self.segmenter)  # a server client's connections (a local model has no close)
        self.segmenter = None
        self.segmenter = factory(**kwargs)
        self._segmenter_key = build_key
        self._factory_used = factory
        if cancel.is_set():
            raise SegmentationCancelled("Segmentation cancelled after loading the models.")
        return self.segmenter

    # --------------------------------------------------------------- run
    def start(self, images: list, prompts: list, background: list[str] | None, key: ModelKey,
              finish: Callable[..., Any] | None = None, refine: str | None = None) -> None:
        """Start a job; ``finished`` is emitted exactly once afterwards (unless shut down).

        ``finish(results, check)`` runs in the worker after the engine (the merge
        into the labels layer); its output is what ``finished`` carries.
        """
        cancel = threading.Event()
        self._cancel = cancel
        relay, closed = self._relay, self._closed
        done = threading.Event()
        self._done = done

        def report(fraction: float, message: str) -> None:
            if not closed.is_set():
                relay.progressed.emit(fraction, message)

        job = SegmentJob(
            images=images, classes=prompts, background=background,
            build=lambda: self._segmenter_for(key, cancel), cancel_event=cancel,
            report=report, finish=finish, refine=refine,
        )
        started = time.perf_counter()
        self._set_running(True)
        if not self.run_in_thread:
            done.set()
            gen = run_job(job)
            try:
                while True:
                    self._on_yielded(next(gen))
            except StopIteration as stop:
                self._finish(cancel, stop.value, None, started)
            except Exception as err:  # noqa: BLE001 - same path as the worker's errored
                self._finish(cancel, None, err, started)
            return
        from napari.qt.threading import GeneratorWorker

        def guarded(job: SegmentJob) -> Any:
            try:
                return (yield from run_job(job))
            finally:
                done.set()

        worker = GeneratorWorker(guarded, job)
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(lambda res: self._finish(cancel, res, None, started))
        worker.errored.connect(lambda err: self._finish(cancel, None, err, started))
        self._worker = worker
        worker.start()

    def cancel(self) -> None:
        """Ask the run to stop; nothing it computes afterwards reaches a layer."""
        if self._cancel is not None and self._running:
            self._cancel.set()

    def _finish(self, cancel: threading.Event, results: Any, err: BaseException | None,
                started: float) -> None:
        from napari_cass.engine import SegmentationCancelled

        if self._closed.is_set():  # the dock or viewer closed during the run: touch nothing
            return
        seconds = time.perf_counter() - started
        if cancel.is_set():  # whatever came back (a result, or a download error it caused)
            err = SegmentationCancelled("Segmentation cancelled.")
        self._set_running(False)
        if err is not None:
            message, expected = friendly_error(err)
            if not expected:
                _log.error("CASS segmentation failed", exc_info=err)
            self.finished.emit(False, message, None, seconds)
        else:
            self.finished.emit(True, "", results, seconds)

    def _set_running(self, running: bool) -> None:
        self._running = running
        if running:
            from napari.utils import progress

            self._pbar = progress(total=100, desc="CASS segmentation")
            self._pbar_value = 0
            self.started.emit()
        else:
            pbar, self._pbar = self._pbar, None
            if pbar is not None:
                if self._in_progress:  # inside the bar's own event processing: close after it
                    from qtpy.QtCore import QTimer

                    QTimer.singleShot(0, pbar.close)
                else:
                    pbar.close()
            self._worker = None

    def _on_yielded(self, item: tuple) -> None:
        if self._closed.is_set():
            return
        if item and item[0] == "device":
            self.device.emit(str(item[1]))

    def _on_progress(self, fraction: float, message: str) -> None:
        pbar = self._pbar
        if pbar is None or not self._running or self._closed.is_set():
            return  # a late signal from a finished run
        value = round(fraction * 100)
        if value < 100:  # before touching the bar: napari's bar may process events (re-entrancy)
            self.progressed.emit(value, message)
        if self._in_progress:  # napari's bar processes events: a nested report only counts
            self._pending = (value, message)
            return
        self._in_progress = True
        try:
            while True:
                if value > self._pbar_value and self._pbar is pbar:
                    step, self._pbar_value = value - self._pbar_value, value
                    pbar.update(step)
                if message and self._pbar is pbar:
                    pbar.set_description(f"CASS: {message}")
                if self._pending is None or self._pbar is not pbar:
                    break
                (value, message), self._pending = self._pending, None
        finally:
            self._in_progress = False
            self._pending = None

    def shutdown(self, wait: float = 10.0) -> None:
        """Cancel a running job and wait for its thread (dock or viewer closing).

        Nothing the job does afterwards reaches a layer, a file or this object:
        its signals are disconnected and its progress reports are dropped. The
        engine checks Cancel between crops and between full-resolution bands,
        so the thread ends within about a second; waiting for it keeps the
        interpreter from tearing torch down under a running thread.
        """
        self._closed.set()
        was_running = self._running
        if not was_running:
            _close(self.segmenter)
        self.cancel()
        if self._cancel is not None:
            self._cancel.set()
        worker = self._worker
        if worker is not None:
            for signal in (worker.yielded, worker.returned, worker.errored):
                try:
                    signal.disconnect()
                except (TypeError, RuntimeError):
                    pass
            try:
                worker.quit()
            except RuntimeError:
                pass
        if was_running and self._done is not None:
            self._done.wait(wait)
        if self._pbar is not None:
            try:
                self._pbar.close()
            except RuntimeError:
                pass
            self._pbar = None
        self._running = False
        self._worker = None
