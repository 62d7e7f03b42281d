"""Batch mode in the viewer: one image layer and one labels layer, reused image after image.

Previous / Next replace the layers' data in place (``layer.data = ...``) and
rename them; they never remove and add layers, a sequence that crashes napari
on software OpenGL (Mesa: VMs, remote desktops, Xvfb). Corrections are saved
shortly after every paint event (a 0.5 s debounce), before moving, and when the
dock or the viewer closes; :meth:`BatchSession.save_if_changed` makes that cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer

from ._batch import BatchPanel
from ._batch_session import CLASSES_FILE, BatchSession, _check_extends
from ._classes import META_KEY, LabelClasses
from ._label_sync import LabelSync, labels_name

__all__ = ["BatchController"]

AUTOSAVE_MS = 500


class BatchController:
    """The widget's batch wiring (the Qt-free session is :class:`BatchSession`)."""

    def __init__(
        self, viewer: Any, sync: LabelSync, panel: BatchPanel, *,
        table: Any, select_image: Callable[[str], None], segment: Callable[..., bool],
        is_running: Callable[[], bool], say: Callable[[str, str], None],
    ) -> None:
        self.viewer = viewer
        self.sync = sync
        self.panel = panel
        self.table = table
        self._select_image = select_image
        self._segment = segment
        self._is_running = is_running
        self._say = say
        self.session: BatchSession | None = None
        # The two layers batch mode reuses (held, so a save still works while napari
        # removes them, e.g. Viewer.close() clears the layer list before the window closes).
        self._image: Any = None
        self._labels: Any = None
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(AUTOSAVE_MS)
        self._timer.timeout.connect(lambda: self.save(quiet=True))

    # ---------------------------------------------------------- layers
    def _in_viewer(self, layer: Any) -> Any:
        if layer is None:
            return None
        uid = layer.unique_id
        return next((ly for ly in self.viewer.layers if ly.unique_id == uid), None)

    @property
    def image_layer(self) -> Any:
        return self._in_viewer(self._image)

    @property
    def labels_layer(self) -> Any:
        return self._in_viewer(self._labels)

    def on_paint(self, layer: Any) -> None:
        """A paint event on a layer: restart the auto-save timer if it is the batch mask."""
        if self.session is not None and self._labels is not None \
                and layer.unique_id == self._labels.unique_id:
            self._timer.start()

    def layer_removed(self, layer: Any) -> None:
        """One of the batch layers left the viewer: save first, then forget it."""
        uid = layer.unique_id
        mine = [ly for ly in (self._image, self._labels) if ly is not None]
        if not any(ly.unique_id == uid for ly in mine):
            return
        self._save_layers(self._image, self._labels)
        if self._image is not None and self._image.unique_id == uid:
            self._image = None
        if self._labels is not None and self._labels.unique_id == uid:
            self._labels = None

    def refuses(self, labels: Any, classes: LabelClasses) -> str | None:
        """Why the batch mask ``labels`` cannot take the class list ``classes`` (None: it can).

        Masks already saved in this batch use the numbers of ``classes.json``, so
        its classes keep their names and order; new classes go at the end. Asked
        before a class-table edit remaps the layer, so a refused edit changes nothing.
        """
        if self.session is None or labels is None or self._labels is None \
                or labels.unique_id != self._labels.unique_id:
            return None
        try:
            doc = self.session.saved_classes()
            if doc is not None:
                _check_extends(self.session.output_dir / CLASSES_FILE,
                               [c["name"] for c in doc["classes"]], list(classes.names))
        except ValueError as err:
            return f"Class edit undone. {err}"
        except OSError:
            return None  # an unreadable classes.json: the next save says so
        return None

    # ------------------------------------------------------------ open
    def open(self, image_dir: str, output_dir: str) -> bool:
        """Open (or resume) a batch and show its current image."""
        if not image_dir or not output_dir:
            self._say("error", "Choose both an image folder and an output folder for batch mode.")
            return False
        try:
            session = BatchSession(image_dir, output_dir)
            saved = session.saved_classes()
            session.save_progress()
        except (ValueError, OSError) as err:
            self._say("error", str(err))
            return False
        if saved is not None:  # the dataset's class list wins: masks keep their meaning
            # quietly: loading it is no edit of the image shown before (its labels keep theirs)
            blocked = self.table.blockSignals(True)
            try:
                self.table.load_file(session.output_dir / "classes.json")
            finally:
                self.table.blockSignals(blocked)
        self.session = session
        self.panel.image_dir.setText(str(session.image_dir))
        self.panel.output_dir.setText(str(session.output_dir))
        return self.show()

    def show(self) -> bool:
        """Put the current image (and its saved mask, or a new run) into the layers."""

        session = self.session
        assert session is not None
        try:
            data = session.read_image()
            mask = session.load_mask()
        except (ValueError, OSError) as err:
            self._say("error", str(err))
            self.panel.set_session(session)
            return False
        stem = session.stems[session.index]
        rgb = data.ndim == 3 and data.shape[-1] in (3, 4)
        image = self.image_layer
        if image is not None and bool(image.rgb) == rgb and image.data.ndim == data.ndim:
            image.data = data
            image.name = stem
            image.reset_contrast_limits()
        else:  # first image, or grey <-> colour (napari cannot switch that in place)
            if image is not None:  # already saved by step(): forget it before removing
                self._image = None
                self.viewer.layers.remove(image)
            image = self.viewer.add_image(data, name=stem, rgb=rgb)
            self._image = image
            kept = self.labels_layer
            if kept is not None:  # the new image goes under the mask, not over it (hiding it)
                layers = self.viewer.layers
                layers.move(layers.index(image), layers.index(kept))
        shape = data.shape[:2]
        classes = self.table.label_classes()
        labels = self.labels_layer
        values = np.array(mask, copy=True) if mask is not None else np.zeros(shape, np.uint8)
        if labels is not None and labels.data.ndim == values.ndim:
            labels.data = values
            labels.name = labels_name(stem)
        else:
            if labels is not None:
                self._labels = None
                self.viewer.layers.remove(labels)
            labels = self.viewer.add_labels(values, name=labels_name(stem), opacity=0.6)
            self._labels = labels
        self.sync.reset(labels, classes)
        self.sync.decorate(labels, classes, classes.to_meta(image=stem, resumed=mask is not None))
        self._select_image(stem)
        self.panel.set_session(session)
        if mask is not None:
            self.viewer.layers.selection.active = labels
            return True
        return self._segment()

    # ------------------------------------------------------------ save
    def save(self, quiet: bool = False) -> bool:
        """Save the current mask (only what changed); False, with a message, on failure."""
        return self._save_layers(self.image_layer, self.labels_layer)

    def _save_layers(self, image: Any, labels: Any) -> bool:
        self._timer.stop()
        session = self.session
        if session is None or image is None or labels is None:
            return True
        meta = labels.metadata.get(META_KEY)
        classes = LabelClasses.from_meta(meta) if meta else self.table.label_classes()
        try:
            session.save_if_changed(np.asarray(image.data), np.asarray(labels.data), classes)
        except (ValueError, OSError) as err:
            self._say("error", f"Could not save the mask of {session.current.name}: {err}")
            return False
        self.panel.set_session(session)
        return True

    def step(self, step: int) -> bool:
        """Save the current mask, then go ``step`` images forward (or back)."""
        session = self.session
        if session is None:
            self._say("info", "Open a batch folder first (Batch section).")
            return False
        if self._is_running():
            self._say("info", "Wait for the segmentation to finish (or cancel it) before moving on.")
            return False
        if not self.save():
            return False
        if not session.go(step):
            self.panel.set_session(session)
            self._say("info", "This is the last image." if step > 0 else "This is the first image.")
            return False
        return self.show()

    def close(self) -> None:
        """Dock or viewer closing: save what is unsaved, stop the timer."""
        self._timer.stop()
        if self.session is not None:
            self.save(quiet=True)
