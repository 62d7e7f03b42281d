"""Keep napari Labels layers and the plugin's :class:`LabelState` in step.

One state per Labels layer, keyed by the layer's ``unique_id``; napari's proxy
hands out a new wrapper object on every ``viewer.layers[...]``, so ``id()``
would lose the state between runs. Paint events feed the state; runs are
merged through it and written with ``data_setitem`` (one Ctrl+Z step); class
table edits remap label values by class id.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._classes import META_KEY, LabelClasses, classes_from_layer_meta
from ._label_state import LabelState, class_lut

__all__ = ["LabelSync", "RunContext", "labels_name"]

#: Label states of this process, by layer ``unique_id``. Module-level on purpose: a
#: dock closed and opened again finds the edits it must keep (napari makes a new
#: widget each time); a state goes when its layer is removed.
_STATES: dict[Hashable, LabelState] = {}


def labels_name(image_name: str) -> str:
    """The name of an image's labels layer."""
    return f"{image_name} labels"


@dataclass
class RunContext:
    """What the GUI thread must remember while the worker runs."""

    image_name: str
    leading: list[tuple[int, ...]]
    region: np.ndarray | None  # (H, W) bool, or None for the whole image
    bbox: tuple[slice, slice] | None
    classes: LabelClasses
    replace_all: bool
    confidence: bool
    settings: dict[str, str] = field(default_factory=dict)


class LabelSync:
    """The label state of every Labels layer the plugin writes to."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.states = _STATES
        self._hooks: dict[Hashable, tuple[Any, Callable[[Any], None]]] = {}
        self._writing = False
        #: Called with the layer after each recorded paint event (batch auto-save).
        self.on_paint: Callable[[Any], None] | None = None
        for layer in viewer.layers:  # layers a closed dock knew: listen again
            if layer.unique_id in self.states:
                self._hook(layer)

    # ------------------------------------------------------------ lookup
    def layer(self, name: str, kind: type) -> Any:
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            if isinstance(layer, kind):
                return layer
        return None

    def labels_layer_for(self, image_name: str) -> Any:
        from napari.layers import Labels

        return self.layer(labels_name(image_name), Labels)

    def state_for(self, layer: Any) -> LabelState:
        """The layer's state, started on first use.

        A layer the plugin made (its class list in the metadata) starts with its
        data as engine output; any other Labels layer was drawn by someone, so
        every labelled pixel counts as an edit and a run only fills label 0.
        """
        uid = layer.unique_id
        state = self.states.get(uid)
        if state is None:
            data = np.asarray(layer.data)
            classes = None
            if META_KEY in layer.metadata:
                classes = LabelClasses.from_meta(layer.metadata[META_KEY])
                state = LabelState(data, classes)
            else:
                state = LabelState(np.zeros_like(data))
            self.states[uid] = state
        self._hook(layer)  # a state from a closed dock: listen again
        return state

    def reset(self, layer: Any, classes: LabelClasses | None) -> LabelState:
        """Start afresh (the layer's data was replaced, e.g. the next batch image)."""
        self.states[layer.unique_id] = LabelState(np.asarray(layer.data), classes)
        self._hook(layer)
        return self.states[layer.unique_id]

    def _hook(self, layer: Any) -> None:
        uid = layer.unique_id
        if uid in self._hooks:
            return

        def on_paint(event: Any) -> None:
            if self._writing:
                return
            state = self.states.get(uid)
            if state is not None and state.record_paint(event.value) and self.on_paint:
                self.on_paint(layer)

        layer.events.paint.connect(on_paint)
        self._hooks[uid] = (layer, on_paint)

    def forget(self, layer: Any) -> None:
        """Drop a removed layer's state and its event hook."""
        uid = layer.unique_id
        self.states.pop(uid, None)
        hook = self._hooks.pop(uid, None)
        if hook is not None:
            try:
                hook[0].events.paint.disconnect(hook[1])
            except (TypeError, ValueError, RuntimeError):
                pass

    @property
    def hooked(self) -> int:
        """How many layers' paint events this dock listens to."""
        return len(self._hooks)

    def disconnect_all(self) -> None:
        """Stop listening (the dock closes); the states stay for the next dock."""
        for uid in list(self._hooks):
            layer, cb = self._hooks.pop(uid)
            try:
                layer.events.paint.disconnect(cb)
            except (TypeError, ValueError, RuntimeError):
                pass

    # ------------------------------------------------------------- write
    def write(self, layer: Any, merged: np.ndarray) -> int:
        """Write the changed pixels through napari's undo-able API; returns how many."""
        changed = np.nonzero(np.asarray(layer.data) != merged)
        if changed[0].size == 0:
            return 0
        self._writing = True
        try:
            layer.data_setitem(changed, merged[changed])
        finally:
            self._writing = False
        return int(changed[0].size)

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
    def apply(self, ctx: RunContext, results: list[Any]) -> Any:
        """Merge a run's results into the image's labels layer (created if missing)."""
        from napari.layers import Image

        image = self.layer(ctx.image_name, Image)
        if image is None:
            raise ValueError(f"The image layer {ctx.image_name!r} was removed during the run.")
        classes = ctx.classes
        data = image.data[0] if image.multiscale else image.data
        shape = tuple(data.shape[: data.ndim - (1 if image.rgb else 0)])
        target = self.labels_layer_for(image.name)
        if target is not None and tuple(target.data.shape) != shape:
            raise ValueError(
                f"The layer {target.name!r} has shape {target.data.shape}, not the image's "
                f"{shape}: rename or delete it, then segment again."
            )
        dtype = np.dtype(np.uint8 if classes.n_labels <= 256 else np.uint16)
        if target is not None and np.iinfo(target.data.dtype).max >= classes.n_labels - 1:
            dtype = np.dtype(target.data.dtype)
        current = np.asarray(target.data) if target is not None else np.zeros(shape, dtype)
        new = np.array(current, dtype=dtype, copy=True)
        where = np.zeros(shape, dtype=bool)
        conf = self._confidence_base(image, shape) if ctx.confidence else None
        has_background = False
        for lead, res in zip(ctx.leading, results):
            has_background = bool(res.has_background)
            if len(res.mask_classes) != classes.n_labels:
                raise ValueError(
                    f"The engine returned {len(res.mask_classes)} labels for a table of "
                    f"{classes.n_labels}; please report this."
                )
            self._paste(new[lead], where[lead], res.mask(dtype), ctx)
            if conf is not None:
                self._paste(conf[lead], None, np.asarray(res.confidence, np.float32), ctx)
        meta = classes.to_meta(image=image.name, has_background=has_background, **ctx.settings)
        if target is None:
            target = self.viewer.add_labels(
                new, name=labels_name(image.name), scale=image.scale,
                translate=image.translate, opacity=0.6,
            )
            self.reset(target, classes)
        else:
            if target.data.dtype != dtype:  # more classes than the old dtype holds
                target.data = np.asarray(target.data).astype(dtype)
            state = self.state_for(target)
            before = np.array(target.data, copy=True)
            merged, written = state.plan_run(before, new, where, ctx.replace_all)
            self.write(target, merged)
            state.commit_run(before, new, written, ctx.replace_all, classes)
        self.decorate(target, classes, meta)
        if conf is not None:
            self._show_confidence(image, conf)
        self.viewer.layers.selection.active = target  # the next brush stroke goes here
        return target

    @staticmethod
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

    def _confidence_base(self, image: Any, shape: tuple[int, ...]) -> np.ndarray:
        from napari.layers import Image

        layer = self.layer(f"{image.name} confidence", Image)
        if layer is not None and tuple(layer.data.shape) == shape:
            return np.array(layer.data, dtype=np.float32, copy=True)
        return np.zeros(shape, dtype=np.float32)

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
        labels = self.labels_layer_for(image.name)
        if labels is not None:  # keep the labels above the confidence map
            self.viewer.layers.move(self.viewer.layers.index(layer),
                                    self.viewer.layers.index(labels))

    def undo_last_run(self, layer: Any) -> int | None:
        """Put back the labels the last run replaced; None if there is no run to undo."""
        state = self.states.get(layer.unique_id)
        if state is None:
            return None
        data = np.asarray(layer.data)
        state.forget_undone_run(data)  # Ctrl+Z already took it back
        plan = state.undo_run(data)
        if plan is None:
            return None
        indices, values = plan
        if indices and indices[0].size:
            self._writing = True
            try:
                layer.data_setitem(indices, values)
            finally:
                self._writing = False
        return int(indices[0].size) if indices else 0

    # ----------------------------------------------------------- classes
    def edits_removed(self, layer: Any, new: LabelClasses) -> dict[str, int]:
        """Hand-painted pixels a class edit would unlabel, by old class name (nothing changes).

        Engine output of a removed class comes back with a re-run; manual edits
        do not, so the widget asks before it clears them.
        """
        state = self.state_for(layer)
        old = state.classes
        data = np.asarray(layer.data)
        if old is None or not data.size:
            return {}
        lut = class_lut(old, new, int(data.max()) + 1, data.dtype)
        if lut is None:
            return {}
        edits = data[state.edited(data)]
        removed = (lut[edits] == 0) & (edits != 0) & (edits < old.n_labels)
        values, counts = np.unique(edits[removed], return_counts=True)
        return {old.names[int(v)]: int(n) for v, n in zip(values, counts)}

    def classes_changed(self, layer: Any, new: LabelClasses) -> int:
        """Follow a class table edit: remap values by class id, recolour, rename.

        Returns how many pixels became unlabelled (0) because their class was removed.
        """
        state = self.state_for(layer)
        old = state.classes
        if old is None and META_KEY in layer.metadata:
            old = LabelClasses.from_meta(layer.metadata[META_KEY])
        cleared = 0
        data = np.asarray(layer.data)
        if data.dtype.kind in "iu" and new.n_labels - 1 > np.iinfo(data.dtype).max:
            data = data.astype(np.uint16)  # e.g. class 256 added: napari refuses to paint it in uint8
            state.retype(data.dtype)
            layer.data = data
        if old is not None:
            n_values = int(data.max()) + 1 if data.size else 1
            lut = class_lut(old, new, n_values, data.dtype)
            if lut is not None:
                removed = (lut == 0) & (np.arange(lut.size) != 0)
                cleared = int(removed[data].sum())
                if lut.dtype != data.dtype:
                    state.retype(lut.dtype)
                layer.data = lut[data]  # a new, writable array; napari's stroke history restarts
                state.remap(lut, new)
        state.classes = new
        self.decorate(layer, new)
        return cleared
