"""A mirror of napari's Labels undo history since the plugin's last write.

napari's Ctrl+Z and redo replay a layer's history but announce nothing: no
event says which step was undone. The plugin still has to know which pixels a
*still applied* brush stroke holds (they are the annotator's and a re-run must
keep them), including a stroke that painted the very class the engine had
there, or painted a pixel back to it.

Every history step napari records is announced once, by the layer's public
``paint`` event, with the pixels it changed and their values before and after
(napari records changed pixels only, so ``old != new`` at each of them). That
is enough to tell, from the data alone, where napari's history pointer is:

* the newest applied step holds its ``new`` values at all of its pixels, and
  only its ``old`` values once undone (no applied step lies on top of it);
* the most recently undone step holds its ``old`` values until it is redone.

:class:`StrokeLog` keeps the applied and the undone steps and walks the
pointer to where the data says it is (:meth:`StrokeLog.sync`). The plugin
resets napari's history whenever it writes pixels itself (a run, "Undo last
run", a class removal), so the log only ever covers brush work on top of the
plugin's last write: it starts empty there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Stroke", "StrokeLog", "stroke_from_atoms"]

#: napari keeps this many undo steps; older ones can no longer be undone.
HISTORY_LIMIT = 100

ValuesAt = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Stroke:
    """One napari history step: flat pixel indices (sorted), values before and after."""

    idx: np.ndarray
    old: np.ndarray
    new: np.ndarray

    @property
    def size(self) -> int:
        return int(self.idx.size)


def _flat_dtype(n: int) -> type:
    return np.int32 if n < 2**31 else np.int64


def _atom_parts(atom: Any, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(flat, old, new)`` of one history atom (a masked paint atom or a 3-tuple)."""
    key = getattr(atom, "slice_key", None)
    if key is None:  # data_setitem: (indices, old values, new value(s))
        indices, old, new = atom
        coords = [np.asarray(i, dtype=np.int64).ravel() for i in indices]
        flat = np.ravel_multi_index(coords, shape) if coords and coords[0].size else np.zeros(0, np.int64)
        old = np.asarray(old).ravel()
        new = np.broadcast_to(np.asarray(new), flat.shape)
        return flat, np.broadcast_to(old, flat.shape), new
    box = tuple(k if isinstance(k, slice) else slice(int(k), int(k) + 1) for k in key)
    starts = [int(s.start or 0) for s in box]
    sizes = [int((s.stop if s.stop is not None else dim) - (s.start or 0)) for s, dim in zip(box, shape)]
    mask = getattr(atom, "mask", None)
    if mask is None:
        mask = np.ones(sizes, dtype=bool)
    local = np.nonzero(np.asarray(mask, dtype=bool).reshape(sizes))
    coords = [c + s for c, s in zip(local, starts)]
    flat = np.ravel_multi_index(coords, shape) if coords[0].size else np.zeros(0, np.int64)
    old = np.asarray(atom.old_values)
    if old.shape == tuple(sizes):  # a whole-box snapshot
        old = old[np.asarray(mask, dtype=bool).reshape(sizes)] if mask is not None else old.ravel()
    return flat, np.asarray(old).ravel(), np.full(flat.shape, atom.new_value)


def stroke_from_atoms(atoms: Iterable[Any], shape: tuple[int, ...]) -> Stroke | None:
    """The step napari announced in a ``paint`` event, or None if it changed nothing.

    A drag is many atoms; a pixel's ``old`` is its first atom's and its ``new``
    its last atom's. Pixels painted back to their old value within the step
    are dropped (the step did not change them).
    """
    parts = [_atom_parts(a, shape) for a in atoms]
    parts = [p for p in parts if p[0].size]
    if not parts:
        return None
    flat = np.concatenate([p[0] for p in parts])
    old = np.concatenate([np.asarray(p[1]) for p in parts])
    new = np.concatenate([np.asarray(p[2]) for p in parts])
    order = np.argsort(flat, kind="stable")
    flat, old, new = flat[order], old[order], new[order]
    boundary = flat[1:] != flat[:-1]
    first = np.concatenate([[True], boundary])
    last = np.concatenate([boundary, [True]])
    idx, old, new = flat[first], old[first], new[last]
    keep = old != new
    dtype = _flat_dtype(int(np.prod(shape)))
    return Stroke(idx[keep].astype(dtype), old[keep].copy(), new[keep].copy())


class StrokeLog:
    """The strokes napari can still undo (``applied``) or redo (``undone``).

    ``frozen`` holds applied strokes that fell off napari's history (more than
    :data:`HISTORY_LIMIT` steps): they can no longer be undone, so their
    pixels stay the annotator's.
    """

    def __init__(self) -> None:
        self.applied: list[Stroke] = []
        self.undone: list[Stroke] = []
        self.frozen: list[Stroke] = []
        #: Every stroke ever pushed, in order (runs compare it before and after).
        self.pushed = 0

    def sync(self, values_at: ValuesAt) -> bool:
        """Move the pointer to where the data says napari's is; True if it moved.

        Called after every napari refresh (each Ctrl+Z or redo is one), so one
        step at a time is the rule: the newest applied stroke counts as undone
        only when *all* its pixels hold their old values again (a stroke being
        drawn over it, half done, moves nothing), and the newest undone stroke
        as redone when all hold their new values. When both would fit (a
        stroke followed by its exact inverse, then undone), the redo wins: the
        pixels stay the annotator's, so a re-run cannot overwrite them.
        """
        moved = False
        while True:
            if self.undone and self._redone(values_at):
                self.applied.append(self.undone.pop())
            elif self.applied and np.array_equal(values_at(self.applied[-1].idx), self.applied[-1].old):
                self.undone.append(self.applied.pop())
            else:
                return moved
            moved = True

    def _redone(self, values_at: ValuesAt) -> bool:
        """The newest undone stroke holds its new values, and the applied one under it
        still holds its own wherever the undone one did not paint (else the data shows
        that applied stroke undone, not this one redone)."""
        top = self.undone[-1]
        if not np.array_equal(values_at(top.idx), top.new):
            return False
        if not self.applied:
            return True
        below = self.applied[-1]
        outside = ~np.isin(below.idx, top.idx)
        # Every pixel of ``below`` repainted by ``top``: the exact-inverse tie (see sync).
        return not outside.any() or np.array_equal(values_at(below.idx[outside]), below.new[outside])

    def push(self, stroke: Stroke, values_at: ValuesAt) -> None:
        """A new step: sync with the data as it was before it, then drop the redo list."""

        def before(idx: np.ndarray) -> np.ndarray:
            values = np.array(values_at(idx), copy=True)
            pos = np.searchsorted(stroke.idx, idx)
            pos = np.minimum(pos, max(stroke.size - 1, 0))
            hit = stroke.idx[pos] == idx if stroke.size else np.zeros(idx.shape, bool)
            values[hit] = stroke.old[pos[hit]]
            return values

        self.sync(before)
        self.undone.clear()
        self.applied.append(stroke)
        self.pushed += 1
        if len(self.applied) > HISTORY_LIMIT:
            self.frozen.append(self.applied.pop(0))

    def union(self, strokes: Iterable[Stroke] | None = None) -> np.ndarray:
        """Flat indices of every pixel an applied (or frozen) stroke holds."""
        items = list(self.applied) + list(self.frozen) if strokes is None else list(strokes)
        if not items:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate([s.idx for s in items]))

    def all_pixels(self) -> np.ndarray:
        """Flat indices of every pixel any logged stroke touched (applied, undone or frozen)."""
        return self.union(list(self.applied) + list(self.undone) + list(self.frozen))

    def clear(self) -> None:
        """The plugin wrote pixels and reset napari's history: start over."""
        self.applied.clear()
        self.undone.clear()
        self.frozen.clear()
