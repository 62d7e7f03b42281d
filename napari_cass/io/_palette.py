"""Label colours: the PASCAL VOC colour map, so exported masks look familiar."""

from __future__ import annotations

import numpy as np

__all__ = ["label_palette"]


def label_palette(n: int) -> np.ndarray:
    """Return ``(n, 3)`` uint8 colours in the PASCAL VOC bit-interleaved scheme.

    Index 0 is black (background), 1 dark red, 2 dark green, ... Neighbouring
    indices get clearly different colours, and the scheme is what mmsegmentation,
    the VOC toolkit and most viewers expect for indexed masks.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"label_palette needs a non-negative number of colours, got {n!r}.")
    ids = np.arange(int(n), dtype=np.int64)
    colours = np.zeros((int(n), 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (ids >> (3 * shift + channel)) & 1
            colours[:, channel] |= bit << (7 - shift)
    return colours.astype(np.uint8)
