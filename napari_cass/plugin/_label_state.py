"""What the plugin knows about one Labels layer: engine output, manual edits, run history.

Free of Qt and napari so it is easy to test and reason about. The napari side
(:mod:`napari_cass.plugin._label_sync`) keeps one :class:`LabelState` per Labels layer,
keyed by the layer's ``unique_id`` (stable, unlike ``id()`` of the proxy objects
napari hands a plugin).

Which pixels are manual edits? Two sources, combined when a run needs them:

* the layer's public ``paint`` event (brush, fill, polygon, eraser, and
  ``data_setitem``) records the pixels touched and the value painted;
* a diff of the layer against the last engine output (catches changes no event
  reported, e.g. ``layer.data[...] = v``).

A pixel is an edit when it differs from the last engine output, or when it still
holds the value a stroke painted there. The second rule keeps strokes that
re-paint the engine's own class, and drops strokes napari's Ctrl+Z undid (undo
emits no paint event, but the pixel no longer holds the painted value); a redo
brings the value, and so the edit, back. Nothing depends on napari's private
undo list or on its length.

"Undo last run" uses this module's own snapshots (:class:`RunSnapshot`): the
pixels a run wrote and their values before it. Undoing puts those values back
except where the user painted after the run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._classes import LabelClasses

__all__ = ["LabelState", "RunSnapshot", "class_lut", "merge_labels", "region_bbox"]

#: Run snapshots kept per layer for "Undo last run" (each costs ~5 bytes per pixel).
MAX_RUNS = 3


@dataclass
class RunSnapshot:
    """Enough to take back one run: where it wrote and what was there before."""

    written: np.ndarray  # bool, layer shape
    before: np.ndarray  # values at ``written`` before the run (1-D)
    last_output: np.ndarray  # the engine output before the run
    painted: np.ndarray  # paint bookkeeping before the run
    painted_value: np.ndarray


class LabelState:
    """Engine output, manual edits and run history of one Labels layer.

    Parameters
    ----------
    data : numpy.ndarray
        The layer's labels when the state starts (treated as engine output).
    classes : LabelClasses, optional
        What the label values mean (with class ids, for remapping).
    """

    def __init__(self, data: np.ndarray, classes: LabelClasses | None = None) -> None:
        data = np.asarray(data)
        self.last_output = np.array(data, copy=True)
        self.painted = np.zeros(data.shape, dtype=bool)
        self.painted_value = np.zeros(data.shape, dtype=data.dtype)
        self.painted_since_run = np.zeros(data.shape, dtype=bool)
        self.runs: deque[RunSnapshot] = deque(maxlen=MAX_RUNS)
        self.classes = classes

    # ------------------------------------------------------------ edits
    def record_paint(self, atoms: Iterable[Any]) -> int:
        """Record the pixels of a napari ``paint`` event; returns how many were touched.

        napari 0.9 emits two kinds of atoms: a masked atom (``slice_key``,
        ``mask`` or None for the whole box, ``old_values``, ``new_value``) from
        brush / fill / polygon, and a 3-tuple ``(indices, old, new)`` from
        ``data_setitem``.
        """
        touched = 0
        for atom in atoms:
            key = getattr(atom, "slice_key", None)
            if key is not None:
                key = tuple(key)
                mask = getattr(atom, "mask", None)
                box = self.painted[key]
                sel = np.ones(box.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
                self.painted[key][sel] = True
                self.painted_since_run[key][sel] = True
                self.painted_value[key][sel] = atom.new_value
                touched += int(sel.sum())
            else:
                indices, _old, new = atom
                indices = tuple(np.asarray(i) for i in indices)
                self.painted[indices] = True
                self.painted_since_run[indices] = True
                self.painted_value[indices] = new
                touched += int(indices[0].size) if indices else 0
        return touched

    def edited(self, data: np.ndarray) -> np.ndarray:
        """Boolean mask of the manual edits in ``data`` (the layer's current labels)."""
        data = np.asarray(data)
        self._check_shape(data)
        return (data != self.last_output) | (self.painted & (self.painted_value == data))

    def _check_shape(self, data: np.ndarray) -> None:
        if data.shape != self.last_output.shape:
            raise ValueError(
                f"The labels layer changed shape ({self.last_output.shape} -> {data.shape}); "
                "delete it (or rename it) and segment again to start afresh."
            )

    # ------------------------------------------------------------- runs
    def plan_run(
        self, data: np.ndarray, new: np.ndarray, region: np.ndarray | None, replace_all: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(merged, written)`` for a run: new output inside ``region``, edits kept."""
        self.forget_undone_run(data)
        edited = None if replace_all else self.edited(data)
        return merge_labels(data, new, edited, region)

    def commit_run(
        self, before: np.ndarray, new: np.ndarray, written: np.ndarray, replace_all: bool,
        classes: LabelClasses | None = None,
    ) -> None:
        """Book a run that wrote ``new`` where ``written`` over the labels ``before``."""
        before = np.asarray(before)
        self.runs.append(RunSnapshot(
            written=written.copy(), before=before[written].copy(),
            last_output=self.last_output.copy(), painted=self.painted.copy(),
            painted_value=self.painted_value.copy(),
        ))
        if new.dtype != self.last_output.dtype:
            self.retype(new.dtype)
        self.last_output[written] = new[written]
        if replace_all:
            self.painted[written] = False
        self.painted_since_run[...] = False
        if classes is not None:
            self.classes = classes

    def forget_undone_run(self, data: np.ndarray) -> bool:
        """If napari's Ctrl+Z took the last run back, take it back here too.

        The run counts as undone when every pixel it changed holds its value from
        before the run again (or was painted since). True if it was forgotten.
        """
        if not self.runs:
            return False
        snap = self.runs[-1]
        data = np.asarray(data)
        after = self.last_output[snap.written]
        changed = snap.before != after
        if not changed.any():
            return False
        now = data[snap.written][changed]
        back = now == snap.before[changed]
        if not back.any() or not (back | self.painted_since_run[snap.written][changed]).all():
            return False
        self._restore(snap)
        return True

    def undo_run(self, data: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray] | None:
        """Take back the last run: ``(indices, values)`` to write, or None if there is none.

        Pixels painted (or otherwise changed) after the run keep the user's value.
        """
        if not self.runs:
            return None
        data = np.asarray(data)
        snap = self.runs[-1]
        keep_user = self.painted_since_run | (data != self.last_output)
        values = np.zeros(data.shape, dtype=data.dtype)
        values[snap.written] = snap.before
        restore = snap.written & ~keep_user & (values != data)  # only pixels that change back
        indices = np.nonzero(restore)
        self._restore(snap)
        return indices, values[indices]

    def _restore(self, snap: RunSnapshot) -> None:
        since = self.painted_since_run
        painted_value = snap.painted_value.astype(self.painted_value.dtype, copy=True)
        painted_value[since] = self.painted_value[since]
        self.painted = snap.painted | since
        self.painted_value = painted_value
        self.last_output = snap.last_output.astype(self.last_output.dtype, copy=True)
        self.runs.pop()  # the class list stays: it may have been edited since (remapped)

    @property
    def can_undo(self) -> bool:
        return bool(self.runs)

    # ---------------------------------------------------------- classes
    def retype(self, dtype: np.dtype) -> None:
        """Widen the stored label arrays (e.g. uint8 -> uint16 for >255 classes)."""
        self.last_output = self.last_output.astype(dtype)
        self.painted_value = self.painted_value.astype(dtype)

    def remap(self, lut: np.ndarray, classes: LabelClasses | None = None) -> None:
        """Apply a label lookup table (old value -> new value) to every stored array.

        A pixel whose class was removed (non-zero -> 0) is no longer an edit: it
        is unlabelled, and the next run labels it afresh.
        """
        removed = (lut == 0) & (np.arange(lut.size) != 0)
        gone = self.painted & removed[self.painted_value]
        self.painted &= ~gone
        self.last_output = lut[self.last_output]
        self.painted_value = lut[self.painted_value]
        for snap in self.runs:
            snap.before = lut[snap.before]
            snap.last_output = lut[snap.last_output]
            snap.painted_value = lut[snap.painted_value]
        if classes is not None:
            self.classes = classes


def class_lut(old: LabelClasses, new: LabelClasses, n_values: int, dtype: Any) -> np.ndarray | None:
    """Lookup table old label -> new label, matching classes by id (None: nothing moves).

    Values beyond the old class list (labels painted by number) are kept.
    """
    if not old.ids or not new.ids:
        return None
    dtype = np.dtype(dtype)
    # uint8 / uint16 layers: a table over every possible value, so no stored value falls off it
    full = np.iinfo(dtype).max + 1 if dtype.kind == "u" and dtype.itemsize <= 2 else 0
    size = max(int(n_values), old.n_labels, full, 1)
    lut = np.arange(size, dtype=np.int64)
    for label, cid in enumerate(old.ids):
        lut[label] = new.label_of(cid) if label else 0
    if np.array_equal(lut, np.arange(size)):
        return None
    if lut.max() > np.iinfo(dtype).max:
        dtype = np.uint16
    return lut.astype(dtype)


def merge_labels(
    current: np.ndarray,
    new: np.ndarray,
    edited: np.ndarray | None,
    region: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Combine a new engine output with the current labels.

    Returns ``(merged, written)``: ``written`` marks the pixels taken from
    ``new``, inside ``region`` (everywhere if None) and outside ``edited`` (no
    edit is kept if None, i.e. "replace all").
    """
    if current.shape != new.shape:
        raise ValueError(f"Shape mismatch: labels {current.shape} vs new result {new.shape}.")
    written = np.ones(new.shape, dtype=bool) if region is None else np.asarray(region, bool).copy()
    if edited is not None:
        written &= ~edited
    merged = np.array(current, dtype=new.dtype, copy=True)
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
