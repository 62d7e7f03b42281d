"""What the plugin knows about one Labels layer: which pixels are the annotator's.

Free of Qt and napari so it is easy to test and reason about. The napari side
(:mod:`napari_cass.plugin._label_sync`) keeps one :class:`LabelState` per Labels
layer, keyed by the layer's ``unique_id``.

The undo model, in one place:

* A label value is a class's stable id for the life of the layer (see
  :mod:`._classes`): reordering or renaming classes never touches a pixel, so
  napari's own undo history stays valid through them.
* The plugin writes pixels itself at *checkpoints* only: a run, "Undo last
  run", and the removal of a class. Each checkpoint resets napari's undo
  history, so Ctrl+Z and redo step through the brush strokes made since the
  last checkpoint and can never bring back an older result or a removed class.
* A pixel is the annotator's (an *edit*) when it was an edit at the last
  checkpoint (``kept``), or an applied stroke since then holds it (the
  :class:`~._stroke_log.StrokeLog` mirror of napari's history), or it differs
  from the checkpoint (a change no event reported, e.g. a script's
  ``layer.data[...] = v``). A run writes only pixels that are not edits.

Runs merge off the GUI thread: :meth:`LabelState.begin_run` hands the worker
immutable references, :func:`prepare_merge` builds the merged labels there,
and :meth:`LabelState.finish_run` (GUI thread) patches only the pixels a
stroke, Ctrl+Z or redo changed during the run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._classes import LabelClasses
from ._stroke_log import Stroke, StrokeLog, stroke_from_atoms

__all__ = ["LabelState", "MergePlan", "RunSnapshot", "RunStart", "prepare_merge", "region_bbox"]

#: Runs "Undo last run" can take back, one after the other (each is kept packed:
#: one bit per pixel plus one value per pixel the run changed).
MAX_RUNS = 2

_PACKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-cass-undo")


def _flat(a: np.ndarray) -> np.ndarray:
    """A flat view of a C-contiguous array (the layer data napari keeps is)."""
    return a.reshape(-1)


@dataclass
class RunSnapshot:
    """Enough to take one run back: the pixels it changed and their values before."""

    changed: np.ndarray  # packed bits over the flattened layer
    before: np.ndarray  # values at the changed pixels, in flat order
    size: int

    @classmethod
    def of(cls, before: np.ndarray, after: np.ndarray) -> RunSnapshot:
        changed = before != after
        return cls(np.packbits(_flat(changed)), _flat(before)[_flat(changed)].copy(), before.size)

    def mask(self) -> np.ndarray:
        return np.unpackbits(self.changed, count=self.size).astype(bool)


@dataclass
class RunStart:
    """What a run's worker may read: references that nobody mutates while it runs."""

    data: np.ndarray  # the layer's array (painting may change it: read once, copy)
    checkpoint: np.ndarray
    kept: np.ndarray
    strokes: np.ndarray  # flat indices held by applied strokes at the start
    pushed: int  # strokes logged so far
    applied: tuple[Stroke, ...]
    undone: tuple[Stroke, ...]
    replace_all: bool


@dataclass
class MergePlan:
    """A run's result, merged in the worker against the labels at the run's start."""

    merged: np.ndarray  # goes into the layer
    checkpoint: np.ndarray  # a private copy of ``merged``
    before: np.ndarray  # the labels the worker merged against
    raw: np.ndarray  # the engine's values (valid where ``where``)
    where: np.ndarray  # pixels the run covers (region, slices)
    edited: np.ndarray  # edits at the start (kept where ``where``)


def prepare_merge(start: RunStart, raw: np.ndarray, where: np.ndarray) -> MergePlan:
    """Merge a run into the labels of ``start`` (worker thread; no GUI access).

    ``raw`` holds the engine's class values where ``where`` is True. Edits
    keep their values unless the run replaces everything.
    """
    before = np.array(start.data, copy=True)
    if before.dtype != raw.dtype:
        before = before.astype(raw.dtype)
    if start.replace_all:
        edited = np.zeros(before.shape, dtype=bool)
    else:
        edited = start.kept | (before != start.checkpoint)
        _flat(edited)[start.strokes] = True
    merged = before.copy()
    write = where & ~edited
    merged[write] = raw[write]
    return MergePlan(merged, merged.copy(), before, raw, where, edited)


class LabelState:
    """Checkpoint, carried edits, stroke log and run history of one Labels layer.

    Parameters
    ----------
    data : numpy.ndarray
        The layer's labels when the state starts (the first checkpoint).
    classes : LabelClasses, optional
        What the label values mean.
    all_edits : bool
        Every labelled pixel is the annotator's (a Labels layer someone drew):
        runs then only fill label 0.
    """

    def __init__(self, data: np.ndarray, classes: LabelClasses | None = None,
                 all_edits: bool = False) -> None:
        data = np.asarray(data)
        self.checkpoint = np.array(data, copy=True)
        self.kept = (data != 0) if all_edits else np.zeros(data.shape, dtype=bool)
        self.log = StrokeLog()
        self.runs: deque[Future[RunSnapshot] | RunSnapshot] = deque(maxlen=MAX_RUNS)
        self.classes = classes

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.checkpoint.shape)

    def _check_shape(self, data: np.ndarray) -> None:
        if tuple(data.shape) != self.shape:
            raise ValueError(
                f"The labels layer changed shape ({self.shape} -> {tuple(data.shape)}); "
                "delete it (or rename it) and segment again to start afresh."
            )

    # ------------------------------------------------------------ strokes
    def record_paint(self, atoms: Iterable[Any], data: np.ndarray) -> int:
        """Log one napari history step (a ``paint`` event); returns the pixels it changed."""
        data = np.asarray(data)
        if tuple(data.shape) != self.shape:  # the layer's data was replaced: a reset follows
            return 0
        stroke = stroke_from_atoms(atoms, self.shape)
        if stroke is None:
            return 0
        self.log.push(stroke, lambda idx: _flat(data)[idx])
        return stroke.size

    def sync(self, data: np.ndarray) -> None:
        """Follow napari's Ctrl+Z / redo since the last look (read from the data)."""
        data = np.asarray(data)
        if tuple(data.shape) == self.shape:  # else the data was replaced (a reset follows)
            self.log.sync(lambda idx: _flat(data)[idx])

    def edited(self, data: np.ndarray) -> np.ndarray:
        """Boolean mask of the annotator's pixels in ``data`` (the layer's labels now)."""
        data = np.asarray(data)
        self._check_shape(data)
        self.sync(data)
        edited = self.kept | (data != self.checkpoint)
        _flat(edited)[self.log.union()] = True
        return edited

    def _edited_at(self, data: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """:meth:`edited` at flat indices only (cheap for a few strokes)."""
        flat = _flat(np.asarray(data))
        out = _flat(self.kept)[idx] | (flat[idx] != _flat(self.checkpoint)[idx])
        held = self.log.union()
        if held.size:
            out |= np.isin(idx, held, assume_unique=False)
        return out

    # --------------------------------------------------------- checkpoints
    def checkpoint_at(self, data: np.ndarray, kept: np.ndarray, copy: bool = True) -> None:
        """The plugin wrote ``data`` (napari's history was reset): start a new segment."""
        self.checkpoint = np.array(data, copy=True) if copy else data
        self.kept = kept
        self.log.clear()

    # --------------------------------------------------------------- runs
    def begin_run(self, data: np.ndarray, replace_all: bool) -> RunStart:
        """References for the worker (GUI thread; cheap: no full-array work)."""
        data = np.asarray(data)
        self._check_shape(data)
        self.sync(data)
        return RunStart(
            data=data, checkpoint=self.checkpoint, kept=self.kept, strokes=self.log.union(),
            pushed=self.log.pushed, applied=tuple(self.log.applied), undone=tuple(self.log.undone),
            replace_all=replace_all,
        )

    def finish_run(self, data: np.ndarray, start: RunStart, plan: MergePlan) -> np.ndarray:
        """Patch what changed during the run, book it, and return the array for the layer.

        Only pixels a stroke, Ctrl+Z or redo touched while the worker ran are
        looked at again (no full-image pass on the GUI thread).
        """
        data = np.asarray(data)
        self._check_shape(data)
        self.sync(data)
        touched = self._touched_since(start)
        if touched.size:
            flat_data = _flat(data)
            now = flat_data[touched]
            edited = self._edited_at(data, touched) & (not start.replace_all)
            take = _flat(plan.where)[touched] & ~edited
            value = np.where(take, _flat(plan.raw)[touched], now).astype(plan.merged.dtype)
            _flat(plan.merged)[touched] = value
            _flat(plan.checkpoint)[touched] = value
            _flat(plan.before)[touched] = now
            _flat(plan.edited)[touched] = edited
        before, after = plan.before, plan.checkpoint
        self.runs.append(_PACKER.submit(RunSnapshot.of, before, after))
        self.checkpoint_at(plan.checkpoint, plan.edited, copy=False)
        return plan.merged

    def _touched_since(self, start: RunStart) -> np.ndarray:
        """Flat pixels whose stroke state changed since ``start`` (new, undone or redone)."""
        was_applied = {id(s) for s in start.applied}
        changed: list[Stroke] = [s for s in self.log.applied if id(s) not in was_applied]
        now_applied = {id(s) for s in self.log.applied} | {id(s) for s in self.log.frozen}
        changed += [s for s in start.applied if id(s) not in now_applied]
        changed += [s for s in self.log.undone if id(s) not in {id(u) for u in start.undone}]
        return self.log.union(changed)

    # --------------------------------------------------- Undo last run
    @property
    def can_undo(self) -> bool:
        return bool(self.runs)

    def plan_undo(self, data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Take the last run back: ``(flat indices, values, edits)``, or None if there is none.

        Pixels painted after the run keep the annotator's value. The caller
        writes ``values`` at the indices, resets napari's history and calls
        :meth:`checkpoint_at` with the returned edits (restored pixels are none).
        """
        if not self.runs:
            return None
        data = np.asarray(data)
        edited = self.edited(data)
        item = self.runs.pop()
        snap = item.result() if isinstance(item, Future) else item
        changed = snap.mask()
        values = np.zeros(changed.shape, dtype=snap.before.dtype)
        values[changed] = snap.before
        restore = changed & ~_flat(edited) & (values != _flat(data))
        idx = np.flatnonzero(restore)
        return idx, values[idx], edited

    # ----------------------------------------------------------- classes
    def forget_values(self, values: Sequence[int]) -> None:
        """Classes with these values were removed: no run snapshot may bring them back."""
        values = np.asarray(list(values))
        for i, item in enumerate(list(self.runs)):
            snap = item.result() if isinstance(item, Future) else item
            snap.before[np.isin(snap.before, values)] = 0
            self.runs[i] = snap

    def retype(self, dtype: np.dtype) -> None:
        """Widen the stored arrays (e.g. uint8 -> uint16 once a class value passes 255)."""
        self.checkpoint = self.checkpoint.astype(dtype)
        for i, item in enumerate(list(self.runs)):
            snap = item.result() if isinstance(item, Future) else item
            snap.before = snap.before.astype(dtype)
            self.runs[i] = snap


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
