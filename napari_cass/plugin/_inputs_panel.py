"""The Image section: which image layer, which slices, which region.

The combos list the viewer's Image and Shapes layers by name and follow layer
insertions, removals and renames; :meth:`InputsPanel.disconnect` undoes every
connection (the dock closing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtWidgets import QComboBox, QFormLayout, QWidget

from ._classes import META_KEY
from ._compact import compact_combo
from ._layer_inputs import STACK_ALL, STACK_CHOOSE, STACK_CURRENT, WHOLE_IMAGE

__all__ = ["InputsPanel"]


class InputsPanel(QWidget):
    """Image / stack / region choosers bound to a viewer's layer list."""

    def __init__(self, viewer: Any, on_removed: Callable[[Any], None] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._on_removed_cb = on_removed
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("Image layer to segment: 2-D grey, RGB or RGBA, or a stack.")
        self.stack_combo = QComboBox()
        self.stack_combo.addItems([STACK_CHOOSE, STACK_CURRENT, STACK_ALL])
        self.stack_combo.setToolTip(
            "For 3-D / time stacks: segment only the slice shown, or every slice of a 3-D stack."
        )
        self.region_combo = QComboBox()
        self.region_combo.setToolTip(
            "Re-segment only inside the rectangles / polygons / ellipses of a Shapes layer."
        )
        for combo in (self.image_combo, self.stack_combo, self.region_combo):
            compact_combo(combo)  # a long layer name never widens the dock
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Layer:", self.image_combo)
        form.addRow("Stacks:", self.stack_combo)
        form.addRow("Region:", self.region_combo)
        self._named: list[Any] = []
        events = viewer.layers.events
        events.inserted.connect(self._on_inserted)
        events.removed.connect(self._on_removed)
        for layer in viewer.layers:
            self._watch_name(layer)
        self.refresh()

    def _watch_name(self, layer: Any) -> None:
        layer.events.name.connect(self.refresh)
        self._named.append(layer)

    def _on_inserted(self, event: Any) -> None:
        self._watch_name(event.value)
        self.refresh()

    def _on_removed(self, event: Any) -> None:
        layer = event.value
        self._unwatch(layer)
        if self._on_removed_cb is not None:
            self._on_removed_cb(layer)
        self.refresh()

    def _unwatch(self, layer: Any) -> None:
        try:
            layer.events.name.disconnect(self.refresh)
        except (TypeError, ValueError, RuntimeError):
            pass
        self._named = [ly for ly in self._named if ly is not layer]

    def disconnect_viewer(self) -> None:
        """Remove every connection to the viewer (the dock is closing)."""
        events = self.viewer.layers.events
        for signal, cb in ((events.inserted, self._on_inserted), (events.removed, self._on_removed)):
            try:
                signal.disconnect(cb)
            except (TypeError, ValueError, RuntimeError):
                pass
        for layer in list(self._named):
            self._unwatch(layer)

    def refresh(self, *_: Any) -> None:
        from napari.layers import Image, Shapes

        current_image = self.image_combo.currentText()
        current_region = self.region_combo.currentText()
        images = [ly.name for ly in self.viewer.layers if isinstance(ly, Image)
                  and "confidence_of" not in (ly.metadata.get(META_KEY) or {})]
        shapes = [ly.name for ly in self.viewer.layers if isinstance(ly, Shapes)]
        for combo, names, keep, first in (
            (self.image_combo, images, current_image, None),
            (self.region_combo, shapes, current_region, WHOLE_IMAGE),
        ):
            combo.blockSignals(True)
            combo.clear()
            if first:
                combo.addItem(first)
            combo.addItems(names)
            idx = combo.findText(keep)
            fallback = combo.count() - 1 if combo is self.image_combo else 0
            combo.setCurrentIndex(idx if idx >= 0 else fallback)
            combo.blockSignals(False)
        if self.image_combo.currentText() != current_image:
            self.image_combo.currentTextChanged.emit(self.image_combo.currentText())

    def select_image(self, name: str) -> None:
        self.refresh()
        idx = self.image_combo.findText(name)
        if idx >= 0:
            self.image_combo.setCurrentIndex(idx)
