"""The per-image cache of the vision side: a prompt edit on the same image skips the encoders."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import numpy as np

__all__ = ["VisionCache"]


class VisionCache:
    """The vision side of the last ``size`` images, least recently used dropped first.

    Keys hash the pixels themselves (not the array's identity), so an edited image in
    the same buffer is a new image, and the same pixels in another array are a hit.
    """

    def __init__(self, size: int = 4):
        self.size = int(size)
        self._items: OrderedDict[str, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    @staticmethod
    def key(image, settings: tuple) -> str | None:
        """Hash of the pixels, their shape and dtype, and every vision-side setting.

        None for input that cannot be hashed as numbers (it is then validated, and refused).
        """
        try:
            arr = np.ascontiguousarray(np.asarray(image))
            if arr.dtype.kind not in "biuf":
                return None
            h = hashlib.blake2b(arr.view(np.uint8).reshape(-1).data, digest_size=16)
        except (TypeError, ValueError):
            return None
        h.update(repr((arr.shape, str(arr.dtype), settings)).encode())
        return h.hexdigest()

    def get(self, key: str | None):
        """The cached value (now the most recently used), or None."""
        if key is None or key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: str | None, value) -> None:
        """Keep ``value`` under ``key`` (a None key keeps nothing), dropping the oldest beyond ``size``."""
        if key is not None:
            self._items[key] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()
