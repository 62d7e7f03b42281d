"""Keep napari Labels layers and the plugin's :class:`LabelState` in step.

One state per Labels layer, keyed by the layer's ``unique_id`` (napari's proxy
hands out a new wrapper object on every ``viewer.layers[...]``, so ``id()``
would lose it). A layer's paint events feed its state for as long as the
layer lives, dock open or not. A run is merged off the GUI thread
(:meth:`LabelSync.begin_run` -> :func:`._run_merge.build_result` in the worker ->
:meth:`LabelSync.apply`); the GUI thread swaps the merged array in and resets
napari's undo history (a checkpoint, see :mod:`._label_state`).

An image and its labels are linked by identity: the labels layer records the
image layer's ``unique_id`` in its metadata, so renaming either keeps them
together.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from ._classes import META_KEY, LabelClasses, classes_from_layer_meta
from ._label_state import LabelState
from ._run_merge import RunContext, RunOutput

__all__ = ["LabelSync", "labels_name", "reset_history"]

#: Label states of this process, by layer ``unique_id``. Module-level on purpose: a
#: dock closed and opened again finds the edits it must keep (napari makes a new
#: widget each time); a state goes when its layer is removed.
_STATES: dict[Hashable, LabelState] = {}
#: The paint-event recorders, one per layer, alive as long as the layer.
_HOOKS: dict[Hashable, tuple[Any, Callable[[Any], None], Callable[[Any], None]]] = {}
#: Called with the layer after each recorded stroke (a dock's batch auto-save).
_LISTENERS: list[Callable[[Any], None]] = []
#: Layers the plugin is writing right now (their paint events are its own).
_WRITING: set[Hashable] = set()

LINK_KEY = "image_uid"


def labels_name(image_name: str) -> str:
    """The name of an image's labels layer."""
    return f"{image_name} labels"


def reset_history(layer: Any) -> None:
    """Start a new Ctrl+Z history on ``layer`` (public API only).

    napari clears a Labels layer's undo and redo history when it stops being
    editable; the mode it was in is put back.
    """
    mode = layer.mode
    layer.editable = False
    layer.editable = True
    try:
        layer.mode = mode
    except (ValueError, KeyError):  # pragma: no cover - a mode the layer no longer offers
        pass


def _record(layer: Any) -> None:
    uid = layer.unique_id
    if uid in _HOOKS:
        return

    def on_paint(event: Any) -> None:
        if uid in _WRITING:
            return
        state = _STATES.get(uid)
        if state is None:
            return
        if state.record_paint(event.value, layer.data):
            for listener in list(_LISTENERS):
                listener(layer)

    def on_set_data(_event: Any = None) -> None:  # napari refreshes after each Ctrl+Z / redo
        state = _STATES.get(uid)
        if state is not None and uid not in _WRITING:
            state.sync(layer.data)

    layer.events.paint.connect(on_paint)
    layer.events.set_data.connect(on_set_data)
    _HOOKS[uid] = (layer, on_paint, on_set_data)


def _unrecord(uid: Hashable) -> None:
    hook = _HOOKS.pop(uid, None)
    if hook is not None:
        for emitter, callback in ((hook[0].events.paint, hook[1]), (hook[0].events.set_data, hook[2])):
            try:
                emitter.disconnect(callback)
            except (TypeError, ValueError, RuntimeError):
                pass


class LabelSync:
    """The label state of every Labels layer the plugin writes to."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.states = _STATES
        self._listener: Callable[[Any], None] | None = None
        #: Called with the layer after each recorded paint event (batch auto-save).
        self.on_paint: Callable[[Any], None] | None = None

    def _notify(self, layer: Any) -> None:
        if self.on_paint is not None:
            self.on_paint(layer)

    def listen(self) -> None:
        if self._listener is None:
            self._listener = self._notify
            _LISTENERS.append(self._listener)

    # ------------------------------------------------------------ lookup
    def layer(self, name: str, kind: type) -> Any:
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            if isinstance(layer, kind):
                return layer
        return None

    def layer_by_uid(self, uid: Hashable, kind: type) -> Any:
        for layer in self.viewer.layers:
            if layer.unique_id == uid and isinstance(layer, kind):
                return layer
        return None

    def labels_layer_for(self, image: Any) -> Any:
        """The labels layer linked to ``image`` (a layer, or an image layer's name)."""
        from napari.layers import Image, Labels

        if isinstance(image, str):
            image = self.layer(image, Image)
            if image is None:
                return None
        uid = image.unique_id
        for layer in self.viewer.layers:
            if isinstance(layer, Labels) and (layer.metadata.get(META_KEY) or {}).get(LINK_KEY) == uid:
                return layer
        layer = self.layer(labels_name(image.name), Labels)
        if layer is not None and (layer.metadata.get(META_KEY) or {}).get(LINK_KEY) in (None, uid):
            return layer
        return None

    def link(self, labels: Any, image: Any) -> None:
        meta = dict(labels.metadata.get(META_KEY, {}) or {})
        meta[LINK_KEY] = image.unique_id
        labels.metadata[META_KEY] = meta

    def state_for(self, layer: Any) -> LabelState:
        """The layer's state, started on first use.

        A layer the plugin made (its class list in the metadata) starts with its
        data as the last checkpoint; any other Labels layer was drawn by someone,
        so every labelled pixel counts as an edit and a run only fills label 0.
        """
        uid = layer.unique_id
        state = self.states.get(uid)
        if state is None:
            data = np.asarray(layer.data)
            if META_KEY in layer.metadata and "names" in layer.metadata[META_KEY]:
                state = LabelState(data, LabelClasses.from_meta(layer.metadata[META_KEY]))
            else:
                state = LabelState(data, all_edits=True)
            self.states[uid] = state
        _record(layer)
        return state

    def reset(self, layer: Any, classes: LabelClasses | None) -> LabelState:
        """Start afresh (the layer's data was replaced, e.g. the next batch image)."""
        self.states[layer.unique_id] = LabelState(np.asarray(layer.data), classes)
        reset_history(layer)
        _record(layer)
        return self.states[layer.unique_id]

    def forget(self, layer: Any) -> None:
        """Drop a removed layer's state and its event hook."""
        self.states.pop(layer.unique_id, None)
        _unrecord(layer.unique_id)

    @property
    def hooked(self) -> int:
        """1 while this dock is told of strokes (batch auto-save), 0 once it closed."""
        return int(self._listener is not None and self._listener in _LISTENERS)

    def disconnect_all(self) -> None:
        """The dock closes: stop calling it (strokes are still recorded for the next dock)."""
        if self._listener is not None and self._listener in _LISTENERS:
            _LISTENERS.remove(self._listener)
        self._listener = None
        self.on_paint = None

    # ------------------------------------------------------------- write
    def write(self, layer: Any, merged: np.ndarray) -> int:
        """Replace the layer's labels by ``merged`` as a checkpoint; returns pixels changed."""
        data = np.asarray(layer.data)
        state = self.state_for(layer)
        changed = int(np.count_nonzero(data != merged))
        edited = state.edited(data) & (data == merged)
        self._swap(layer, merged)
        state.checkpoint_at(merged, edited)
        return changed

    def _swap(self, layer: Any, data: np.ndarray) -> None:
        uid = layer.unique_id
        _WRITING.add(uid)
        try:
            layer.data = data
            reset_history(layer)
        finally:
            _WRITING.discard(uid)

    def _write_flat(self, layer: Any, idx: np.ndarray, values: np.ndarray) -> None:
        """Write values at flat indices in place (no history), then redraw."""
        uid = layer.unique_id
        _WRITING.add(uid)
        try:
            data = layer.data
            if idx.size:
                data.reshape(-1)[idx] = values
            reset_history(layer)
            layer.refresh()
        finally:
            _WRITING.discard(uid)

    @staticmethod
    def decorate(layer: Any, classes: LabelClasses, meta: dict[str, Any] | None = None) -> None:
        """Names, colours and the class list onto the layer (all take effect at once)."""
        from napari.utils.colormaps import DirectLabelColormap

        old = dict(layer.metadata.get(META_KEY, {}) or {})
        old.update(meta if meta is not None else classes.to_meta())
        old.update(classes.to_meta())
        layer.colormap = DirectLabelColormap(color_dict=classes.color_dict())
        layer.features = classes.features()
        layer.metadata[META_KEY] = old

    def layer_classes(self, layer: Any) -> LabelClasses:
        return classes_from_layer_meta(layer.metadata, layer.features, None)

    # -------------------------------------------------------------- runs
    def begin_run(self, ctx: RunContext, image: Any) -> RunContext:
        """Fill in the target layer and the worker's references (GUI thread, no full pass)."""
        data = image.data[0] if image.multiscale else image.data
        shape = tuple(data.shape[: data.ndim - (1 if image.rgb else 0)])
        ctx.shape = shape
        target = self.labels_layer_for(image)
        if target is not None and tuple(target.data.shape) != shape:
            raise ValueError(
                f"The layer {target.name!r} has shape {target.data.shape}, not the image's "
                f"{shape}: rename or delete it, then segment again."
            )
        top = ctx.classes.max_value
        dtype = np.dtype(np.uint8 if top <= 255 else np.uint16)
        if target is not None:
            if np.iinfo(target.data.dtype).max < top:  # a class value past the layer's dtype
                self._swap(target, np.asarray(target.data).astype(dtype))
                self.state_for(target).retype(dtype)
            dtype = np.dtype(target.data.dtype)
            ctx.target_uid = target.unique_id
            ctx.start = self.state_for(target).begin_run(np.asarray(target.data), ctx.replace_all)
        ctx.dtype = dtype
        if ctx.confidence:
            from napari.layers import Image

            conf = self.layer(f"{image.name} confidence", Image)
            if conf is not None and tuple(conf.data.shape) == shape:
                ctx.confidence_base = np.asarray(conf.data)
        return ctx

    def apply(self, ctx: RunContext, out: RunOutput) -> Any:
        """Put a run's merged labels into the image's labels layer (GUI thread).

        Raises ``ValueError`` when the image layer went away during the run
        (nothing is written then).
        """
        from napari.layers import Image, Labels

        image = self.layer_by_uid(ctx.image_uid, Image)
        if image is None:
            raise ValueError(f"The image layer {ctx.image_name!r} was removed during the run: "
                             "its result was dropped.")
        classes = ctx.classes
        meta = classes.to_meta(image=image.name, has_background=out.has_background, **ctx.settings)
        meta[LINK_KEY] = image.unique_id
        target = self.layer_by_uid(ctx.target_uid, Labels) if ctx.target_uid is not None else None
        if target is None or out.plan is None or ctx.start is None:
            # a new layer (also when the user deleted the old one during the run: nothing of
            # it comes back) holds the engine's answer
            labels = out.labels
            if target is None:
                target = self.viewer.add_labels(
                    labels, name=labels_name(image.name), scale=image.scale,
                    translate=image.translate, opacity=0.6, metadata={META_KEY: dict(meta)},
                )
                self.reset(target, classes)
            else:  # pragma: no cover - a target appeared during the run: merge as a new state
                self.write(target, labels)
        else:
            state = self.state_for(target)
            merged = state.finish_run(np.asarray(target.data), ctx.start, out.plan)
            out.plan = None  # raw, where and edited are freed now
            self._swap(target, merged)
            state.classes = classes
        ctx.start = None
        ctx.confidence_base = None
        self.decorate(target, classes, meta)
        if out.confidence is not None:
            self._show_confidence(image, out.confidence)
        self.viewer.layers.selection.active = target  # the next brush stroke goes here
        return target

    def _show_confidence(self, image: Any, conf: np.ndarray) -> None:
        from napari.layers import Image

        name = f"{image.name} confidence"
        layer = self.layer(name, Image)
        if layer is not None and tuple(layer.data.shape) == conf.shape:
            layer.data = conf
            return
        layer = self.viewer.add_image(
            conf, name=name, colormap="magma", contrast_limits=(0.0, 1.0), opacity=0.5,
            scale=image.scale, translate=image.translate, blending="translucent",
            metadata={META_KEY: {"confidence_of": image.name}},
        )
        labels = self.labels_layer_for(image)
        if labels is not None:  # keep the labels above the confidence map
            self.viewer.layers.move(self.viewer.layers.index(layer),
                                    self.viewer.layers.index(labels))

    def undo_last_run(self, layer: Any) -> int | None:
        """Put back the labels the last run replaced; None if there is no run to undo."""
        state = self.states.get(layer.unique_id)
        if state is None:
            return None
        plan = state.plan_undo(np.asarray(layer.data))
        if plan is None:
            return None
        idx, values, edited = plan
        self._write_flat(layer, idx, values)
        state.checkpoint_at(np.asarray(layer.data), edited)
        return int(idx.size)

    # ----------------------------------------------------------- classes
    def edits_removed(self, layer: Any, new: LabelClasses) -> dict[str, int]:
        """Hand-painted pixels a class edit would unlabel, by old class name (nothing changes)."""
        state = self.state_for(layer)
        old = state.classes
        data = np.asarray(layer.data)
        gone = _removed_values(old, new)
        if not gone or not data.size:
            return {}
        edits = data[state.edited(data)]
        out: dict[str, int] = {}
        for value in gone:
            n = int(np.count_nonzero(edits == value))
            if n:
                out[old.name_of(value) or f"label {value}"] = n
        return out

    def classes_changed(self, layer: Any, new: LabelClasses) -> int:
        """Follow a class table edit: clear removed classes, recolour, rename.

        Reordering and renaming touch no pixel (values are class ids). A removed
        class's pixels become 0 at a checkpoint (Ctrl+Z cannot bring a value no
        class names back). Returns how many pixels were cleared.
        """
        state = self.state_for(layer)
        old = state.classes
        if old is None and META_KEY in layer.metadata and "names" in layer.metadata[META_KEY]:
            old = LabelClasses.from_meta(layer.metadata[META_KEY])
        data = np.asarray(layer.data)
        top = new.max_value
        if data.dtype.kind in "iu" and top > np.iinfo(data.dtype).max:
            wide = data.astype(np.uint16)  # e.g. value 256: napari refuses to paint it in uint8
            edited = state.edited(data)
            self._swap(layer, wide)
            state.retype(wide.dtype)
            state.checkpoint_at(wide, edited)
            data = wide
        cleared = 0
        gone = _removed_values(old, new)
        if gone:  # a checkpoint even when no pixel holds them: a redo could bring them back
            mask = np.isin(data, gone)
            cleared = int(np.count_nonzero(mask))
            edited = state.edited(data) & ~mask
            self._write_flat(layer, np.flatnonzero(mask), np.zeros(cleared, data.dtype))
            state.checkpoint_at(np.asarray(layer.data), edited)
            state.forget_values(gone)
        state.classes = new
        self.decorate(layer, new)
        return cleared


def _removed_values(old: LabelClasses | None, new: LabelClasses) -> list[int]:
    """Values of classes in ``old`` that ``new`` no longer has (matched by id)."""
    if old is None or not old.ids or not new.ids:
        return []
    keep = set(new.values)
    return [v for v in old.values[1:] if v not in keep]
