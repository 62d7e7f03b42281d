"""A testing hook on the engine: record intermediates, impose the head matching.

Why it exists: with random weights the Hungarian head matching of CASS is nearly tied
(several assignments within ~1e-6 of the optimum), so which one the solver returns
depends on the last bits of float32 arithmetic of the machine. A parity check that holds
on any machine therefore compares the cost matrices, checks that the engine's own pairing
is optimal for the reference cost, and then runs the engine with the reference's pairing
to compare everything downstream. This object is how a test does the last two steps
without touching private names. Users never need it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from ._spectral import match_heads

__all__ = ["EngineProbe"]


class EngineProbe:
    """Collects the engine's intermediates and optionally overrides its head matching.

    Attach one to a segmenter (``segmenter.probe = EngineProbe(...)``) for one
    ``segment`` call. While a probe is attached the vision cache is bypassed, so every
    window is computed (and recorded) again. The probe is reset at the start of each
    ``segment`` call; the overrides are kept.

    Parameters
    ----------
    record : bool
        Keep intermediates in :attr:`records`. Values recorded once per window (or per
        batch of windows) are appended to a list under their name; values recorded once
        per image replace the previous value.
    head_pairings : sequence of (rows, cols), optional
        One Hungarian assignment per window, in window order, in the solver's
        convention (``rows`` index VFM heads, ``cols`` CLIP heads of the cost
        ``1 - D``; the reference's ``win_row_ind`` / ``win_col_ind``). The engine then
        uses it instead of solving; how it is read (reference or literal pairing) is
        unchanged. The solver's own answer is still recorded as ``"assignment"``.

    Attributes
    ----------
    records : dict
        Names recorded by the engine: ``"vfm_uint8"`` (reference-quirks DINO input per
        batch), ``"vfm_keys"``, ``"cost"``, ``"assignment"`` (solver's rows, cols),
        ``"used_assignment"``, ``"pairs"`` (CLIP head, VFM head), ``"weights"``,
        ``"distilled"`` per window or batch; ``"prior"``, ``"clusters"``, ``"text"``,
        ``"adjusted"``, ``"patch_logits"`` per image.
    windows_seen : int
        Windows whose head matching has been done since the last reset.
    """

    def __init__(self, record: bool = True, head_pairings: Sequence[tuple[Any, Any]] | None = None):
        self.record = bool(record)
        self.head_pairings = None if head_pairings is None else [
            (np.asarray(r, dtype=np.int64), np.asarray(c, dtype=np.int64)) for r, c in head_pairings
        ]
        self.records: dict[str, Any] = defaultdict(list)
        self.windows_seen = 0

    def reset(self) -> None:
        """Forget what was recorded and restart the window count (overrides are kept)."""
        self.records = defaultdict(list)
        self.windows_seen = 0

    def add(self, name: str, value: Any) -> None:
        """Append a per-window (or per-batch) value under ``name``."""
        if self.record:
            self.records[name].append(value)

    def put(self, **values: Any) -> None:
        """Store per-image values, replacing earlier ones."""
        if self.record:
            self.records.update(values)

    def next_assignment(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
        """The imposed assignment of the next window (``None`` = solve), checked against ``shape``.

        Parameters
        ----------
        shape : (int, int)
            Shape of the window's cost matrix (VFM heads, CLIP heads).
        """
        index = self.windows_seen
        self.windows_seen += 1
        if self.head_pairings is None:
            return None
        if index >= len(self.head_pairings):
            raise ValueError(
                f"EngineProbe has head pairings for {len(self.head_pairings)} window(s) but the "
                f"engine reached window {index + 1}: give one (rows, cols) per window of the image."
            )
        rows, cols = self.head_pairings[index]
        n = min(shape)
        if rows.shape != (n,) or cols.shape != (n,):
            raise ValueError(
                f"Head pairing of window {index} has {rows.shape} rows and {cols.shape} cols; "
                f"a {shape[0]} x {shape[1]} cost needs {n} of each."
            )
        if len(set(rows.tolist())) != n or len(set(cols.tolist())) != n:
            raise ValueError(f"Head pairing of window {index} repeats a head: each head may be used once.")
        if rows.min() < 0 or cols.min() < 0 or rows.max() >= shape[0] or cols.max() >= shape[1]:
            raise ValueError(
                f"Head pairing of window {index} names a head outside the {shape[0]} x {shape[1]} cost."
            )
        return rows, cols

    def match_heads(self, distance, pairing: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The engine's head matching of one window, with the override and the records.

        Same as :func:`~napari_cass.engine._spectral.match_heads` (returns CLIP heads,
        VFM heads, weights) but uses the imposed assignment of this window if any, and
        records the cost, the solver's own assignment, the one used and the pairs.
        """
        shape = tuple(distance.shape[-2:])
        forced = self.next_assignment(shape)
        clip_heads, vfm_heads, weights, cost = match_heads(distance, pairing, forced)
        if self.record:
            solved = linear_sum_assignment(cost)  # the solver's own answer (12 x 12: microseconds)
            rows, cols = forced if forced is not None else solved
            self.add("cost", cost)
            self.add("assignment", (np.asarray(solved[0]), np.asarray(solved[1])))
            self.add("used_assignment", (np.asarray(rows), np.asarray(cols)))
            self.add("pairs", np.stack([clip_heads, vfm_heads], 1))
            self.add("weights", weights)
        return clip_heads, vfm_heads, weights
