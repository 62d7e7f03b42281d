"""Batch mode in the viewer: one image layer and one labels layer, reused image after image.

Previous / Next replace the layers' data in place (``layer.data = ...``) and
rename them; they never remove and add layers, a sequence that crashes napari
on software OpenGL (Mesa: VMs, remote desktops, Xvfb). Corrections are saved
shortly after every paint event (a 0.5 s debounce), before moving, and when the
dock or the viewer closes; :meth:`BatchSession.save_if_changed` makes that cheap.

Both layers carry ``metadata["napari_cass_batch"]``: the folders and the file name
of the image they show. A mask is saved only under that name (never under the
name of an image that failed to load), and a dock opened again finds the layers
(and the folders) there instead of adding a second pair. An unreadable image is
skipped: Next / Previous / Open go on to the nearest readable one and say which
were skipped (marked ``failed`` in ``progress.json``); if none can be read the
layers are hidden and nothing is saved.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer

from ._batch import BatchPanel, remember_folders, remembered_folders
from ._batch_files import check_extends as _check_extends
from ._batch_session import CLASSES_FILE, BatchSession
from ._classes import META_KEY, LabelClasses
from ._label_sync import LabelSync, labels_name

__all__ = ["BATCH_KEY", "BatchController"]

AUTOSAVE_MS = 500
#: Layer metadata key of the two batch layers: ``{"image_dir", "output_dir", "image"}``.
BATCH_KEY = "napari_cass_batch"


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
        self._fill_fields()

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
        """Open (or resume) a batch and show its current image (or the nearest readable one)."""
        if not image_dir or not output_dir:
            self._say("error", "Choose both an image folder and an output folder for batch mode.")
            return False
        if self._is_running():
            self._say("info", "Wait for the segmentation to finish (or cancel it) before opening a batch.")
            return False
        self._timer.stop()
        if self.session is not None:  # another folder opened in the same dock: keep its edits
            self.save(quiet=True)
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
                self.table.load_file(session.output_dir / CLASSES_FILE)
            finally:
                self.table.blockSignals(blocked)
        self.session = session
        self.panel.image_dir.setText(str(session.image_dir))
        self.panel.output_dir.setText(str(session.output_dir))
        remember_folders(session.image_dir, session.output_dir)
        self._adopt()
        self.panel.set_message("\n".join(session.warnings))
        for warning in session.warnings:
            self._say("warning", warning)
        return self._visit(session.index, 0)

    def _batch_layers(self) -> tuple[Any, Any]:
        """The last image and labels layers in the viewer that batch mode made (or None)."""
        from napari.layers import Image, Labels

        found: dict[type, Any] = {}
        for layer in self.viewer.layers:
            for kind in (Image, Labels):
                if isinstance(layer, kind) and isinstance(layer.metadata.get(BATCH_KEY), dict):
                    found[kind] = layer
        return found.get(Image), found.get(Labels)

    def _adopt(self) -> None:
        """Reuse the batch layers a closed dock left (no second pair), saving their strokes."""
        if self.image_layer is not None or self.labels_layer is not None:
            return
        self._image, self._labels = self._batch_layers()
        self._save_layers(self._image, self._labels)  # strokes made while the dock was closed

    def _fill_fields(self) -> None:
        """Folder fields of a new dock: from the batch layers, else the last folders used."""
        image, labels = self._batch_layers()
        meta = next((ly.metadata[BATCH_KEY] for ly in (labels, image) if ly is not None), None)
        self.panel.fill(meta or remembered_folders())

    # ------------------------------------------------------------ show
    def _visit(self, first: int, step: int) -> bool:
        """Show the first readable image from ``first`` on, moving by ``step``.

        ``step`` 0 (open): forward, then backward. Unreadable images are marked
        failed and skipped, and the message names them. With ``step`` +-1 and no
        readable image that way, the image shown before stays (and stays current).
        """
        session = self.session
        assert session is not None
        before, n = session.index, len(session)
        if step:
            order = list(range(first, n) if step > 0 else range(first, -1, -1))
        else:
            order = [*range(first, n), *range(first - 1, -1, -1)]
        skipped: list[str] = []
        for i in order:
            session.go_to(i)
            name = session.current.name
            try:
                data = session.read_image()
            except (ValueError, OSError):
                skipped.append(name)
                continue
            try:
                mask = session.load_mask()
            except (ValueError, OSError) as err:
                session.mark_failed(name, f"its saved mask cannot be read ({err}); delete the "
                                          "mask to segment the image afresh")
                skipped.append(name)
                continue
            self._show(data, mask)
            if skipped:
                self._tell("warning", f"Skipped {self._list_failed(skipped)}: marked failed in "
                                      "progress.json; nothing is saved under their names.")
            return True if mask is not None else self._segment()
        if step and self._shown_index(self.image_layer, self.labels_layer) == before:
            session.go_to(before)  # the image on screen stays the current one
            self.panel.set_session(session)
            self._tell("warning", f"No readable image {'after' if step > 0 else 'before'} this "
                                 f"one: {self._list_failed(skipped)} skipped.")
            return False
        self._blank()
        self._tell("error", f"No image of {session.image_dir} can be read: "
                           f"{self._list_failed(skipped)}. The batch layers are hidden and "
                           "nothing is saved; fix or remove those files, then Open / resume.")
        return False

    def _tell(self, kind: str, message: str) -> None:
        """Say it in the dock's status line and keep it under the batch counter."""
        self.panel.set_message(message)
        self._say(kind, message)

    def _list_failed(self, names: list[str]) -> str:
        failed = self.session.failed if self.session is not None else {}
        shown = [f"{n} ({failed.get(n, 'unreadable')})" for n in names[:3]]
        return ", ".join(shown) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    def _blank(self) -> None:
        """No image to show: hide the batch layers and tie them to no image (nothing saves)."""
        for layer in (self.image_layer, self.labels_layer):
            if layer is not None:
                layer.visible = False
                layer.metadata[BATCH_KEY] = {**layer.metadata.get(BATCH_KEY, {}), "image": None}
        if self.session is not None:
            self.panel.set_session(self.session)

    def _show(self, data: Any, mask: Any) -> None:
        """Put the current image and its saved mask (or an empty one) into the batch layers."""
        session = self.session
        assert session is not None
        stem = session.stems[session.index]
        tag = {"image_dir": str(session.image_dir), "output_dir": str(session.output_dir),
               "image": session.current.name}
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
        values = self._as_values(mask, classes) if mask is not None else np.zeros(shape, np.uint8)
        if labels is not None and labels.data.ndim == values.ndim:
            self.sync.forget(labels)  # the old image's edit history means nothing for the new one
            labels.data = values
            labels.name = labels_name(image.name)
        else:
            if labels is not None:
                self._labels = None
                self.viewer.layers.remove(labels)
            labels = self.viewer.add_labels(values, name=labels_name(image.name), opacity=0.6)
            self._labels = labels
        for layer in (image, labels):
            layer.metadata[BATCH_KEY] = dict(tag)
            layer.visible = True
        self.sync.reset(labels, classes)
        self.sync.decorate(labels, classes, classes.to_meta(image=image.name, resumed=mask is not None))
        link = getattr(self.sync, "link", None)  # labels follow the image layer itself, not its name
        if callable(link):
            link(labels, image)
        self._select_image(image.name)
        self.viewer.reset_view()  # the new image fits the canvas, whatever the last one's size
        self.panel.set_session(session)
        if mask is not None:
            self.viewer.layers.selection.active = labels

    @staticmethod
    def _as_values(mask: np.ndarray, classes: LabelClasses) -> np.ndarray:
        """A saved mask (row k = class k of the table) as the layer's label values (class ids)."""
        to_values = getattr(classes, "rows_to_values", None)
        if not callable(to_values) or not mask.size or int(mask.max()) >= classes.n_labels:
            return np.array(mask, copy=True)  # values are rows (or a mask the save will refuse)
        lut = np.asarray(to_values(np.uint16))
        if np.array_equal(lut, np.arange(lut.size)):
            return np.array(mask, copy=True)
        return lut.astype(np.min_scalar_type(int(lut.max())))[mask]

    def show(self) -> bool:
        """Show the current image (or the nearest readable one after it)."""
        return self._visit(self.session.index, 0) if self.session is not None else False

    # ------------------------------------------------------------ save
    def save(self, quiet: bool = False) -> bool:
        """Save the current mask (only what changed); False, with a message, on failure."""
        return self._save_layers(self.image_layer, self.labels_layer)

    def _shown_index(self, image: Any, labels: Any) -> int | None:
        """The batch image both layers show, or None (no image, another batch, a failed one)."""
        session = self.session
        if session is None or image is None or labels is None:
            return None
        tag = labels.metadata.get(BATCH_KEY)
        if not isinstance(tag, dict) or not tag.get("image") \
                or (image.metadata.get(BATCH_KEY) or {}).get("image") != tag["image"]:
            return None
        try:
            same = Path(str(tag.get("output_dir"))).resolve() == session.output_dir.resolve()
        except (OSError, ValueError):
            return None
        i = session.index_of(str(tag["image"])) if same else None
        return None if i is None or session.images[i].name in session.failed else i

    def _save_layers(self, image: Any, labels: Any) -> bool:
        self._timer.stop()
        session = self.session
        i = self._shown_index(image, labels)
        if session is None or i is None:
            return True  # nothing of this batch on screen: nothing to save, under no name
        meta = labels.metadata.get(META_KEY)
        classes = LabelClasses.from_meta(meta) if meta else self.table.label_classes()
        values = np.asarray(labels.data)
        to_rows = getattr(classes, "to_rows", None)  # label values are class ids: files hold rows
        try:
            if callable(to_rows):
                values = to_rows(values)
            session.save_if_changed(np.asarray(image.data), values, classes, index=i)
        except (ValueError, OSError) as err:
            self._say("error", f"Could not save the mask of {session.images[i].name}: {err}")
            return False
        self.panel.set_session(session)
        return True

    def step(self, step: int) -> bool:
        """Save the current mask, then go ``step`` images forward (or back), skipping unreadable ones."""
        session = self.session
        if session is None:
            self._say("info", "Open a batch folder first (Batch section).")
            return False
        if self._is_running():
            self._say("info", "Wait for the segmentation to finish (or cancel it) before moving on.")
            return False
        if not self.save():
            return False
        self.panel.set_message("")
        target = session.index + step
        if not 0 <= target < len(session):
            self.panel.set_session(session)
            self._say("info", "This is the last image." if step > 0 else "This is the first image.")
            return False
        return self._visit(target, 1 if step > 0 else -1)

    def close(self) -> None:
        """Dock or viewer closing: save what is unsaved, stop the timer."""
        self._timer.stop()
        if self.session is not None:
            self.save(quiet=True)
