"""The "CASS segmentation" dock widget: a thin composer of one-job parts.

* :mod:`._inputs_panel` / :mod:`._layer_inputs`: which image, slices, region;
* :mod:`._class_table`: the class list (class ids survive reordering);
* :mod:`._run_panel` / :mod:`._run_controller`: model choice, worker, progress, cancel;
* :mod:`._server_panel`: the "server…" device (a remote ``napari-cass serve``);
* :mod:`._label_sync` / :mod:`._label_state` / :mod:`._run_merge`: labels layers, edits, undo;
* :mod:`._export_panel`, :mod:`._batch_controller`: export and batch mode;
* :mod:`._error_panel`: the bounded status / error area.

Labels layers: a class's label value is its id (stable while the layer lives:
reordering or renaming rows touches no pixel; files are written with row k =
label k), label 0 = background, names in ``layer.features``, colours in a
``DirectLabelColormap``, the class list and the linked image's ``unique_id`` in
``layer.metadata["napari_cass"]``. The undo model is in :mod:`._label_state`. The widget works through the public napari
API only, so it behaves the same with the ``PublicOnlyProxy`` viewer napari
hands to plugins.
"""

from __future__ import annotations

from ._gl_safety import preload_triton

preload_triton()  # before anything imports torch's compiler stack (see _gl_safety)

from ._memory import return_large_blocks_to_os

return_large_blocks_to_os()  # label maps of big photos: freed memory goes back (see _memory)

from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, QSize
from qtpy.QtWidgets import QScrollArea, QVBoxLayout, QWidget
from superqt import QCollapsible

from ._batch import BatchPanel
from ._batch_controller import BatchController
from ._class_edits import ClassEditsMixin
from ._class_table import ClassTable
from ._dock_lifecycle import DockLifecycleMixin
from ._error_panel import ErrorPanel, ask_yes_no, notify
from ._export_panel import ExportPanel, export_item
from ._inputs_panel import InputsPanel
from ._label_state import region_bbox
from ._label_sync import LabelSync, labels_name
from ._run_merge import RunContext, build_result
from ._layer_inputs import (
    STACK_ALL,
    STACK_CHOOSE,
    STACK_CURRENT,
    WHOLE_IMAGE,
    image_slices,
    region_mask,
)
from ._run_controller import RunController, default_segmenter_factory
from ._run_panel import SHORTCUTS, ModelPanel, RunPanel
from ._settings import WidgetSettings, load_settings, save_settings
from ._shortcuts import Shortcuts
from ._widget_settings import apply_settings, settings_of

__all__ = [
    "SHORTCUTS",
    "STACK_ALL",
    "STACK_CHOOSE",
    "STACK_CURRENT",
    "WHOLE_IMAGE",
    "CassWidget",
    "default_segmenter_factory",
]

#: Widest size hint of the dock (px): napari sizes its first window from the docks' hints,
#: and its layer list + canvas take 1089 px (Linux), so 1089 + 9 + 260 fits a 1366 px screen.
#: The sections' own minimum width wins where a platform's fonts need more.
DOCK_WIDTH = 260


class CassWidget(ClassEditsMixin, DockLifecycleMixin, QWidget):
    """Dock widget "CASS segmentation".

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Injected by napari (a ``PublicOnlyProxy`` of the viewer).
    segmenter_factory : callable, optional
        ``factory(clip=, vfm=, method=, preset=, device=[, progress=]) -> Segmenter``.
        The public attribute of the same name may be replaced at any time: the
        documented way to use your own weights, or tiny models in tests.
        Default: :func:`default_segmenter_factory` (pretrained weights). While the
        device is "server…", runs use a :class:`napari_cass.server.RemoteSegmenter`
        for the Model section's URL instead (see :mod:`._server_panel`).
    """

    def __init__(self, napari_viewer: Any, segmenter_factory: Callable[..., Any] | None = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.segmenter_factory: Callable[..., Any] = segmenter_factory or default_segmenter_factory
        self.last_run: dict[str, Any] = {}
        #: ``confirm(question) -> bool``: asked before a class edit unlabels hand-painted
        #: pixels (a Yes/No dialog; scripts and tests may replace it).
        self.confirm: Callable[[str], bool] = lambda question: ask_yes_no(self, question)
        self.shortcuts = Shortcuts(napari_viewer)
        self._closed = False
        self._docked = False
        self._window: QObject | None = None
        self._ctx: RunContext | None = None

        self.sync = LabelSync(napari_viewer)
        self._run_factory: Callable[..., Any] | None = None  # chosen when a run starts
        self.runner = RunController(lambda: self._run_factory or self.segmenter_factory, self)
        self._build_ui()
        self.model.server.say = self._say
        self.batch = BatchController(
            napari_viewer, self.sync, self.batch_panel, table=self.class_table,
            select_image=self.select_image, segment=self.segment,
            is_running=lambda: self.is_running, say=self._say,
        )
        self.sync.on_paint = self.batch.on_paint
        self.sync.listen()
        self.runner.started.connect(lambda: self._running_changed(True))
        self.runner.progressed.connect(lambda v, m: self.errors.set_status(f"{v}% {m}"))
        self.runner.device.connect(lambda d: self.model.device_label.setText(f"running on: {d}"))
        self.runner.finished.connect(self._on_finished)
        self.class_table.error.connect(lambda msg: self._say("error", msg))
        self.inputs.image_combo.currentTextChanged.connect(self._on_image_changed)
        self._restore_settings(load_settings())
        # Only now: restoring the last class list is no edit of the labels already open (a dock
        # reopened after a class removal renumbered them), and the table follows those labels.
        self.class_table.changed.connect(self._on_classes_changed)
        self._on_image_changed(self.image_combo.currentText())
        self._bind_keys()

    # ================================================================== UI
    def _build_ui(self) -> None:
        self.inputs = InputsPanel(self.viewer, on_removed=self._on_layer_removed)
        self.class_table = ClassTable()
        self.model = ModelPanel()
        self.run_panel = RunPanel()
        self.export_panel = ExportPanel(self.export_dataset)
        self.batch_panel = BatchPanel(self.batch_open, self.batch_step)
        self.errors = ErrorPanel()
        self.run_panel.segment_btn.clicked.connect(lambda _checked=False: self.segment())
        self.run_panel.cancel_btn.clicked.connect(lambda _checked=False: self.cancel())
        self.run_panel.undo_btn.clicked.connect(lambda _checked=False: self.undo_last_run())

        content = QWidget()
        column = QVBoxLayout(content)
        column.setContentsMargins(2, 2, 2, 2)
        self.sections: dict[str, QCollapsible] = {}
        for title, part, expanded in (
            ("Image", self.inputs, True), ("Classes (row k = label k)", self.class_table, True),
            ("Run", self.run_panel, True), ("Model", self.model, False),
            ("Export", self.export_panel, True), ("Batch (a folder of images)", self.batch_panel, False),
        ):
            section = QCollapsible(title)
            section.layout().setContentsMargins(0, 0, 0, 0)  # its 9 px sides cost 18 px of width
            section.addWidget(part)
            section.expand(animate=False) if expanded else section.collapse(animate=False)
            column.addWidget(section)
            self.sections[title.split(" ")[0]] = section
        column.addStretch(1)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(content)
        self.scroll.setMinimumHeight(120)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.scroll, 1)
        layout.addWidget(self.errors)
        # Short aliases used by scripts and tests.
        for name in ("image_combo", "stack_combo", "region_combo"):
            setattr(self, name, getattr(self.inputs, name))
        for name in ("method_combo", "preset_combo", "clip_combo", "vfm_combo", "device_combo",
                     "device_label"):
            setattr(self, name, getattr(self.model, name))
        for name in ("replace_all_check", "confidence_check", "refine_check", "segment_btn",
                     "cancel_btn", "undo_btn"):
            setattr(self, name, getattr(self.run_panel, name))
        self.export_btn = self.export_panel.export_btn

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        """At most :data:`DOCK_WIDTH` wide, never narrower than the sections' minimum plus the
        vertical scrollbar (so the first window fits a laptop screen without a horizontal bar)."""
        hint = super().sizeHint()
        content = self.scroll.widget().minimumSizeHint().width()
        bar = self.scroll.verticalScrollBar().sizeHint().width() + 2 * self.scroll.frameWidth()
        return QSize(min(hint.width(), max(DOCK_WIDTH, content + bar)), hint.height())

    @property
    def status_label(self) -> Any:
        """The one-line status (errors: :attr:`errors` holds the whole message)."""
        return self.errors.status

    def _say(self, kind: str, message: str) -> None:
        if kind == "error":
            self.errors.set_error(message)
        else:
            self.errors.set_status(message)
            if kind == "warning":
                notify("warning", message)

    def _restore_settings(self, s: WidgetSettings) -> None:
        apply_settings(self, s)

    def current_settings(self) -> WidgetSettings:
        """The choices to remember for the next session."""
        return settings_of(self)

    # ============================================================ layers
    def selected_image_layer(self) -> Any:
        from napari.layers import Image

        return self.sync.layer(self.image_combo.currentText(), Image)

    def select_image(self, name: str) -> None:
        self.inputs.select_image(name)

    @staticmethod
    def labels_name(image_name: str) -> str:
        return labels_name(image_name)

    def labels_layer_for(self, image: Any) -> Any:
        """The labels layer of an image layer (or of the image layer with that name)."""
        return self.sync.labels_layer_for(image)

    def _current_labels(self) -> Any:
        image = self.selected_image_layer()
        return self.labels_layer_for(image) if image is not None else None

    def _on_layer_removed(self, layer: Any) -> None:
        self.batch.layer_removed(layer)  # saves a batch mask before its layer is gone
        self.sync.forget(layer)

    # ========================================================== segmentation
    @property
    def is_running(self) -> bool:
        return self.runner.is_running

    @property
    def run_in_thread(self) -> bool:
        """False runs synchronously (scripts); the GUI always uses a worker thread."""
        return self.runner.run_in_thread

    @run_in_thread.setter
    def run_in_thread(self, value: bool) -> None:
        self.runner.run_in_thread = bool(value)

    @property
    def segmenter(self) -> Any:
        """The cached Segmenter (None until the first run builds it)."""
        return self.runner.segmenter

    def segment(self) -> bool:
        """Start a run with the current choices; False (and a message) if it cannot start."""
        from napari.layers import Shapes

        if self.is_running:
            self._say("info", "A segmentation is running: wait for it or press Cancel.")
            return False
        layer = self.selected_image_layer()
        if layer is None:
            self._say("error", "No image layer to segment: open an image (File > Open, or File > "
                      "Open Sample > CASS open-vocabulary segmentation) and choose it under 'Image'.")
            return False
        try:
            classes = self.class_table.label_classes()
            prompts = classes.prompts()
            # "server…": a RemoteSegmenter built in the worker, else the injectable factory
            factory = self.model.server.factory() if self.model.uses_server else self.segmenter_factory
            leading, images = image_slices(layer, self.stack_combo.currentText(), self.viewer.dims.point)
            region = bbox = None
            shapes = self.sync.layer(self.region_combo.currentText(), Shapes)
            if shapes is not None:
                region = region_mask(shapes, layer, images[0].shape[:2])
                h, w = region.shape
                bbox = region_bbox(region, margin=max(16, int(0.05 * max(h, w))))
                images = [img[bbox] for img in images]
        except ValueError as err:
            self._say("error", str(err))
            return False
        key = self.model.key()
        ctx = RunContext(
            image_uid=layer.unique_id, image_name=layer.name, leading=leading, region=region,
            bbox=bbox, classes=classes, replace_all=self.replace_all_check.isChecked(),
            confidence=self.confidence_check.isChecked(),
            settings=dict(zip(("clip", "vfm", "method", "preset", "device"), key)),
        )
        try:
            self.sync.begin_run(ctx, layer)
        except ValueError as err:
            self._say("error", str(err))
            return False
        save_settings(self.current_settings())
        self._run_factory = factory
        if self.model.uses_server:  # which server made these labels
            from napari_cass.server import url_without_credentials

            ctx.settings["server"] = url_without_credentials(factory.url)
        refine = "pamr" if self.refine_check.isChecked() else None
        ctx.settings["refine"] = refine or "none"  # recorded with the labels
        self._ctx = ctx
        self.runner.start(images, prompts, classes.background(), key,
                          finish=lambda results, check: build_result(ctx, results, check),
                          refine=refine)
        return True

    def cancel(self) -> None:
        """Stop the run; nothing it computed reaches a layer."""
        if self.is_running:
            self.runner.cancel()
            self.errors.set_status("cancelling…")

    def _running_changed(self, running: bool) -> None:
        self.run_panel.set_running(running)
        if running:
            self.errors.set_status("segmenting…")

    def _on_finished(self, ok: bool, message: str, job: Any, seconds: float) -> None:
        self.run_panel.set_running(False)
        ctx, self._ctx = self._ctx, None
        if not ok or ctx is None:
            if "cancelled" in message:
                self.errors.set_status("cancelled: the layers are unchanged")
            else:
                self.errors.set_error(message)
            return
        output, job.output = job.output, None  # the merge's full-size arrays go with this call
        try:
            labels = self.sync.apply(ctx, output)
            self._on_classes_changed()  # the table may have been edited during the run
        except ValueError as err:
            self.errors.set_error(str(err))
            return
        cached = job.from_cache
        self.last_run = {
            "seconds": seconds, "from_cache": cached, "slices": job.slices,
            "timings": job.timings, "labels": labels.name,
        }
        self.errors.set_status(f"done in {seconds:.1f} s" + (" (features re-used)" if cached else ""))

    def undo_last_run(self) -> bool:
        """Put back the labels the last run replaced on the current image."""
        labels = self._current_labels()
        if labels is None:
            self._say("info", "Nothing to undo: this image has no labels yet (press Segment first).")
            return False
        if self.is_running:
            self._say("info", "A segmentation is running: wait for it or press Cancel.")
            return False
        restored = self.sync.undo_last_run(labels)
        if restored is None:
            self._say("info", "Nothing to undo: no re-run has changed these labels since they were "
                      "made (a first run is undone by deleting its layer).")
            return False
        self.errors.set_status(f"last run undone ({restored} px restored)")
        return True

    # =============================================================== export
    def export_dataset(self, folder: str | Path) -> dict[str, Path] | None:
        """Add the current image and its labels to a dataset folder (never overwrites)."""
        image = self.selected_image_layer()
        labels = self.labels_layer_for(image) if image is not None else None
        if image is None or labels is None:
            self._say("error", "Nothing to export: segment an image first (its labels layer is missing).")
            return None
        try:
            paths = export_item(folder, image, labels, self.class_table.label_classes())
        except (ValueError, OSError) as err:
            self._say("error", str(err))
            return None
        self.errors.set_status(f"exported {paths['image'].name} to {Path(folder).name}")
        return paths

    # ================================================================ batch
    def batch_open(self, image_dir: str, output_dir: str) -> bool:
        """Open (or resume) a batch folder."""
        ok = self.batch.open(image_dir, output_dir)
        if ok:
            self.errors.clear_error()  # opened: an earlier error no longer stands
        return ok

    def batch_step(self, step: int) -> bool:
        """Save the current mask, then go ``step`` images forward (or back)."""
        ok = self.batch.step(step)
        if ok:
            self.errors.clear_error()
        return ok

    def batch_save(self) -> bool:
        return self.batch.save()

    # ============================================================ shortcuts
    def toggle_labels(self) -> None:
        """Show / hide the labels of the current image."""
        from napari.layers import Labels

        target = self._current_labels()
        if target is None:
            target = next((ly for ly in self.viewer.layers.selection if isinstance(ly, Labels)), None)
        if target is not None:
            target.visible = not target.visible

    def _bind_keys(self) -> None:
        taken = self.shortcuts.bind({
            "segment": self.segment, "next": lambda: self.batch_step(1),
            "previous": lambda: self.batch_step(-1), "toggle_labels": self.toggle_labels,
        })
        if taken:
            notify("warning", f"napari-cass: {', '.join(taken)} already bound; those shortcuts are not set.")
