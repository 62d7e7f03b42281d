"""What runs on the Ray workers: one model copy per actor, one image at a time.

:class:`SegmentWorker` is the callable class given to ``Dataset.map_batches``: Ray Data
makes one actor of it per worker slot, so the models load once per worker. Before its first
mask, a worker reports what it built to the run's :class:`TableGate`, and waits until the
driver has written ``classes.json`` from that description (the single-machine CLI writes
the table after its models load and before the first mask; so does a Ray run). Each image
is read, segmented and written (mask, then overlay, atomically) by the worker into the
shared output folder; what comes back to the driver is one small status row per image.
"""

from __future__ import annotations

import asyncio
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SEGMENT_ATTEMPTS", "SegmentWorker", "TableGate", "failure_reason"]

#: Tries per image for an error raised while segmenting or writing (a CUDA out-of-memory, a
#: network file system hiccup). Reading errors (a corrupt or too large file) are not retried:
#: the same bytes fail the same way. A worker process that dies is restarted by Ray, which
#: re-runs its image (up to the driver's ``WORKER_RETRIES``, counted at the gate).
SEGMENT_ATTEMPTS = 2


def failure_reason(exc: BaseException) -> str:
    """The first line of an error's message (its type when it has none), as the CLI prints it."""
    text = str(exc)
    return text.splitlines()[0] if text.strip() else type(exc).__name__


class TableGate:
    """Ray actor (asyncio) between the workers and the driver for ``classes.json``.

    The first worker whose models are built hands in its description (method, preset,
    models, version); the driver, waiting in :meth:`first_description`, writes the table and
    calls :meth:`open`. Every worker waits in :meth:`wait_open` before its first image, so
    no mask exists without its table. A worker that built something else than the first
    (another napari-cass version on its node, other models) is refused: its masks would not
    be what the table says.
    """

    def __init__(self) -> None:
        self._first: dict[str, Any] | None = None
        self._have_first = asyncio.Event()
        self._opened = asyncio.Event()
        self._error: str | None = None
        self._worker_error: str | None = None
        self._starts: dict[str, int] = {}

    async def begin(self, name: str) -> int:
        """Count a start of image ``name``: 1 the first time, 2 after its worker died once..."""
        self._starts[name] = self._starts.get(name, 0) + 1
        return self._starts[name]

    async def worker_failed(self, message: str) -> None:
        """A worker could not start (models missing on its node, ...): kept for the driver."""
        if self._worker_error is None:
            self._worker_error = message

    async def worker_error(self) -> str | None:
        """The first worker's start-up error, in full (Ray's own error keeps only a traceback)."""
        return self._worker_error

    async def first_description(self) -> dict[str, Any]:
        await self._have_first.wait()
        assert self._first is not None
        return self._first

    async def open(self, error: str | None = None) -> None:
        self._error = error
        self._opened.set()

    async def wait_open(self, description: dict[str, Any], node: str) -> None:
        if self._first is None:
            self._first = dict(description)
            self._have_first.set()
        elif description != self._first:
            changed = sorted(k for k in set(description) | set(self._first)
                             if description.get(k) != self._first.get(k))
            detail = "; ".join(f"{k}: {description.get(k)!r} here, {self._first.get(k)!r} on the first "
                               "worker" for k in changed)
            message = (f"The worker on node {node} built other models than the first worker ({detail}). "
                       "Install the same napari-cass version and weights on every node.")
            await self.worker_failed(message)
            raise RuntimeError(message)
        await self._opened.wait()
        if self._error is not None:
            raise RuntimeError(self._error)


class SegmentWorker:
    """Ray Data callable class: builds the models once, then segments batches of images.

    Parameters
    ----------
    build : callable
        ``build(args) -> Segmenter`` (the CLI's ``build_segmenter``; tests pass tiny models).
    args : argparse.Namespace
        The ``segment`` arguments, device and threads set for this worker.
    describe : callable
        ``describe(args, segmenter) -> dict``: what ``classes.json`` records about the run.
    prompts : sequence
        The engine's class prompts, background first if any.
    classes : RunClasses
        The run's mask values (checked against every result before writing).
    max_pixels : int or None
        Pixel limit for reading images (0 or None: none).
    gate : ActorHandle
        The run's :class:`TableGate`.
    worker_retries : int
        Starts of an image beyond the first that a dead worker may cost (Ray restarts dead
        workers and re-runs their images for ever; this count stops that).
    """

    def __init__(self, build: Callable[[Any], Any], args: Any, describe: Callable[[Any, Any], dict],
                 prompts: Sequence[Any], classes: Any, max_pixels: int | None, gate: Any,
                 worker_retries: int = 2):
        import ray

        self.gate = gate
        self.worker_retries = int(worker_retries)
        self.node = platform.node()
        try:
            self.segmenter = build(args)
            description = describe(args, self.segmenter)
        except Exception as exc:
            ray.get(gate.worker_failed.remote(f"on node {self.node}: {str(exc) or type(exc).__name__}"))
            raise
        self.prompts = list(prompts)
        self.classes = classes
        self.max_pixels = max_pixels or 0
        ray.get(gate.wait_open.remote(description, self.node))

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ray

        rows: dict[str, list[Any]] = {k: [] for k in ("name", "ok", "error", "attempts", "seconds", "node")}
        for source, name, mask, overlay in zip(batch["source"], batch["name"], batch["mask"], batch["overlay"]):
            start = time.perf_counter()
            starts = ray.get(self.gate.begin.remote(str(name)))
            if starts > self.worker_retries + 1:  # every earlier start ended with its worker's death
                ok, error, attempts = False, (f"its worker process died on it {starts - 1} time(s) (a crash in "
                                              "the models, or out of memory: see the Ray logs)"), starts - 1
            else:
                ok, error, attempts = self._segment_one(str(source), str(name), str(mask), str(overlay))
            for key, value in (("name", str(name)), ("ok", ok), ("error", error), ("attempts", attempts),
                               ("seconds", time.perf_counter() - start), ("node", self.node)):
                rows[key].append(value)
        return {k: np.asarray(v) for k, v in rows.items()}

    def _segment_one(self, source: str, name: str, mask: str, overlay: str) -> tuple[bool, str, int]:
        from ..io import PlannedImage, read_image, write_image_outputs

        item = PlannedImage(source=Path(source), name=name, mask=Path(mask), overlay=Path(overlay))
        try:
            image = read_image(item.source, max_pixels=self.max_pixels)
        except Exception as exc:  # a bad file fails the same way every time: no retry
            return False, failure_reason(exc), 1
        reason = ""
        for attempt in range(1, SEGMENT_ATTEMPTS + 1):
            try:
                result = self.segmenter.segment(image, self.prompts)
                write_image_outputs(item, image, result, self.classes)
                return True, "", attempt
            except Exception as exc:
                reason = failure_reason(exc)
                _free_gpu_memory()
        return False, reason, SEGMENT_ATTEMPTS


def _free_gpu_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # nothing to free, or no torch build with CUDA
        pass
