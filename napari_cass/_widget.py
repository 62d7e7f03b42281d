"""The "CASS segmentation" dock widget: prompt, segment, correct, export, batch.

The widget is thin: the engine (:mod:`napari_cass.engine`) does the work in a
worker thread; this module turns napari layers into engine inputs and engine
results into a Labels layer (label k = row k of the class table, label 0 =
background, names in ``layer.features``, colours in a ``DirectLabelColormap``,
the class list in ``layer.metadata["napari_cass"]``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ._gl_safety import preload_triton

preload_triton()  # before anything imports torch's compiler stack (see _gl_safety)

import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._batch import BatchPanel, BatchSession
from ._class_table import ClassTable
from ._classes import META_KEY, LabelClasses
from ._corrections import CorrectionState, merge_labels, region_bbox
from ._settings import WidgetSettings, load_settings, save_settings
from ._workers import ProgressRelay, SegmentJob, friendly_error, run_job

if TYPE_CHECKING:
    import napari

__all__ = ["CassWidget", "SHORTCUTS", "default_segmenter_factory"]

_log = logging.getLogger(__name__)

CLIP_BACKBONES = ("ViT-B-16", "ViT-B-32", "ViT-L-14")
VFM_BACKBONES = ("dino_vitb8", "dino_vits8", "dino_vitb16")
DEVICES = ("auto", "cuda", "mps", "cpu")
STACK_CHOOSE = "choose for stacks…"
STACK_CURRENT = "current slice"
STACK_ALL = "all slices"
WHOLE_IMAGE = "whole image"
#: Viewer shortcuts: none is bound by napari 0.9 (Shift+P / Shift+L are Shapes tools).
SHORTCUTS = {
    "segment": "Shift-S",
    "next": "Shift-N",
    "previous": "Shift-B",
    "toggle_labels": "Shift-H",
}

SegmenterFactory = Callable[..., Any]


def default_segmenter_factory(
    clip: str, vfm: str, method: str, preset: str, device: str
) -> Any:
    """The real thing: pretrained CLIP + DINO weights (downloaded or from the cache)."""
    from napari_cass.engine import Segmenter

    return Segmenter.from_pretrained(
        clip=clip, clip_weights="openai", vfm=vfm, method=method, preset=preset, device=device
    )


@dataclass
class _RunContext:
    """What the GUI thread must remember while the worker runs."""

    image_layer: Image
    leading: list[tuple[int, ...]]
    region: np.ndarray | None  # (H, W) bool, or None for the whole image
    bbox: tuple[slice, slice] | None
    classes: LabelClasses
    replace_all: bool
    settings: dict[str, str]
    started: float
    on_done: Callable[[], None] | None = None


class CassWidget(QWidget):
    """Dock widget "CASS segmentation".

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Injected by napari.
    segmenter_factory : callable, optional
        ``factory(clip=, vfm=, method=, preset=, device=) -> Segmenter``; tests
        inject tiny random-weight models. Default: :func:`default_segmenter_factory`.
    """

    def __init__(
        self,
        napari_viewer: napari.viewer.Viewer,
        segmenter_factory: SegmenterFactory | None = None,
    ) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.segmenter_factory: SegmenterFactory = segmenter_factory or default_segmenter_factory
        #: Run the job in a napari thread worker (False: synchronously, for scripted use).
        self.run_in_thread = True
        self.last_run: dict[str, Any] = {}
        self._segmenter: Any = None
        self._segmenter_key: tuple | None = None
        self._worker: Any = None
        self._running = False
        self._status_final = False  # the last run wrote its final status line
        self._cancel_event: threading.Event | None = None
        self._pbar: Any = None
        self._pbar_value = 0
        self._states: dict[int, CorrectionState] = {}
        self._writing = False
        self._batch: BatchSession | None = None
        self._batch_layers: list[Any] = []
        self._bound_keys: list[str] = []
        self._relay = ProgressRelay(self)
        self._relay.progressed.connect(self._on_progress)

        self._build_ui()
        self._restore_settings(load_settings())
        self._connect_viewer()
        self._refresh_layer_combos()
        self._bind_keys()

    # ================================================================== UI
    def _build_ui(self) -> None:
        from napari_cass.engine import METHODS, PRESETS

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
        image_box = QGroupBox("Image")
        form = QFormLayout(image_box)
        form.addRow("Layer:", self.image_combo)
        form.addRow("Stacks:", self.stack_combo)
        form.addRow("Region:", self.region_combo)

        self.class_table = ClassTable()
        self.class_table.error.connect(lambda msg: show_error(msg))
        classes_box = QGroupBox("Classes (row k = label k)")
        QVBoxLayout(classes_box).addWidget(self.class_table)

        self.method_combo = QComboBox()
        self.method_combo.addItems(list(METHODS))
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(list(PRESETS))
        self.preset_combo.setToolTip("Parameter preset: 'interactive' for everyday images.")
        self.clip_combo = QComboBox()
        self.clip_combo.addItems(list(CLIP_BACKBONES))
        self.vfm_combo = QComboBox()
        self.vfm_combo.addItems(list(VFM_BACKBONES))
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        self.device_label = QLabel("running on: (not loaded yet)")
        model_box = QGroupBox("Model")
        mform = QFormLayout(model_box)
        mform.addRow("Method:", self.method_combo)
        mform.addRow("Preset:", self.preset_combo)
        mform.addRow("CLIP:", self.clip_combo)
        mform.addRow("VFM:", self.vfm_combo)
        mform.addRow("Device:", self.device_combo)
        mform.addRow("", self.device_label)

        self.replace_all_check = QCheckBox("Replace all (discard manual edits)")
        self.replace_all_check.setToolTip(
            "Unchecked: pixels you painted, filled or erased keep their label on a re-run."
        )
        self.confidence_check = QCheckBox("Confidence layer")
        self.confidence_check.setToolTip("Also add the max class probability, to spot doubtful areas.")
        self.segment_btn = QPushButton(f"Segment ({SHORTCUTS['segment'].replace('-', '+')})")
        self.segment_btn.setToolTip(
            f"Segment the image with the class list ({SHORTCUTS['segment'].replace('-', '+')}). "
            "Changing only the classes re-uses the image's features and is fast."
        )
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.undo_btn = QPushButton("Undo last run")
        self.undo_btn.setToolTip("Put back the labels as they were before the last re-run (Ctrl+Z also works).")
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.segment_btn.clicked.connect(lambda: self.segment())
        self.cancel_btn.clicked.connect(self.cancel)
        self.undo_btn.clicked.connect(self.undo_last_run)
        run_box = QGroupBox("Run")
        rl = QVBoxLayout(run_box)
        checks = QHBoxLayout()
        checks.addWidget(self.replace_all_check)
        checks.addWidget(self.confidence_check)
        rl.addLayout(checks)
        btns = QHBoxLayout()
        btns.addWidget(self.segment_btn, 2)
        btns.addWidget(self.cancel_btn, 1)
        btns.addWidget(self.undo_btn, 1)
        rl.addLayout(btns)
        rl.addWidget(self.status_label)
        keys = {k: v.replace("-", "+") for k, v in SHORTCUTS.items()}
        self.shortcuts_label = QLabel(
            f"Keys: {keys['segment']} segment · {keys['next']} / {keys['previous']} next / "
            f"previous image · {keys['toggle_labels']} show/hide labels"
        )
        self.shortcuts_label.setWordWrap(True)
        self.shortcuts_label.setToolTip("Viewer shortcuts added by napari-cass (none is a napari default).")
        rl.addWidget(self.shortcuts_label)

        self.export_btn = QPushButton("Export to dataset folder…")
        self.export_btn.setToolTip(
            "Write images/<name>.png, masks/<name>.png and classes.json (mmsegmentation / "
            "torchvision layout). Existing files are never replaced."
        )
        self.export_btn.clicked.connect(self._export_dialog)
        export_box = QGroupBox("Export")
        el = QVBoxLayout(export_box)
        el.addWidget(self.export_btn)
        el.addWidget(QLabel("Single masks: File > Save Selected Layer(s) (.png, .tif, .json)"))

        self.batch_panel = BatchPanel(self.batch_open, self.batch_step)
        batch_box = QGroupBox("Batch (a folder of images)")
        QVBoxLayout(batch_box).addWidget(self.batch_panel)

        layout = QVBoxLayout(self)
        for box in (image_box, classes_box, model_box, run_box, export_box, batch_box):
            layout.addWidget(box)
        layout.addStretch(1)

    def _restore_settings(self, s: WidgetSettings) -> None:
        for combo, value in (
            (self.method_combo, s.method), (self.preset_combo, s.preset),
            (self.clip_combo, s.clip), (self.vfm_combo, s.vfm), (self.device_combo, s.device),
            (self.stack_combo, s.stack_mode),
        ):
            idx = combo.findText(value)
            if idx >= 0:
                combo.setCurrentIndex(idx)
        self.confidence_check.setChecked(s.show_confidence)
        self.class_table.background_edit.setText(s.background)
        if s.classes_text.strip():
            self.class_table.set_from_text(s.classes_text)

    def current_settings(self) -> WidgetSettings:
        """The choices to remember for the next session."""
        return WidgetSettings(
            method=self.method_combo.currentText(),
            preset=self.preset_combo.currentText(),
            clip=self.clip_combo.currentText(),
            vfm=self.vfm_combo.currentText(),
            device=self.device_combo.currentText(),
            classes_text=self.class_table.classes_text(),
            background=self.class_table.background_edit.text(),
            stack_mode=self.stack_combo.currentText(),
            show_confidence=self.confidence_check.isChecked(),
        )

    # ============================================================ viewer
    def _connect_viewer(self) -> None:
        events = self.viewer.layers.events
        events.inserted.connect(self._on_layer_inserted)
        events.removed.connect(self._on_layer_removed)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._refresh_layer_combos)

    def _on_layer_inserted(self, event: Any) -> None:
        event.value.events.name.connect(self._refresh_layer_combos)
        self._refresh_layer_combos()

    def _on_layer_removed(self, event: Any) -> None:
        layer = event.value
        self._states.pop(id(layer), None)
        try:
            layer.events.name.disconnect(self._refresh_layer_combos)
        except (TypeError, ValueError, RuntimeError):
            pass
        self._refresh_layer_combos()

    def _refresh_layer_combos(self, *_: Any) -> None:
        current_image = self.image_combo.currentText()
        current_region = self.region_combo.currentText()
        images = [ly.name for ly in self.viewer.layers if isinstance(ly, Image)]
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
            combo.setCurrentIndex(idx if idx >= 0 else (combo.count() - 1 if combo is self.image_combo else 0))
            combo.blockSignals(False)

    def _layer(self, name: str, kind: type) -> Any:
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], kind):
            return self.viewer.layers[name]
        return None

    def selected_image_layer(self) -> Image | None:
        return self._layer(self.image_combo.currentText(), Image)

    def select_image(self, name: str) -> None:
        self._refresh_layer_combos()
        idx = self.image_combo.findText(name)
        if idx >= 0:
            self.image_combo.setCurrentIndex(idx)

    @staticmethod
    def labels_name(image_name: str) -> str:
        return f"{image_name} labels"

    def labels_layer_for(self, image_name: str) -> Labels | None:
        return self._layer(self.labels_name(image_name), Labels)

    # ========================================================== segmentation
    @property
    def is_running(self) -> bool:
        return self._running

    def _model_key(self) -> tuple[str, str, str, str, str]:
        return (
            self.clip_combo.currentText(), self.vfm_combo.currentText(),
            self.method_combo.currentText(), self.preset_combo.currentText(),
            self.device_combo.currentText(),
        )

    def _get_segmenter(self, key: tuple[str, str, str, str, str]) -> Any:
        """Build the Segmenter once per (backbones, method, preset, device); runs in the worker."""
        clip, vfm, method, preset, device = key
        build_key = (clip, vfm, device)
        seg = self._segmenter
        if seg is not None and self._segmenter_key == build_key:
            try:  # method / preset switch in place: no reload, the image cache stays valid
                if seg.method != method:
                    seg.set_method(method)
                if seg.preset.name != preset:
                    seg.set_preset(preset)
                return seg
            except (ValueError, AttributeError):
                pass  # e.g. a method that needs the VFM the segmenter was built without
        self._segmenter = None
        self._segmenter = self.segmenter_factory(
            clip=clip, vfm=vfm, method=method, preset=preset, device=device
        )
        self._segmenter_key = build_key
        return self._segmenter

    def _image_slices(self, layer: Image) -> tuple[list[tuple[int, ...]], list[np.ndarray]]:
        """The 2-D images to segment and their leading (slice) indices."""
        data = layer.data[0] if layer.multiscale else layer.data
        spatial = data.ndim - (1 if layer.rgb else 0)
        if layer.rgb and data.shape[-1] not in (3, 4):
            raise ValueError(f"Layer {layer.name!r}: colour images need 3 or 4 channels.")
        if spatial < 2:
            raise ValueError(f"Layer {layer.name!r} has shape {data.shape}: it is not an image.")
        if spatial == 2:
            return [()], [np.asarray(data)]
        n_lead = spatial - 2
        mode = self.stack_combo.currentText()
        if mode == STACK_CHOOSE:
            raise ValueError(
                f"Layer {layer.name!r} is a stack of shape {tuple(data.shape)}: choose "
                f"'{STACK_CURRENT}' or '{STACK_ALL}' in 'Stacks' (Image section)."
            )
        if mode == STACK_ALL:
            if n_lead != 1:
                raise ValueError(
                    f"Layer {layer.name!r} has {n_lead} slice axes (shape {tuple(data.shape)}): "
                    f"'{STACK_ALL}' only walks one axis (3-D stacks). Choose '{STACK_CURRENT}'."
                )
            return [(z,) for z in range(data.shape[0])], [np.asarray(data[z]) for z in range(data.shape[0])]
        point = np.asarray(self.viewer.dims.point)[-layer.ndim:]
        pos = np.round(np.asarray(layer.world_to_data(point))).astype(int)[:n_lead]
        lead = tuple(int(np.clip(p, 0, data.shape[i] - 1)) for i, p in enumerate(pos))
        return [lead], [np.asarray(data[lead])]

    def _region_mask(self, image: Image, hw: tuple[int, int]) -> np.ndarray | None:
        """Union of the chosen Shapes layer's areas, in the image's pixel grid."""
        name = self.region_combo.currentText()
        if name in ("", WHOLE_IMAGE):
            return None
        shapes = self._layer(name, Shapes)
        if shapes is None:
            return None
        from skimage.draw import ellipse as draw_ellipse
        from skimage.draw import polygon2mask

        mask = np.zeros(hw, dtype=bool)
        scale_s = np.asarray(shapes.scale)[-2:]
        trans_s = np.asarray(shapes.translate)[-2:]
        scale_i = np.asarray(image.scale)[-2:]
        trans_i = np.asarray(image.translate)[-2:]
        for verts, kind in zip(shapes.data, shapes.shape_type):
            yx = (np.asarray(verts)[:, -2:] * scale_s + trans_s - trans_i) / scale_i
            if kind == "ellipse":
                center = yx.mean(axis=0)
                radii = (yx.max(axis=0) - yx.min(axis=0)) / 2
                rr, cc = draw_ellipse(center[0], center[1], radii[0], radii[1], shape=hw)
                mask[rr, cc] = True
            elif kind in ("rectangle", "polygon"):
                mask |= polygon2mask(hw, yx)
        if not mask.any():
            raise ValueError(
                f"The Shapes layer {name!r} has no rectangle, polygon or ellipse over the image: "
                f"draw one, or choose '{WHOLE_IMAGE}' as the region."
            )
        return mask

    def segment(self, on_done: Callable[[], None] | None = None) -> bool:
        """Start a run with the current choices; False (and a notification) if it cannot start."""
        if self._running:
            show_info("A segmentation is already running: wait for it or press Cancel.")
            return False
        layer = self.selected_image_layer()
        if layer is None:
            show_error(
                "No image layer to segment: open an image (File > Open, or File > Open Sample > "
                "CASS open-vocabulary segmentation) and choose it under 'Image'."
            )
            return False
        try:
            classes = self.class_table.label_classes()
            prompts = classes.prompts()
            leading, images = self._image_slices(layer)
            region = self._region_mask(layer, images[0].shape[:2])
            bbox = None
            if region is not None:
                h, w = region.shape
                bbox = region_bbox(region, margin=max(16, int(0.05 * max(h, w))))
                images = [img[bbox] for img in images]
        except ValueError as err:
            show_error(str(err))
            return False
        save_settings(self.current_settings())

        key = self._model_key()
        self._cancel_event = threading.Event()
        job = SegmentJob(
            images=images, classes=prompts, background=classes.background(),
            build=lambda: self._get_segmenter(key), cancel_event=self._cancel_event,
            report=self._relay.progressed.emit,
        )
        ctx = _RunContext(
            image_layer=layer, leading=leading, region=region, bbox=bbox, classes=classes,
            replace_all=self.replace_all_check.isChecked(),
            settings=dict(zip(("clip", "vfm", "method", "preset", "device"), key)),
            started=time.perf_counter(), on_done=on_done,
        )
        self._set_running(True)
        if self.run_in_thread:
            from napari.qt.threading import GeneratorWorker

            worker = GeneratorWorker(run_job, job)
            worker.yielded.connect(self._on_yielded)
            worker.returned.connect(lambda results: self._on_returned(ctx, results))
            worker.errored.connect(lambda err: self._on_errored(ctx, err))
            worker.finished.connect(lambda: self._set_running(False))
            self._worker = worker
            worker.start()
        else:
            self._run_sync(job, ctx)
        return True

    def _run_sync(self, job: SegmentJob, ctx: _RunContext) -> None:
        gen = run_job(job)
        try:
            while True:
                self._on_yielded(next(gen))
        except StopIteration as stop:
            self._on_returned(ctx, stop.value)
        except Exception as err:  # noqa: BLE001 - same path as the thread worker's errored
            self._on_errored(ctx, err)
        finally:
            self._set_running(False)

    def cancel(self) -> None:
        """Ask the engine to stop at the next crop; the layers stay as they were."""
        if self._cancel_event is not None:
            self._cancel_event.set()
            self.status_label.setText("cancelling…")

    def _set_running(self, running: bool) -> None:
        self._running = running
        self.segment_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)
        if running:
            from napari.utils import progress

            self._pbar = progress(total=100, desc="CASS segmentation")
            self._pbar_value = 0
            self._status_final = False
            self.status_label.setText("segmenting…")
        else:
            if self._pbar is not None:
                self._pbar.close()
                self._pbar = None
            self._worker = None

    def _on_progress(self, fraction: float, message: str) -> None:
        pbar = self._pbar
        if pbar is None or not self._running:
            return  # a late signal from a finished run
        value = int(round(fraction * 100))
        if message:
            pbar.set_description(f"CASS: {message}")
        if value > self._pbar_value:
            pbar.update(value - self._pbar_value)
            self._pbar_value = value
        # The final line is written by _on_returned / _on_errored; a progress signal
        # queued from the worker thread may arrive after it and must not overwrite it.
        if value < 100 and not self._status_final:
            self.status_label.setText(f"{value}% {message}")

    def _on_yielded(self, item: tuple) -> None:
        if item and item[0] == "device":
            self.device_label.setText(f"running on: {item[1]}")

    def _on_errored(self, ctx: _RunContext, err: BaseException) -> None:
        message, expected = friendly_error(err)
        if not expected:
            _log.error("CASS segmentation failed", exc_info=err)
        if "cancelled" in message and expected:
            show_info(message)
        else:
            show_error(message)
        self._status_final = True
        self.status_label.setText(message)

    def _on_returned(self, ctx: _RunContext, results: list[Any]) -> None:
        try:
            self._apply_results(ctx, results)
        except ValueError as err:
            show_error(str(err))
            return
        seconds = time.perf_counter() - ctx.started
        cached = all(getattr(r, "from_cache", False) for r in results)
        self.last_run = {
            "seconds": seconds,
            "from_cache": cached,
            "timings": dict(getattr(results[-1], "timings", {})) if results else {},
            "slices": len(results),
        }
        note = " (image features re-used)" if cached else ""
        self._status_final = True
        self.status_label.setText(f"done in {seconds:.1f} s{note}")
        if ctx.on_done is not None:
            ctx.on_done()

    # ------------------------------------------------------------ results
    def _apply_results(self, ctx: _RunContext, results: list[Any]) -> None:
        image = ctx.image_layer
        if image not in self.viewer.layers:
            raise ValueError(f"The image layer {image.name!r} was removed during the run.")
        classes = ctx.classes
        data = image.data[0] if image.multiscale else image.data
        shape = tuple(data.shape[: data.ndim - (1 if image.rgb else 0)])
        target = self.labels_layer_for(image.name)
        if target is not None and tuple(target.data.shape) != shape:
            raise ValueError(
                f"The layer {target.name!r} has shape {target.data.shape}, not the image's {shape}: "
                "rename or delete it, then segment again."
            )
        dtype = np.uint8 if classes.n_labels <= 256 else np.uint16
        if target is not None and np.iinfo(target.data.dtype).max < classes.n_labels - 1:
            dtype = np.uint16
        current = np.asarray(target.data) if target is not None else np.zeros(shape, dtype)
        new = np.array(current, dtype=dtype, copy=True)
        where = np.zeros(shape, dtype=bool)
        conf = None
        if self.confidence_check.isChecked():
            conf_layer = self._layer(f"{image.name} confidence", Image)
            if conf_layer is not None and tuple(conf_layer.data.shape) == shape:
                conf = np.array(conf_layer.data, dtype=np.float32, copy=True)
            else:
                conf = np.zeros(shape, dtype=np.float32)
        has_background = False
        for lead, res in zip(ctx.leading, results):
            has_background = bool(res.has_background)
            if len(res.mask_classes) != classes.n_labels:
                raise ValueError(
                    f"The engine returned {len(res.classes)} classes for a table of "
                    f"{classes.n_labels - 1}; please report this."
                )
            lab = res.mask(dtype)
            sub_new = new[lead]
            sub_where = where[lead]
            if ctx.bbox is None:
                sub_new[...] = lab
                sub_where[...] = True
            else:
                mask = ctx.region[ctx.bbox]
                sub_new[ctx.bbox][mask] = lab[mask]
                sub_where[ctx.bbox] |= mask
            if conf is not None:
                c = np.asarray(res.confidence, dtype=np.float32)
                if ctx.bbox is None:
                    conf[lead] = c
                else:
                    conf[lead][ctx.bbox][ctx.region[ctx.bbox]] = c[ctx.region[ctx.bbox]]

        meta = classes.to_meta(image=image.name, has_background=has_background, **ctx.settings)
        if target is None:
            target = self.viewer.add_labels(
                new, name=self.labels_name(image.name), scale=image.scale,
                translate=image.translate, opacity=0.6,
            )
            state = CorrectionState(new)
            state.edited[...] = False
            self._states[id(target)] = state
            target.events.paint.connect(self._paint_callback(target))
        else:
            if target.data.dtype != dtype:  # more classes than the old dtype holds: no undo
                target.data = np.asarray(target.data).astype(dtype)
            state = self._state_for(target)
            self._sync_undo(target, state)
            state.sync_with(np.asarray(target.data))
            merged, written = merge_labels(
                np.asarray(target.data), new, state.edited, where, ctx.replace_all
            )
            wrote = self._write_labels(target, merged)
            state.record(new, written, ctx.replace_all)
            hist = getattr(target, "_undo_history", None)
            state.history_item = hist[-1] if wrote and hist else None
        self._decorate(target, classes, meta)
        if conf is not None:
            self._show_confidence(image, target, conf)

    def _state_for(self, layer: Labels) -> CorrectionState:
        state = self._states.get(id(layer))
        if state is None:  # a layer we did not create (or from an earlier session)
            state = CorrectionState(np.asarray(layer.data))
            self._states[id(layer)] = state
            layer.events.paint.connect(self._paint_callback(layer))
        return state

    def _paint_callback(self, layer: Labels) -> Callable[[Any], None]:
        key = id(layer)

        def on_paint(event: Any) -> None:
            if self._writing:
                return
            state = self._states.get(key)
            if state is not None:
                state.mark_atoms(event.value)

        return on_paint

    def mark_edited(self, layer: Labels, atoms: Any) -> None:
        """What the paint event does: record napari history atoms as manual edits."""
        self._state_for(layer).mark_atoms(atoms)

    def _write_labels(self, layer: Labels, merged: np.ndarray) -> bool:
        """Write the changed pixels through napari's undo-able API (one Ctrl+Z step).

        Returns False when no pixel changed (nothing enters the undo history).
        """
        changed = np.nonzero(np.asarray(layer.data) != merged)
        if changed[0].size == 0:
            return False
        self._writing = True
        try:
            layer.data_setitem(changed, merged[changed])
        finally:
            self._writing = False
        return True

    @staticmethod
    def _decorate(layer: Labels, classes: LabelClasses, meta: dict[str, Any]) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        layer.colormap = DirectLabelColormap(color_dict=classes.color_dict())
        layer.features = classes.features()
        layer.metadata[META_KEY] = meta

    def _show_confidence(self, image: Image, labels: Labels, conf: np.ndarray) -> None:
        name = f"{image.name} confidence"
        layer = self._layer(name, Image)
        if layer is not None and tuple(layer.data.shape) == conf.shape:
            layer.data = conf
            return
        layer = self.viewer.add_image(
            conf, name=name, colormap="magma", contrast_limits=(0.0, 1.0), opacity=0.5,
            scale=image.scale, translate=image.translate, blending="translucent",
        )
        # Keep the labels on top of the confidence map.
        self.viewer.layers.move(self.viewer.layers.index(layer), self.viewer.layers.index(labels))

    def _sync_undo(self, layer: Labels, state: CorrectionState) -> None:
        """If the user undid the last run with Ctrl+Z, forget it in the bookkeeping too."""
        item = state.history_item
        hist = getattr(layer, "_undo_history", None)
        if item is not None and hist is not None and not any(x is item for x in hist):
            state.restore()

    def undo_last_run(self) -> bool:
        """Undo the last re-run on the current image's labels (pixels and bookkeeping)."""
        layer = self.selected_image_layer()
        target = self.labels_layer_for(layer.name) if layer is not None else None
        state = self._states.get(id(target)) if target is not None else None
        if state is None or not state.can_undo:
            show_info("Nothing to undo: the last run created the layer (delete it to start over).")
            return False
        item = state.history_item
        hist = list(getattr(target, "_undo_history", []) or [])
        if item is not None and hist and hist[-1] is item:
            self._writing = True
            try:
                target.undo()
            finally:
                self._writing = False
        elif item is not None and any(x is item for x in hist):
            show_error(
                "You edited the labels after the last run: undo those edits first (Ctrl+Z), "
                "then 'Undo last run'."
            )
            return False
        state.restore()
        self.status_label.setText("last run undone")
        return True

    # =============================================================== export
    def _export_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export to dataset folder")
        if folder:
            self.export_dataset(folder)

    def export_dataset(self, folder: str | Path) -> dict[str, Path] | None:
        """Add the current image and its labels to a dataset folder (never overwrites)."""
        from napari_cass.io import export_dataset_item

        image = self.selected_image_layer()
        labels = self.labels_layer_for(image.name) if image is not None else None
        if image is None or labels is None:
            show_error("Nothing to export: segment an image first (its labels layer is missing).")
            return None
        data = np.asarray(image.data[0] if image.multiscale else image.data)
        if data.ndim - (1 if image.rgb else 0) != 2:
            show_error(
                "Dataset export takes 2-D images; save a stack's labels with "
                "File > Save Selected Layer(s) as .tif."
            )
            return None
        classes = LabelClasses.from_meta(labels.metadata[META_KEY]) if META_KEY in labels.metadata \
            else self.class_table.label_classes()
        try:
            paths = export_dataset_item(
                folder, image.name, data, np.asarray(labels.data), classes.names, classes.colors,
                overwrite=False, synonyms=classes.synonyms,
            )
        except (ValueError, OSError) as err:
            show_error(str(err))
            return None
        show_info(f"Exported {paths['image'].name} and its mask to {folder}.")
        return paths

    # ================================================================ batch
    def batch_open(self, image_dir: str, output_dir: str) -> bool:
        """Open (or resume) a batch; shows the current image and its mask or a new run."""
        if not image_dir or not output_dir:
            show_error("Choose both an image folder and an output folder for batch mode.")
            return False
        try:
            session = BatchSession(image_dir, output_dir)
            saved = session.saved_classes()
            session.save_progress()
        except (ValueError, OSError) as err:
            show_error(str(err))
            return False
        if saved is not None:  # the dataset's class list wins: masks must keep their meaning
            self.class_table.load_file(session.output_dir / "classes.json")
        self._batch = session
        self.batch_panel.image_dir.setText(str(session.image_dir))
        self.batch_panel.output_dir.setText(str(session.output_dir))
        return self._batch_show()

    def _batch_show(self) -> bool:
        session = self._batch
        assert session is not None
        for layer in self._batch_layers:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self._batch_layers = []
        try:
            data = session.read_image()
            mask = session.load_mask()
        except (ValueError, OSError) as err:
            show_error(str(err))
            self.batch_panel.set_session(session)
            return False
        stem = session.stems[session.index]
        rgb = data.ndim == 3 and data.shape[-1] in (3, 4)
        image = self.viewer.add_image(data, name=stem, rgb=rgb)
        self._batch_layers.append(image)
        self.select_image(image.name)
        self.batch_panel.set_session(session)
        if mask is not None:
            classes = self.class_table.label_classes()
            labels = self.viewer.add_labels(mask, name=self.labels_name(stem), opacity=0.6)
            self._states[id(labels)] = CorrectionState(np.asarray(mask))
            labels.events.paint.connect(self._paint_callback(labels))
            self._decorate(labels, classes, classes.to_meta(image=stem, resumed=True))
            self._batch_layers.append(labels)
            return True
        return self.segment(on_done=self._batch_track_labels)

    def _batch_track_labels(self) -> None:
        if self._batch is None:
            return
        layer = self.labels_layer_for(self._batch.stems[self._batch.index])
        if layer is not None and layer not in self._batch_layers:
            self._batch_layers.append(layer)
        conf = self._layer(f"{self._batch.stems[self._batch.index]} confidence", Image)
        if conf is not None and conf not in self._batch_layers:
            self._batch_layers.append(conf)

    def batch_save(self) -> bool:
        """Save the current batch image's labels (auto-save on Next / Previous)."""
        session = self._batch
        if session is None:
            return False
        stem = session.stems[session.index]
        labels = self.labels_layer_for(stem)
        image = self._layer(stem, Image)
        if labels is None or image is None:
            return True  # nothing to save (e.g. the run failed); moving on is fine
        classes = LabelClasses.from_meta(labels.metadata[META_KEY]) if META_KEY in labels.metadata \
            else self.class_table.label_classes()
        try:
            session.save(np.asarray(image.data), np.asarray(labels.data), classes)
        except (ValueError, OSError) as err:
            show_error(f"Could not save the mask of {session.current.name}: {err}")
            return False
        return True

    def batch_step(self, step: int) -> bool:
        """Save the current mask, then go ``step`` images forward (or back)."""
        session = self._batch
        if session is None:
            show_info("Open a batch folder first (Batch section).")
            return False
        if self._running:
            show_info("Wait for the segmentation to finish (or cancel it) before moving on.")
            return False
        if not self.batch_save():
            return False
        if not session.go(step):
            self.batch_panel.set_session(session)
            show_info("This is the last image." if step > 0 else "This is the first image.")
            return False
        return self._batch_show()

    # ============================================================ shortcuts
    def toggle_labels(self) -> None:
        """Show / hide the labels of the current image."""
        image = self.selected_image_layer()
        target = self.labels_layer_for(image.name) if image is not None else None
        if target is None:
            target = next((ly for ly in self.viewer.layers.selection if isinstance(ly, Labels)), None)
        if target is not None:
            target.visible = not target.visible

    def _bind_keys(self) -> None:
        actions = {
            "segment": lambda v: self.segment(),
            "next": lambda v: self.batch_step(1),
            "previous": lambda v: self.batch_step(-1),
            "toggle_labels": lambda v: self.toggle_labels(),
        }
        for name, key in SHORTCUTS.items():
            try:
                self.viewer.bind_key(key, actions[name], overwrite=False)
                self._bound_keys.append(key)
            except ValueError:  # already bound (e.g. a second CASS widget): keep the first
                show_warning(f"napari-cass: {key} is already bound; that shortcut is not set.")

    def cleanup(self) -> None:
        """Unbind the shortcuts and remember the choices (called when the widget closes)."""
        for key in self._bound_keys:
            try:
                self.viewer.bind_key(key, None)
            except (ValueError, KeyError):
                pass
        self._bound_keys = []
        self.cancel()
        save_settings(self.current_settings())

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt name
        self.cleanup()
        super().closeEvent(event)
