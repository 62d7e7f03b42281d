"""Correction bookkeeping, free of Qt and napari so it is easy to test and reason about.

A :class:`CorrectionState` belongs to one Labels layer. It remembers what the
engine last wrote (``last_output``) and which pixels the user edited by hand
(``edited``). Edits are known two ways: the layer's paint events (brush, fill,
erase, polygon) and, before each re-run, a diff of the layer against the last
engine output (robust if an event was missed). A re-run keeps edited pixels
unless the user asks to replace everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

__all__ = ["CorrectionState", "merge_labels", "region_bbox"]


@dataclass
class CorrectionState:
    """Engine output and manual-edit mask of one Labels layer."""

    last_output: np.ndarray
    edited: np.ndarray = field(init=False)
    # One-level snapshot for "Undo last run" (and for a Ctrl+Z of a run).
    _undo: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False)
    history_item: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.last_output = np.asarray(self.last_output).copy()
        self.edited = np.zeros(self.last_output.shape, dtype=bool)

    def mark_atoms(self, atoms: Iterable[Any]) -> None:
        """Mark the pixels of napari paint-history atoms as edited.

        napari 0.9 emits two kinds of atoms: a masked atom (``slice_key``,
        ``mask`` or None for the whole box, ...) from brush/fill/polygon, and a
        3-tuple ``(indices, old, new)`` from ``data_setitem``.
        """
        for atom in atoms:
            key = getattr(atom, "slice_key", None)
            if key is not None:
                mask = getattr(atom, "mask", None)
                if mask is None:
                    self.edited[tuple(key)] = True
                else:
                    self.edited[tuple(key)][np.asarray(mask, dtype=bool)] = True
            else:
                indices = atom[0]
                self.edited[tuple(indices)] = True

    def sync_with(self, data: np.ndarray) -> None:
        """Pixels that differ from the last engine output count as edited."""
        if data.shape != self.last_output.shape:
            raise ValueError(
                f"The labels layer changed shape ({self.last_output.shape} -> {data.shape}); "
                "re-run with 'replace all' to start the corrections afresh."
            )
        self.edited |= np.asarray(data) != self.last_output

    def record(self, new_output: np.ndarray, written: np.ndarray, replace_all: bool) -> None:
        """Update the bookkeeping after a run wrote ``new_output`` where ``written``."""
        self._undo = (self.last_output.copy(), self.edited.copy())
        self.last_output[written] = new_output[written]
        if replace_all:
            self.edited[written] = False

    def restore(self) -> bool:
        """Go back to the bookkeeping before the last run (False if there is none)."""
        if self._undo is None:
            return False
        self.last_output, self.edited = self._undo
        self._undo = None
        self.history_item = None
        return True

    @property
    def can_undo(self) -> bool:
        return self._undo is not None


def merge_labels(
    current: np.ndarray,
    new: np.ndarray,
    edited: np.ndarray,
    region: np.ndarray | None = None,
    replace_all: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Combine a new engine output with the current labels.

    Returns ``(merged, written)`` where ``written`` marks the pixels taken from
    ``new``: inside ``region`` (everywhere if None) and, unless ``replace_all``,
    outside the manual edits.
    """
    if current.shape != new.shape:
        raise ValueError(f"Shape mismatch: labels {current.shape} vs new result {new.shape}.")
    written = np.ones(new.shape, dtype=bool) if region is None else np.asarray(region, bool).copy()
    if not replace_all:
        written &= ~edited
    merged = np.array(current, copy=True)
    merged[written] = new[written]
    return merged, written


def region_bbox(mask: np.ndarray, margin: int = 16) -> tuple[slice, slice]:
    """Bounding box of a 2-D mask, grown by ``margin`` pixels and clipped to the image.

    The margin gives the engine some context around a small box.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError(
            "The region is empty: draw a rectangle or polygon inside the image in the Shapes layer."
        )
    h, w = mask.shape
    r0, r1 = max(int(rows[0]) - margin, 0), min(int(rows[-1]) + 1 + margin, h)
    c0, c1 = max(int(cols[0]) - margin, 0), min(int(cols[-1]) + 1 + margin, w)
    return slice(r0, r1), slice(c0, c1)
