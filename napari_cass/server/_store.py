"""One byte budget for everything large the server holds: request bodies, decodes, images.

Uploaded images are kept by key (least recently used out) so a prompt edit sends no
pixels; a queued or running job *pins* its image, so an image evicted from the store
stays counted until the last job using it ends. Bodies being received and images
being decoded reserve their bytes before they are read or allocated, so the sum of
everything counted never exceeds the budget: a request that would cross it is refused
(503) instead of growing the process.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from contextlib import asynccontextmanager

import numpy as np

__all__ = ["BudgetFull", "DecodeGate", "DecodeQueueFull", "ImageStore", "Reservation"]


class BudgetFull(RuntimeError):
    """The memory budget cannot hold ``wanted`` more bytes, even after evicting idle images."""

    def __init__(self, wanted: int, store: ImageStore):
        gb = store.budget / 2**30
        super().__init__(f"{wanted / 2**20:.0f} MB more would exceed this server's memory budget "
                         f"({gb:.1f} GB, {store.pinned_bytes() / 2**20:.0f} MB held by images that jobs "
                         "are waiting on)")
        self.wanted = wanted


class ImageStore:
    """Recently uploaded images by key, and the server's memory budget.

    Parameters
    ----------
    max_images : int
        Images kept for later requests (least recently used dropped first).
    budget : int
        Bytes that bodies being read, images being decoded, stored images and images
        pinned by jobs may hold together.
    idle_seconds : float
        An image no request has named for this long is dropped (:meth:`expire`), so
        the memory of clients that went away returns without waiting for new uploads.
    """

    def __init__(self, max_images: int = 64, budget: int = 4 * 2**30, idle_seconds: float = 900.0):
        if budget < 1 or max_images < 1:
            raise ValueError("The image store needs a positive image count and byte budget.")
        self.max_images = int(max_images)
        self.budget = int(budget)
        self.idle_seconds = float(idle_seconds)
        self._used_at: dict[str, float] = {}
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self._pins: dict[str, list] = {}  # key -> [array, number of jobs]
        self._charged: dict[str, int] = {}  # key -> bytes counted, while stored or pinned
        self._used = 0  # charged images + open reservations
        self.peak = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ budget
    @property
    def used(self) -> int:
        return self._used

    def pinned_bytes(self) -> int:
        with self._lock:
            return sum(self._charged[k] for k in self._pins)

    def reserve(self, nbytes: int) -> bool:
        """Count ``nbytes`` more, evicting idle images if needed; False when they do not fit."""
        nbytes = int(nbytes)
        with self._lock:
            while self._used + nbytes > self.budget:
                if not self._evict_one(idle_only=True):
                    return False
            self._used += nbytes
            self.peak = max(self.peak, self._used)
            return True

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._used -= int(nbytes)

    def reservation(self) -> Reservation:
        """A :class:`Reservation` that gives back whatever it still holds when closed."""
        return Reservation(self)

    # ------------------------------------------------------------------ images
    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            arr = self._lru.get(key)
            if arr is not None:
                self._lru.move_to_end(key)
                self._used_at[key] = time.monotonic()
            return arr

    def put(self, key: str, image: np.ndarray, held: Reservation) -> np.ndarray:
        """Keep ``image`` under ``key``, paying its bytes out of ``held``; returns the stored array.

        An image still pinned by a job under the same key is reused (nothing new is counted).
        """
        image.flags.writeable = False  # shared by every job that names this key
        with self._lock:
            self._used_at[key] = time.monotonic()
            if key in self._lru:
                self._lru.move_to_end(key)
                return self._lru[key]
            if key in self._pins:
                image = self._pins[key][0]
            else:
                if held.bytes < image.nbytes:
                    raise RuntimeError("An image was decoded into more bytes than were reserved for it.")
                held.bytes -= image.nbytes  # moves from the reservation to the image's charge
                self._charged[key] = image.nbytes
            self._lru[key] = image
            while len(self._lru) > self.max_images:
                self._evict_one(idle_only=False)
            return image

    def pin(self, key: str) -> np.ndarray | None:
        """The stored image, counted until :meth:`unpin` even if evicted meanwhile; None if absent."""
        with self._lock:
            arr = self._lru.get(key)
            if arr is None:
                return None
            self._lru.move_to_end(key)
            self._used_at[key] = time.monotonic()
            entry = self._pins.setdefault(key, [arr, 0])
            entry[1] += 1
            return arr

    def unpin(self, key: str) -> None:
        with self._lock:
            entry = self._pins.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del self._pins[key]
                if key not in self._lru:
                    self._used -= self._charged.pop(key)
                    self._used_at.pop(key, None)

    def expire(self) -> int:
        """Drop images no request named for ``idle_seconds``; returns how many."""
        cutoff = time.monotonic() - self.idle_seconds
        with self._lock:
            old = [k for k in self._lru if self._used_at.get(k, 0.0) < cutoff]
            for key in old:
                self._drop(key)
            return len(old)

    def _evict_one(self, idle_only: bool) -> bool:
        """Drop the least recently used image (one no job pins, if ``idle_only``); under the lock."""
        victim = next((k for k in self._lru if not (idle_only and k in self._pins)), None)
        if victim is None:
            return False
        self._drop(victim)
        return True

    def _drop(self, key: str) -> None:
        """Out of the store; its bytes stay counted while a job pins it. Under the lock."""
        del self._lru[key]
        if key not in self._pins:
            self._used -= self._charged.pop(key)
            self._used_at.pop(key, None)

    def stats(self) -> dict:
        with self._lock:
            return {"images": len(self._lru), "pinned": len(self._pins), "used_bytes": self._used,
                    "budget_bytes": self.budget, "peak_bytes": self.peak}

    def __len__(self) -> int:
        return len(self._lru)


class Reservation:
    """Bytes counted in an :class:`ImageStore`'s budget for one request; a context manager."""

    def __init__(self, store: ImageStore):
        self.store = store
        self.bytes = 0

    def grow(self, nbytes: int) -> None:
        """Count ``nbytes`` more, or raise :class:`BudgetFull`."""
        if nbytes > 0:
            if not self.store.reserve(nbytes):
                raise BudgetFull(int(nbytes), self.store)
            self.bytes += int(nbytes)

    def close(self) -> None:
        held, self.bytes = self.bytes, 0
        if held:
            self.store.release(held)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DecodeGate:
    """At most ``slots`` image decodes at once; at most ``max_waiting`` uploads wait for one.

    Decoding is where an upload's memory grows from kilobytes (a compressed PNG) to its
    full size, so the number of decodes in flight bounds that growth; an upload that
    would wait behind ``max_waiting`` others is refused (429) instead.
    """

    def __init__(self, slots: int = 2, max_waiting: int = 32):
        if slots < 1:
            raise ValueError("At least one image decode must be allowed at a time.")
        self.slots, self.max_waiting = int(slots), int(max_waiting)
        self.waiting = 0
        self.active = 0  # decodes holding a slot
        self._sem = None

    @asynccontextmanager
    async def slot(self):
        """Hold a decode slot; raises :class:`DecodeQueueFull` when too many uploads wait."""
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.slots)  # created in the serving loop
        if self._sem.locked() and self.waiting >= self.max_waiting:
            raise DecodeQueueFull(f"{self.waiting} uploads are already waiting to be decoded")
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._sem.release()

    async def reserve(self, held: Reservation, nbytes: int, patience: float = 60.0) -> None:
        """``held.grow(nbytes)`` from inside a slot, waiting (up to ``patience`` s) while other
        decodes in flight hold the memory it needs: those are released within seconds,
        unlike images that queued jobs pin, for which :class:`BudgetFull` is raised at once."""
        loop = asyncio.get_running_loop()
        end = loop.time() + patience
        while True:
            try:
                return held.grow(nbytes)
            except BudgetFull:
                if self.active <= 1 or loop.time() > end:
                    raise
            await asyncio.sleep(0.05)


class DecodeQueueFull(RuntimeError):
    """Too many uploads wait for a decode slot."""
