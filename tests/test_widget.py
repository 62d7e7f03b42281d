"""The CASS dock widget in a real napari viewer (runs under Xvfb).

Every segmentation here uses tiny random-weight models: the labels are
meaningless, the tests check the mechanics (layers, names, colours, edits,
cancel, notifications).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from napari.layers import Labels
from napari.utils.colormaps import DirectLabelColormap

from napari_cass._classes import META_KEY
from napari_cass._widget import SHORTCUTS, STACK_ALL, STACK_CURRENT, CassWidget


def _labels(widget: CassWidget, image_name: str = "pic") -> Labels:
    layer = widget.labels_layer_for(image_name)
    assert layer is not None, f"no labels layer for {image_name!r}"
    return layer


def test_widget_appears(cass_widget: CassWidget, rgb_image: np.ndarray) -> None:
    viewer = cass_widget.viewer
    assert "CASS segmentation" in viewer.window.dock_widgets
    viewer.add_image(rgb_image, name="pic")
    assert cass_widget.image_combo.currentText() == "pic"
    assert cass_widget.region_combo.itemText(0) == "whole image"
    assert cass_widget.method_combo.currentText() == "cass"
    assert cass_widget.class_table.label_classes().names[0] == "background"
    bound = {str(k) for k in viewer.keymap}
    for key in SHORTCUTS.values():
        assert any(key.replace("-", "+").lower() in b.lower() or key.lower() in b.lower() for b in bound), key
    assert "Shift+S" in cass_widget.segment_btn.toolTip()


def test_segment_in_thread_worker(qtbot, cass_widget: CassWidget, rgb_image: np.ndarray,
                                  notes: dict, tiny_factory) -> None:
    """Random-weight tiny models through the real napari thread worker."""
    viewer = cass_widget.viewer
    viewer.add_image(rgb_image, name="pic")
    cass_widget.run_in_thread = True
    cass_widget.confidence_check.setChecked(True)
    assert cass_widget.class_table.set_from_text("cat, dog | puppy, grass")
    cass_widget.class_table.set_color(2, (10, 20, 30))
    assert cass_widget.segment()
    qtbot.waitUntil(lambda: not cass_widget.is_running, timeout=120_000)
    assert notes["error"] == []

    layer = _labels(cass_widget)
    assert layer.name == "pic labels"
    assert layer.data.shape == rgb_image.shape[:2]
    assert set(np.unique(layer.data)) <= {1, 2, 3}  # no background words: every pixel has a class
    assert list(layer.features["class"]) == ["background", "cat", "dog", "grass"]
    assert list(layer.features["index"]) == [0, 1, 2, 3]
    assert isinstance(layer.colormap, DirectLabelColormap)
    np.testing.assert_allclose(layer.colormap.color_dict[2][:3], np.array([10, 20, 30]) / 255)
    assert layer.colormap.color_dict[0][3] == 0  # label 0 transparent
    meta = layer.metadata[META_KEY]
    assert meta["names"] == ["background", "cat", "dog", "grass"]
    assert meta["synonyms"][2] == ["puppy"]
    assert meta["image"] == "pic" and meta["method"] == "cass"
    assert cass_widget.device_label.text() == "running on: cpu"
    conf = viewer.layers["pic confidence"]
    assert conf.data.shape == rgb_image.shape[:2]
    assert 0.0 < float(conf.data.min()) <= float(conf.data.max()) <= 1.0
    # labels stay above the confidence map
    assert viewer.layers.index(layer) > viewer.layers.index(conf)

    # A prompt-only change re-uses the cached segmenter and the image features.
    cass_widget.class_table.set_from_text("cat, dog, grass, sky")
    assert cass_widget.segment()
    qtbot.waitUntil(lambda: not cass_widget.is_running, timeout=120_000)
    assert len(tiny_factory.calls) == 1
    assert cass_widget.last_run["from_cache"] is True
    assert list(layer.features["class"])[-1] == "sky"


def test_background_words_give_label_zero(cass_widget: CassWidget, rgb_image: np.ndarray,
                                          notes: dict) -> None:
    """Random weights: only the label mapping (engine class 0 -> label 0) is checked."""
    cass_widget.viewer.add_image(rgb_image, name="pic")
    cass_widget.class_table.set_from_text("cat, dog")
    cass_widget.class_table.background_edit.setText("wall, floor")
    assert cass_widget.segment()
    layer = _labels(cass_widget)
    assert layer.metadata[META_KEY]["has_background"] is True
    assert layer.metadata[META_KEY]["background_words"] == ["wall", "floor"]
    assert set(np.unique(layer.data)) <= {0, 1, 2}
    assert notes["error"] == []


class _GatedSegmenter:
    """Wraps a real segmenter; when ``block`` is set, waits for the cancel request first.

    This makes the race between the worker thread and the Cancel button deterministic;
    the cancellation itself still goes through the engine's ``cancel`` callback.
    """

    def __init__(self, inner) -> None:
        self.inner = inner
        self.block = False
        self.device = inner.device
        self.method = inner.method
        self.preset = inner.preset

    def segment(self, image, classes, progress=None, cancel=None, *, background=None):
        if self.block:
            for _ in range(2000):
                if cancel():
                    break
                time.sleep(0.005)
        return self.inner.segment(image, classes, progress, cancel, background=background)


def test_cancel_leaves_layers_untouched(qtbot, cass_widget: CassWidget, rgb_image: np.ndarray,
                                        notes: dict, tiny_factory) -> None:
    """Random weights. A cancelled re-run changes no pixel and adds no layer."""
    gated: list[_GatedSegmenter] = []

    def factory(**kwargs):
        gated.append(_GatedSegmenter(tiny_factory(**kwargs)))
        return gated[-1]

    cass_widget.segmenter_factory = factory
    viewer = cass_widget.viewer
    viewer.add_image(rgb_image, name="pic")
    cass_widget.class_table.set_from_text("cat, dog")
    assert cass_widget.segment()
    before = np.array(_labels(cass_widget).data, copy=True)
    names_before = [ly.name for ly in viewer.layers]

    cass_widget.run_in_thread = True
    gated[-1].block = True
    cass_widget.class_table.set_from_text("cat, dog, grass")
    cass_widget.replace_all_check.setChecked(True)
    assert cass_widget.segment()
    assert cass_widget.is_running
    cass_widget.cancel()
    qtbot.waitUntil(lambda: not cass_widget.is_running, timeout=120_000)
    assert [ly.name for ly in viewer.layers] == names_before
    np.testing.assert_array_equal(_labels(cass_widget).data, before)
    assert _labels(cass_widget).metadata[META_KEY]["names"] == ["background", "cat", "dog"]
    assert any("cancelled" in m for m in notes["info"])
    assert notes["error"] == []

    # cancelling a first run creates no layer at all
    viewer.add_image(rgb_image[::-1], name="other")
    cass_widget.select_image("other")
    assert cass_widget.segment()
    cass_widget.cancel()
    qtbot.waitUntil(lambda: not cass_widget.is_running, timeout=120_000)
    assert cass_widget.labels_layer_for("other") is None


def test_manual_edits_survive_rerun_and_replace_all(cass_widget: CassWidget,
                                                    rgb_image: np.ndarray, notes: dict) -> None:
    """Random weights. Edits via the paint path and via a silent data change are both kept."""
    viewer = cass_widget.viewer
    viewer.add_image(rgb_image, name="pic")
    cass_widget.class_table.set_from_text("cat, dog, grass")
    assert cass_widget.segment()
    layer = _labels(cass_widget)
    engine_first = np.array(layer.data, copy=True)

    # 1) the napari paint path (brush): emits the layer's paint event
    layer.selected_label = 3
    layer.brush_size = 5
    layer.paint((10, 10), 3)
    painted = np.argwhere(layer.data == 3)
    assert painted.size
    # 2) a change no event reports: found by the diff against the last engine output
    layer.data[40:44, 50:60] = 2
    layer.refresh()
    edited_now = np.array(layer.data, copy=True)
    edited_mask = edited_now != engine_first
    assert edited_mask.any()

    # The paint-event path, as the same method the event calls.
    cass_widget.mark_edited(layer, [(np.nonzero(np.zeros_like(edited_mask)),)])

    cass_widget.class_table.set_from_text("cat, dog, grass, sky")
    assert cass_widget.segment()
    after = np.asarray(layer.data)
    np.testing.assert_array_equal(after[edited_mask], edited_now[edited_mask])
    np.testing.assert_array_equal(after[40:44, 50:60], 2)
    state = cass_widget._states[id(layer)]
    assert state.edited[edited_mask].all()
    np.testing.assert_array_equal(after[~state.edited], state.last_output[~state.edited])

    # Undo last run: back to the edited labels before the re-run
    before_undo = np.array(after, copy=True)
    assert cass_widget.undo_last_run()
    np.testing.assert_array_equal(layer.data, edited_now)
    # Re-run, then "replace all": the edits are gone, the engine output is everywhere
    assert cass_widget.segment()
    np.testing.assert_array_equal(layer.data, before_undo)
    cass_widget.replace_all_check.setChecked(True)
    assert cass_widget.segment()
    np.testing.assert_array_equal(layer.data, state.last_output)
    assert not state.edited.any()
    # Ctrl+Z (napari's own undo) also undoes a run
    layer.undo()
    np.testing.assert_array_equal(layer.data, before_undo)
    assert notes["error"] == []


def test_region_rerun_only_changes_inside_shape(cass_widget: CassWidget,
                                                rgb_image: np.ndarray, notes: dict) -> None:
    """Random weights. Only pixels inside the rectangle may change."""
    viewer = cass_widget.viewer
    viewer.add_image(rgb_image, name="pic")
    cass_widget.class_table.set_from_text("cat, dog")
    assert cass_widget.segment()
    layer = _labels(cass_widget)
    before = np.array(layer.data, copy=True)
    viewer.add_shapes([np.array([[5, 8], [5, 30], [25, 30], [25, 8]])], shape_type="rectangle",
                      name="box")
    cass_widget.region_combo.setCurrentText("box")
    cass_widget.class_table.set_from_text("cat, dog, grass, sky, tree")
    cass_widget.replace_all_check.setChecked(True)
    assert cass_widget.segment()
    outside = np.ones(before.shape, bool)
    outside[5:26, 8:31] = False
    np.testing.assert_array_equal(np.asarray(layer.data)[outside], before[outside])
    assert notes["error"] == []

    viewer.layers["box"].data = []
    assert not cass_widget.segment()
    assert "no rectangle" in notes["error"][-1]


def test_bad_inputs_notify_instead_of_raising(cass_widget: CassWidget, notes: dict) -> None:
    viewer = cass_widget.viewer
    assert not cass_widget.segment()
    assert "No image layer" in notes["error"][-1]

    viewer.add_image(np.zeros((32, 32), np.uint8), name="grey")
    cass_widget.class_table.set_from_text("cat")
    cass_widget.class_table.table.setCurrentCell(1, 1)
    cass_widget.class_table.remove_selected()
    assert not cass_widget.segment()
    assert "class list is empty" in notes["error"][-1]

    assert not cass_widget.class_table.set_from_text("  ")
    assert "empty" in notes["error"][-1]
    assert not cass_widget.class_table.set_from_text("cat, Cat")
    assert "Duplicate" in notes["error"][-1]

    cass_widget.class_table.set_from_text("cat, dog")
    viewer.add_image(np.zeros((2, 3, 32, 32), np.uint8), name="hyper")
    cass_widget.select_image("hyper")
    assert cass_widget.stack_combo.currentText() == "choose for stacks…"
    assert not cass_widget.segment()
    assert "is a stack" in notes["error"][-1]
    cass_widget.stack_combo.setCurrentText(STACK_ALL)
    assert not cass_widget.segment()
    assert "slice axes" in notes["error"][-1]
    assert cass_widget.labels_layer_for("hyper") is None
    assert not cass_widget.is_running


def test_stack_current_and_all_slices(cass_widget: CassWidget, notes: dict) -> None:
    """Random weights. 3-D stacks: one slice, then every slice."""
    viewer = cass_widget.viewer
    stack = (np.random.default_rng(1).random((3, 32, 40)) * 255).astype(np.uint8)
    viewer.add_image(stack, name="stack")
    cass_widget.select_image("stack")
    cass_widget.class_table.set_from_text("cell, membrane")
    cass_widget.stack_combo.setCurrentText(STACK_CURRENT)
    viewer.dims.set_current_step(0, 1)
    assert cass_widget.segment()
    layer = _labels(cass_widget, "stack")
    assert layer.data.shape == stack.shape
    assert (layer.data[1] > 0).all() and (layer.data[0] == 0).all() and (layer.data[2] == 0).all()
    cass_widget.stack_combo.setCurrentText(STACK_ALL)
    assert cass_widget.segment()
    assert (layer.data > 0).all()
    assert cass_widget.last_run["slices"] == 3
    assert notes["error"] == []


def test_export_dataset_never_overwrites(cass_widget: CassWidget, rgb_image: np.ndarray,
                                         notes: dict, tmp_path) -> None:
    from napari_cass.io import read_classes_json, read_label_image

    cass_widget.viewer.add_image(rgb_image, name="pic")
    cass_widget.class_table.set_from_text("cat, dog")
    assert cass_widget.segment()
    paths = cass_widget.export_dataset(tmp_path)
    assert paths is not None
    np.testing.assert_array_equal(read_label_image(paths["mask"]), _labels(cass_widget).data)
    assert [c["name"] for c in read_classes_json(paths["classes"])["classes"]] == [
        "background", "cat", "dog"]
    stamp = paths["mask"].stat().st_mtime_ns
    assert cass_widget.export_dataset(tmp_path) is None
    assert "exist" in notes["error"][-1]
    assert paths["mask"].stat().st_mtime_ns == stamp


def test_settings_are_remembered(make_napari_viewer, tiny_factory, rgb_image: np.ndarray) -> None:
    from napari_cass._settings import settings_path

    viewer = make_napari_viewer()
    w = CassWidget(viewer, segmenter_factory=tiny_factory)
    w.run_in_thread = False
    viewer.add_image(rgb_image, name="pic")
    w.method_combo.setCurrentText("sclip")
    w.device_combo.setCurrentText("cpu")
    w.class_table.set_from_text("road\nsky, clouds")
    assert w.segment()
    saved = json.loads(settings_path().read_text())
    assert saved["method"] == "sclip" and saved["device"] == "cpu"
    assert saved["classes_text"] == "road\nsky, clouds"
    w.cleanup()

    w2 = CassWidget(make_napari_viewer(), segmenter_factory=tiny_factory)
    assert w2.method_combo.currentText() == "sclip"
    assert w2.class_table.label_classes().names == ["background", "road", "sky"]


def test_toggle_labels_shortcut_action(cass_widget: CassWidget, rgb_image: np.ndarray) -> None:
    cass_widget.viewer.add_image(rgb_image, name="pic")
    cass_widget.class_table.set_from_text("cat, dog")
    assert cass_widget.segment()
    layer = _labels(cass_widget)
    assert layer.visible
    cass_widget.toggle_labels()
    assert not layer.visible


def test_class_table_editing_and_files(qtbot, tmp_path) -> None:
    from napari_cass._class_table import ClassTable

    table = ClassTable()
    qtbot.addWidget(table)
    assert table.set_from_text("person | man, car, road")
    assert table.label_classes().names == ["background", "person", "car", "road"]
    assert table.label_classes().synonyms[1] == ["man"]
    table.table.setCurrentCell(3, 1)
    table.move_selected(-1)
    assert table.label_classes().names == ["background", "person", "road", "car"]
    table.add_class("tree", ["bush"])
    table.set_color(4, (1, 2, 3))
    table.table.item(1, 1).setText("human")
    table.background_edit.setText("sky, wall")
    lc = table.label_classes()
    assert lc.names == ["background", "human", "road", "car", "tree"]
    assert lc.background_words == ["sky", "wall"]
    assert lc.colors[4].tolist() == [1, 2, 3]

    saved = table.save_file(tmp_path / "classes.json")
    with pytest.raises(FileExistsError):
        table.save_file(tmp_path / "classes.json")
    table.save_file(tmp_path / "classes.txt")
    other = ClassTable()
    qtbot.addWidget(other)
    other.load_file(saved)
    back = other.label_classes()
    assert back.names == lc.names and back.colors.tolist() == lc.colors.tolist()
    assert back.background_words == ["sky", "wall"] and back.synonyms[4] == ["bush"]
    other.load_file(tmp_path / "classes.txt")
    assert other.label_classes().names == lc.names
    assert other.label_classes().synonyms[4] == ["bush"]

    other.load_benchmark("voc21")
    voc = other.label_classes()
    assert voc.n_labels == 21 and voc.names[1] == "aeroplane"
    assert len(voc.background_words) > 5  # VOC's stuff words describe the background
