"""A run's context and its merge into a labels layer, done in the worker thread.

:class:`RunContext` is taken on the GUI thread when a run starts (which image,
which layer, the class table, references from
:meth:`~._label_state.LabelState.begin_run`); :func:`build_result` turns the
engine's results into the layer's class values at full size and merges them
(:func:`~._label_state.prepare_merge`) without touching Qt or napari, so a
24 MP photo or a 50-slice stack never freezes the GUI; the GUI thread then only
swaps the merged array in (:meth:`~._label_sync.LabelSync.apply`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._classes import LabelClasses
from ._label_state import MergePlan, RunStart, prepare_merge

__all__ = ["RunContext", "RunOutput", "build_result"]


@dataclass
class RunContext:
    """What a run needs, taken on the GUI thread when it starts."""

    image_uid: Hashable
    image_name: str
    leading: list[tuple[int, ...]]
    region: np.ndarray | None  # (H, W) bool, or None for the whole image
    bbox: tuple[slice, slice] | None
    classes: LabelClasses
    replace_all: bool
    confidence: bool
    settings: dict[str, str] = field(default_factory=dict)
    shape: tuple[int, ...] = ()
    dtype: Any = np.uint8
    target_uid: Hashable | None = None  # the labels layer merged into (None: a new one)
    start: RunStart | None = None
    confidence_base: np.ndarray | None = None


@dataclass
class RunOutput:
    """What the worker hands the GUI thread: merged labels (and confidence)."""

    plan: MergePlan | None  # None: a new labels layer gets ``labels``
    labels: np.ndarray
    confidence: np.ndarray | None
    has_background: bool


def build_result(ctx: RunContext, results: list[Any], check: Callable[[], None] | None = None) -> RunOutput:
    """Assemble the engine's results into full-size labels and merge them (worker thread).

    The engine answers in table rows; the layer holds class values
    (:meth:`LabelClasses.rows_to_values`). ``check`` is called between slices
    (it raises to cancel).
    """
    classes = ctx.classes
    dtype = np.dtype(ctx.dtype)
    raw = np.zeros(ctx.shape, dtype=dtype)
    where = np.zeros(ctx.shape, dtype=bool)
    conf = None
    if ctx.confidence:
        base = ctx.confidence_base
        conf = np.array(base, dtype=np.float32, copy=True) if base is not None else np.zeros(ctx.shape, np.float32)
    lut = classes.engine_values(dtype)  # the engine answers in the rows it was asked about
    has_background = False
    for lead, res in zip(ctx.leading, results):
        if check is not None:
            check()
        has_background = bool(res.has_background)
        if len(res.mask_classes) != len(lut):
            raise ValueError(
                f"The engine returned {len(res.mask_classes)} labels for the {len(lut)} it was "
                "asked about; please report this."
            )
        values = lut[int(res.label_offset):][res.labels]
        _paste(raw[lead], where[lead], values, ctx)
        if conf is not None:
            _paste(conf[lead], None, np.asarray(res.confidence, np.float32), ctx)
    if check is not None:
        check()
    if ctx.start is None:
        return RunOutput(None, raw, conf, has_background)
    return RunOutput(prepare_merge(ctx.start, raw, where), raw, conf, has_background)


def _paste(dst: np.ndarray, where: np.ndarray | None, src: np.ndarray, ctx: RunContext) -> None:
    if ctx.bbox is None:
        dst[...] = src
        if where is not None:
            where[...] = True
        return
    mask = ctx.region[ctx.bbox]
    dst[ctx.bbox][mask] = src[mask]
    if where is not None:
        where[ctx.bbox] |= mask
