"""The CASS dock as users run it: Plugins menu path, shown viewer, real buttons, paint events.

Every segmentation here uses tiny random-weight models: the labels are
meaningless, the tests check the mechanics (layers, names, colours, edits,
cancel, notifications) with exact pixels. Expected engine outputs are computed
by calling the same (deterministic) segmenter directly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from napari.layers import Labels
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import Qt

from napari_cass.plugin._classes import META_KEY
from napari_cass.plugin._widget import SHORTCUTS, STACK_ALL, STACK_CURRENT, CassWidget

from _gui_actions import click, set_classes

WAIT = 120_000


def _labels(widget: CassWidget, image_name: str = "pic") -> Labels:
    layer = widget.labels_layer_for(image_name)
    assert layer is not None, f"no labels layer for {image_name!r}"
    return layer




def value_of(widget: CassWidget, name: str) -> int:
    """The label value of a class (its stable id, not its row)."""
    classes = widget.class_table.label_classes()
    return classes.values[classes.names.index(name)]


def run(qtbot, widget: CassWidget) -> None:
    """Press Segment and wait for the worker."""
    click(qtbot, widget.segment_btn)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT)


def engine_labels(widget: CassWidget, image: np.ndarray, dtype=np.uint8) -> np.ndarray:
    """What the engine gives for the current table (same segmenter, called directly),
    as the layer holds it: each class's value is its stable id."""
    classes = widget.class_table.label_classes()
    res = widget.segmenter.segment(image, classes.prompts(), background=classes.background())
    return classes.rows_to_values(dtype)[res.mask(np.int64)]


def strokes(layer: Labels, label: int, centres) -> None:
    """Brush strokes through the public API (each emits napari's paint event)."""
    layer.brush_size = 3
    for c in centres:
        layer.paint(c, label)


def footprint(shape, centres) -> np.ndarray:
    """Where those strokes land, drawn independently on a blank Labels layer."""
    blank = Labels(np.zeros(shape, np.uint8))
    strokes(blank, 1, centres)
    return np.asarray(blank.data) == 1


def test_plugin_opens_with_keys_and_sections(plugin: CassWidget, rgb_image: np.ndarray) -> None:
    viewer = plugin.viewer
    assert type(viewer).__name__ == "PublicOnlyProxy"  # what napari hands a plugin
    assert any(k.startswith("CASS segmentation") for k in viewer.window.dock_widgets)
    viewer.add_image(rgb_image, name="pic")
    assert plugin.image_combo.currentText() == "pic"
    assert plugin.region_combo.itemText(0) == "whole image"
    assert set(plugin.sections) == {"Image", "Classes", "Run", "Model", "Export", "Batch"}
    bound = {str(k).lower() for k in viewer.keymap}
    for key in SHORTCUTS.values():
        assert key.lower().replace("-", "+") in {b.replace("-", "+") for b in bound}, key
    assert "Shift+S" in plugin.segment_btn.toolTip()


def test_segment_rerun_and_selection(qtbot, plugin: CassWidget, rgb_image: np.ndarray,
                                     notes: dict, toasts: list, tiny_factory) -> None:
    viewer = plugin.viewer
    viewer.add_image(rgb_image, name="pic")
    plugin.confidence_check.setChecked(True)
    set_classes(qtbot, plugin, "cat, dog | puppy, grass")
    assert plugin.class_table.label_classes().names == ["background", "cat", "dog", "grass"]
    plugin.class_table.set_color(2, (10, 20, 30))
    run(qtbot, plugin)

    layer = _labels(plugin)
    np.testing.assert_array_equal(layer.data, engine_labels(plugin, rgb_image))
    assert list(layer.features["class"]) == ["background", "cat", "dog", "grass"]
    assert isinstance(layer.colormap, DirectLabelColormap)
    dog = value_of(plugin, "dog")
    np.testing.assert_allclose(layer.colormap.color_dict[dog][:3], np.array([10, 20, 30]) / 255)
    assert layer.colormap.color_dict[0][3] == 0
    meta = layer.metadata[META_KEY]
    assert meta["synonyms"][2] == ["puppy"] and meta["image"] == "pic"
    assert plugin.device_label.text() == "running on: cpu"
    conf = viewer.layers["pic confidence"]
    assert 0.0 < float(conf.data.min()) <= float(conf.data.max()) <= 1.0
    assert viewer.layers.index(layer) > viewer.layers.index(conf)
    assert viewer.layers.selection.active.name == "pic labels"  # brush goes to the labels
    assert plugin.image_combo.findText("pic confidence") < 0  # not an image to segment

    set_classes(qtbot, plugin, "cat, dog, grass, sky")
    run(qtbot, plugin)
    assert len(tiny_factory.calls) == 1 and plugin.last_run["from_cache"] is True
    assert list(layer.features["class"])[-1] == "sky"
    np.testing.assert_array_equal(layer.data, engine_labels(plugin, rgb_image))
    assert notes == {"error": [], "info": [], "warning": []}
    assert toasts == []


def test_150_strokes_survive_rerun(qtbot, plugin: CassWidget, rgb_image: np.ndarray,
                                   toasts: list, recwarn) -> None:
    plugin.viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, plugin, "cat, dog, grass")
    run(qtbot, plugin)
    layer = _labels(plugin)
    rng = np.random.default_rng(7)
    centres = [tuple(int(v) for v in rng.integers((2, 2), (46, 62))) for _ in range(150)]
    first = np.array(layer.data, copy=True)
    grass = value_of(plugin, "grass")
    strokes(layer, grass, centres)
    # napari records (and emits) only pixels a stroke changed: those are the edits
    painted = footprint(layer.data.shape, centres) & (first != grass)
    assert painted.sum() > 300

    set_classes(qtbot, plugin, "cat, dog, grass, sky")
    run(qtbot, plugin)
    expected = np.where(painted, grass, engine_labels(plugin, rgb_image))
    np.testing.assert_array_equal(layer.data, expected)
    assert toasts == []
    assert not [w for w in recwarn if "Private attribute" in str(w.message)]


def test_undo_redo_then_rerun(qtbot, plugin: CassWidget, rgb_image: np.ndarray) -> None:
    plugin.viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, plugin, "cat, dog, grass")
    run(qtbot, plugin)
    layer = _labels(plugin)
    first = np.array(layer.data, copy=True)
    set_classes(qtbot, plugin, "cat, dog, grass, sky, tree")  # appended: no value moves
    new = engine_labels(plugin, rgb_image)
    fresh = np.argwhere((new != first)[:, 24:])  # where a stale pixel would show
    assert fresh.size, "the new prompts must change some pixels for this test to mean anything"
    kept = [(10, 4), (10, 8), (12, 12)]
    undone = [(int(r), int(c) + 24) for r, c in fresh[:: max(len(fresh) // 3, 1)][:3]]
    # "tree" and "sky" are not in the first output: every stroke changes pixels, so
    # each is one napari undo step
    tree, sky = value_of(plugin, "tree"), value_of(plugin, "sky")
    strokes(layer, tree, kept)
    strokes(layer, sky, undone)
    for _ in undone:
        layer.undo()
    layer.undo()  # the last "kept" stroke ...
    layer.redo()  # ... comes back
    assert not np.isin(first, [tree, sky]).any()
    kept_fp = footprint(first.shape, kept)
    undone_fp = footprint(first.shape, undone) & ~kept_fp

    run(qtbot, plugin)
    assert (new != first)[undone_fp].any()
    np.testing.assert_array_equal(layer.data, np.where(kept_fp, tree, new))

    # "Undo last run" puts back what the run replaced (the strokes stay)
    click(qtbot, plugin.undo_btn)
    np.testing.assert_array_equal(layer.data, np.where(kept_fp, tree, first))
    # a run is a checkpoint: Ctrl+Z right after it has nothing of the plugin's to undo
    run(qtbot, plugin)
    layer.undo()
    np.testing.assert_array_equal(layer.data, np.where(kept_fp, tree, new))
    plugin.replace_all_check.setChecked(True)
    run(qtbot, plugin)
    np.testing.assert_array_equal(layer.data, new)


def test_class_table_edits_remap_labels(qtbot, plugin: CassWidget, rgb_image: np.ndarray,
                                        tmp_path, toasts: list) -> None:
    """Reorder, remove, rename, add after edits: every label keeps its class."""
    plugin.viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, plugin, "cat, dog, grass")
    run(qtbot, plugin)
    layer = _labels(plugin)
    v_cat, v_dog, v_grass = (value_of(plugin, n) for n in ("cat", "dog", "grass"))
    strokes(layer, v_dog, [(20, 20), (22, 26)])  # a hand-painted "dog"
    before = np.array(layer.data, copy=True)
    dog, cat, grass = before == v_dog, before == v_cat, before == v_grass
    table = plugin.class_table

    table.table.setCurrentCell(2, 1)  # dog up: the table order changes, no pixel does
    click(qtbot, table.up_btn)
    assert table.label_classes().names == ["background", "dog", "cat", "grass"]
    np.testing.assert_array_equal(layer.data, before)
    assert layer.features["class"][list(layer.features["index"]).index(v_dog)] == "dog"

    table.table.setCurrentCell(2, 1)  # remove cat: its pixels (only) become unlabelled
    click(qtbot, table.remove_btn)
    np.testing.assert_array_equal(layer.data, np.where(cat, 0, before))
    layer.undo()  # a removal is a checkpoint: Ctrl+Z cannot bring a value no class names
    np.testing.assert_array_equal(layer.data, np.where(cat, 0, before))
    table.table.item(2, 1).setText("lawn")  # rename: values stay, the name follows
    np.testing.assert_array_equal(layer.data, np.where(cat, 0, before))
    assert layer.metadata[META_KEY]["names"] == ["background", "dog", "lawn"]

    table.set_color(1, (1, 2, 3))  # colours reach the layer at once
    np.testing.assert_allclose(layer.colormap.color_dict[v_dog][:3], np.array([1, 2, 3]) / 255)
    click(qtbot, table.add_btn)  # a new class is visible at once and exportable
    v_new = value_of(plugin, "class 3")
    assert v_new not in (v_cat, v_dog, v_grass)  # a removed class's value is not reused
    assert layer.colormap.color_dict[v_new][3] == 1.0
    strokes(layer, v_new, [(5, 5)])
    paths = plugin.export_dataset(tmp_path)
    from napari_cass.io import read_classes_json, read_label_image

    mask = read_label_image(paths["mask"])  # files count rows: row k = label k
    np.testing.assert_array_equal(mask == 1, np.asarray(layer.data) == v_dog)
    np.testing.assert_array_equal(mask == 2, np.asarray(layer.data) == v_grass)
    assert (mask == 3).any()
    assert [c["name"] for c in read_classes_json(paths["classes"])["classes"]] == [
        "background", "dog", "lawn", "class 3"]

    # the painted dog stays dog through a re-run
    run(qtbot, plugin)
    assert (np.asarray(layer.data)[dog] == v_dog).all()
    assert toasts == []


def test_set_keeps_ids_of_same_names(qtbot, plugin: CassWidget, rgb_image: np.ndarray) -> None:
    plugin.viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, plugin, "cat, dog")
    run(qtbot, plugin)
    layer = _labels(plugin)
    before = np.array(layer.data, copy=True)
    set_classes(qtbot, plugin, "dog, cat, grass")  # swaps cat and dog, adds grass
    np.testing.assert_array_equal(layer.data, before)  # values are ids: nothing moves
    names = plugin.class_table.label_classes()
    assert names.name_of(int(before.max())) in ("cat", "dog")


def test_undo_last_run_after_a_reorder(qtbot, plugin: CassWidget, rgb_image: np.ndarray) -> None:
    """A reorder touches no pixel, so undoing a run after it gives the old labels exactly."""
    plugin.viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, plugin, "cat, dog")
    run(qtbot, plugin)
    layer = _labels(plugin)
    first = np.array(layer.data, copy=True)
    set_classes(qtbot, plugin, "cat, dog, grass")
    run(qtbot, plugin)
    second = np.array(layer.data, copy=True)
    set_classes(qtbot, plugin, "dog, cat, grass")
    np.testing.assert_array_equal(layer.data, second)
    click(qtbot, plugin.undo_btn)
    np.testing.assert_array_equal(layer.data, first)
    assert list(layer.features["class"]) == ["background", "dog", "cat", "grass"]
    click(qtbot, plugin.undo_btn)  # the first run made the layer: nothing more to undo
    assert "Nothing to undo" in plugin.status_label.text()


class _GatedSegmenter:
    """Wraps a real segmenter; when ``block`` is set, waits for the cancel request first.

    ``obey=False`` then finishes anyway (what a cached prompt-only re-run or the
    text stage does when it never looks at the flag): the widget must drop it.
    """

    def __init__(self, inner) -> None:
        self.inner = inner
        self.block = False
        self.obey = True
        self.device = inner.device
        self.method = inner.method
        self.preset = inner.preset

    def segment(self, image, classes, progress=None, cancel=None, *, background=None):
        import time

        if self.block:
            for _ in range(4000):
                if cancel():
                    break
                time.sleep(0.005)
        return self.inner.segment(image, classes, progress, cancel if self.obey else None,
                                  background=background)


@pytest.mark.parametrize("stage", ["model", "segment", "late"])
def test_cancel_at_each_stage(qtbot, plugin: CassWidget, rgb_image: np.ndarray, notes: dict,
                              tiny_factory, stage: str) -> None:
    import time

    gated: list[_GatedSegmenter] = []
    downloads: list[int] = []

    def factory(clip, vfm, method, preset, device, progress=None):
        if stage == "model" and gated:  # a rebuild "downloads" until the progress call raises
            for i in range(4000):
                downloads.append(i)
                progress(i, 4000, "Downloading weights")
                time.sleep(0.005)
        gated.append(_GatedSegmenter(tiny_factory(clip, vfm, method, preset, device)))
        return gated[-1]

    plugin.segmenter_factory = factory
    viewer = plugin.viewer
    viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, plugin, "cat, dog")
    run(qtbot, plugin)
    layer = _labels(plugin)
    before = np.array(layer.data, copy=True)
    names_before = [ly.name for ly in viewer.layers]

    if stage == "model":
        plugin.clip_combo.setCurrentText("ViT-B-32")  # a rebuild
    gated[-1].block = True
    gated[-1].obey = stage != "late"
    plugin.replace_all_check.setChecked(True)
    set_classes(qtbot, plugin, "cat, dog, grass")
    click(qtbot, plugin.segment_btn)
    assert plugin.is_running and plugin.cancel_btn.isEnabled()
    if stage == "model":
        qtbot.waitUntil(lambda: len(downloads) > 3, timeout=WAIT)
    click(qtbot, plugin.cancel_btn)
    qtbot.waitUntil(lambda: not plugin.is_running, timeout=WAIT)
    assert [ly.name for ly in viewer.layers] == names_before
    np.testing.assert_array_equal(layer.data, before)
    assert "cancelled" in plugin.status_label.text()
    assert notes["error"] == []
    if stage == "model":
        assert len(downloads) < 4000 and len(gated) == 1  # stopped mid-download


def test_contrast_limits_are_respected(qtbot, plugin: CassWidget, tiny_factory) -> None:
    seen = []

    def factory(clip, vfm, method, preset, device):
        seg = tiny_factory(clip, vfm, method, preset, device)
        inner = seg.segment

        def segment(image, *a, **k):
            seen.append(np.array(image, copy=True))
            return inner(image, *a, **k)

        seg.segment = segment
        return seg

    plugin.segmenter_factory = factory
    img = np.linspace(0, 0.05, 48 * 64, dtype=np.float32).reshape(48, 64)
    plugin.viewer.add_image(img, name="dim", contrast_limits=(0.0, 0.05))
    set_classes(qtbot, plugin, "cell")
    run(qtbot, plugin)
    assert seen[-1].dtype == np.uint8
    assert seen[-1].min() == 0 and seen[-1].max() == 255  # the range shown, not black


def test_region_rerun_only_changes_inside_shape(qtbot, plugin: CassWidget, rgb_image: np.ndarray,
                                                notes: dict) -> None:
    viewer = plugin.viewer
    viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, plugin, "cat, dog")
    run(qtbot, plugin)
    layer = _labels(plugin)
    before = np.array(layer.data, copy=True)
    viewer.add_shapes([np.array([[5, 8], [5, 30], [25, 30], [25, 8]])], shape_type="rectangle",
                      name="box")
    plugin.region_combo.setCurrentText("box")
    set_classes(qtbot, plugin, "cat, dog, grass, sky, tree")
    plugin.replace_all_check.setChecked(True)
    run(qtbot, plugin)
    outside = np.ones(before.shape, bool)
    outside[5:26, 8:31] = False
    np.testing.assert_array_equal(np.asarray(layer.data)[outside], before[outside])
    assert notes["error"] == []
    viewer.layers["box"].data = []
    assert not plugin.segment()
    assert "no rectangle" in plugin.errors.message


def test_errors_are_bounded_and_copyable(qtbot, plugin: CassWidget, notes: dict) -> None:
    width = plugin.width()
    click(qtbot, plugin.segment_btn)
    assert "No image layer" in plugin.errors.message
    assert notes["error"] and "No image layer" in notes["error"][-1]
    click(qtbot, plugin.errors.details_btn)
    assert plugin.errors.details.isVisible()
    assert plugin.errors.details.height() <= 100
    command = "napari-cass download ViT-B-16 --cache /very/long/path/" + "x" * 300

    def offline(clip, vfm, method, preset, device):
        raise FileNotFoundError(f"CLIP weights not found offline: to fetch them run:\n{command}")

    plugin.segmenter_factory = offline
    plugin.viewer.add_image(np.zeros((32, 32), np.uint8), name="grey")
    set_classes(qtbot, plugin, "cat")
    run(qtbot, plugin)
    status = plugin.status_label.text()
    assert status.startswith("CLIP weights not found") and len(status) <= 90  # short
    assert command in plugin.errors.details.toPlainText()  # the whole command, selectable
    click(qtbot, plugin.errors.copy_btn)
    from qtpy.QtWidgets import QApplication

    assert command in QApplication.clipboard().text()
    assert plugin.width() == width and plugin.errors.details.height() <= 100


def test_bad_inputs_give_messages(qtbot, plugin: CassWidget) -> None:
    viewer = plugin.viewer
    viewer.add_image(np.zeros((32, 32), np.uint8), name="grey")
    set_classes(qtbot, plugin, "cat")
    plugin.class_table.table.setCurrentCell(1, 1)
    click(qtbot, plugin.class_table.remove_btn)
    assert not plugin.segment()
    assert "class list is empty" in plugin.errors.message
    set_classes(qtbot, plugin, "cat, Cat")
    assert "Duplicate" in plugin.errors.message
    set_classes(qtbot, plugin, "cat, dog")
    viewer.add_image(np.zeros((2, 3, 32, 32), np.uint8), name="hyper")
    plugin.select_image("hyper")
    assert not plugin.segment()
    assert "is a stack" in plugin.errors.message
    plugin.stack_combo.setCurrentText(STACK_ALL)
    assert not plugin.segment()
    assert "slice axes" in plugin.errors.message
    assert plugin.labels_layer_for("hyper") is None and not plugin.is_running


def test_stack_slices_and_tiff(qtbot, plugin: CassWidget, tmp_path) -> None:
    viewer = plugin.viewer
    stack = (np.random.default_rng(1).random((3, 32, 40)) * 255).astype(np.uint8)
    viewer.add_image(stack, name="stack")
    plugin.select_image("stack")
    set_classes(qtbot, plugin, "cell, membrane")
    plugin.stack_combo.setCurrentText(STACK_CURRENT)
    viewer.dims.set_current_step(0, 1)
    run(qtbot, plugin)
    layer = _labels(plugin, "stack")
    assert (layer.data[1] > 0).all() and (layer.data[0] == 0).all() and (layer.data[2] == 0).all()
    plugin.stack_combo.setCurrentText(STACK_ALL)
    run(qtbot, plugin)
    assert (layer.data > 0).all() and plugin.last_run["slices"] == 3
    # the widget's guidance: File > Save Selected Layer(s) as .tif writes every slice
    viewer.layers.selection.active = layer
    out = tmp_path / "stack.tif"
    viewer.layers.save(str(out), selected=True, plugin="napari-cass")
    import tifffile

    rows = plugin.class_table.label_classes().to_rows(np.asarray(layer.data))  # files count rows
    np.testing.assert_array_equal(tifffile.imread(out), rows)


def test_export_refusal_speaks_gui(qtbot, plugin: CassWidget, rgb_image: np.ndarray, tmp_path) -> None:
    from napari_cass.io import read_label_image

    plugin.viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, plugin, "cat, dog")
    run(qtbot, plugin)
    paths = plugin.export_dataset(tmp_path)
    rows = plugin.class_table.label_classes().to_rows(np.asarray(_labels(plugin).data))
    np.testing.assert_array_equal(read_label_image(paths["mask"]), rows)
    stamp = paths["mask"].stat().st_mtime_ns
    assert plugin.export_dataset(tmp_path) is None
    assert "another folder" in plugin.errors.message
    assert "overwrite" not in plugin.errors.message.lower()
    assert paths["mask"].stat().st_mtime_ns == stamp


def test_settings_remember_one_class_with_synonyms(make_napari_viewer, tiny_factory) -> None:
    from conftest import open_plugin

    from napari_cass.plugin._settings import settings_path

    viewer = make_napari_viewer(show=True)
    dock, w = open_plugin(viewer, tiny_factory)
    w.method_combo.setCurrentText("sclip")
    w.class_table.set_from_text("person | man | woman")  # one class, two synonyms
    assert w.class_table.label_classes().names == ["background", "person"]
    viewer.window.remove_dock_widget(dock)
    saved = json.loads(settings_path().read_text())
    assert saved["method"] == "sclip" and saved["class_rows"] == [["person", "man", "woman"]]

    _dock2, w2 = open_plugin(viewer, tiny_factory)
    assert w2.method_combo.currentText() == "sclip"
    lc = w2.class_table.label_classes()
    assert lc.names == ["background", "person"] and lc.synonyms[1] == ["man", "woman"]


def test_close_and_reopen_dock(qtbot, make_napari_viewer, tiny_factory, rgb_image,
                               notes: dict, toasts: list) -> None:
    from conftest import open_plugin

    viewer = make_napari_viewer(show=True)
    dock, w = open_plugin(viewer, tiny_factory)
    viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, w, "cat, dog")
    run(qtbot, w)
    layer = _labels(w)
    first = np.array(layer.data, copy=True)
    dog = value_of(w, "dog")
    strokes(layer, dog, [(20, 20)])  # a correction made before the dock closes
    before_close = footprint(first.shape, [(20, 20)])
    viewer.window.remove_dock_widget(dock)  # the dock's close button does this
    bound = {str(k).lower().replace("-", "+") for k in viewer.keymap}
    assert not any(k.lower().replace("-", "+") in bound for k in SHORTCUTS.values())
    assert w.sync.hooked == 0  # no event reaches the closed dock

    strokes(layer, dog, [(40, 50)])  # painted while no dock is open
    _dock2, w2 = open_plugin(viewer, tiny_factory)
    assert notes["warning"] == [] and toasts == []
    assert w2.sync.hooked == 1  # the new dock listens to the layer it inherits
    w2.select_image("pic")
    set_classes(qtbot, w2, "cat, dog, grass, sky")
    run(qtbot, w2)
    new = engine_labels(w2, rgb_image)
    kept = (before_close | footprint(first.shape, [(40, 50)])) & (first != dog)
    np.testing.assert_array_equal(layer.data, np.where(kept, dog, new))
    assert w.sync.hooked == 0


def test_class_table_editing_and_files(qtbot, tmp_path) -> None:
    from napari_cass.plugin._class_table import ClassTable

    table = ClassTable()
    qtbot.addWidget(table)
    assert table.set_from_text("person | man, car, road")
    assert table.label_classes().names == ["background", "person", "car", "road"]
    assert table.label_classes().synonyms[1] == ["man"]
    ids = table.label_classes().ids
    table.table.setCurrentCell(3, 1)
    table.move_selected(-1)
    assert table.label_classes().names == ["background", "person", "road", "car"]
    assert table.label_classes().ids == [ids[0], ids[1], ids[3], ids[2]]
    table.add_class("tree", ["bush"])
    table.set_color(4, (1, 2, 3))
    table.table.item(1, 1).setText("human")
    table.background_edit.setText("sky, wall")
    lc = table.label_classes()
    assert lc.names == ["background", "human", "road", "car", "tree"]
    assert lc.ids[1] == ids[1]  # renaming keeps the identity
    assert lc.background_words == ["sky", "wall"] and lc.colors[4].tolist() == [1, 2, 3]

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
    other.load_benchmark("voc21")
    voc = other.label_classes()
    assert voc.n_labels == 21 and voc.names[1] == "aeroplane"


def test_a_hand_drawn_labels_layer_is_only_filled(qtbot, plugin: CassWidget, rgb_image: np.ndarray) -> None:
    """A Labels layer the user drew (not made by the plugin): its labels are edits, kept."""
    viewer = plugin.viewer
    viewer.add_image(rgb_image, name="pic")
    drawn = np.zeros(rgb_image.shape[:2], np.uint8)
    drawn[5:15, 5:25] = 2
    viewer.add_labels(drawn.copy(), name="pic labels")
    plugin.select_image("pic")
    set_classes(qtbot, plugin, "cat, dog")
    run(qtbot, plugin)
    new = engine_labels(plugin, rgb_image)
    np.testing.assert_array_equal(_labels(plugin).data, np.where(drawn > 0, drawn, new))


def _canvas(widget: CassWidget):
    """napari's vispy canvas widget, found through Qt (no napari private attribute)."""
    from qtpy.QtWidgets import QWidget

    return next(w for w in widget.window().findChildren(QWidget)
                if type(w).__name__ == "CanvasBackendDesktop")


def _drag(qtbot, canvas, points) -> None:
    """A real mouse drag: press, moves with the button held, release."""
    from qtpy.QtCore import QEvent, QPointF
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    mods = Qt.KeyboardModifier.NoModifier
    steps = [(QEvent.Type.MouseButtonPress, points[0], left, left)]
    steps += [(QEvent.Type.MouseMove, p, none, left) for p in points[1:]]
    steps += [(QEvent.Type.MouseButtonRelease, points[-1], left, none)]
    for kind, p, button, buttons in steps:
        pos = QPointF(p)
        event = QMouseEvent(kind, pos, QPointF(canvas.mapToGlobal(p)), button, buttons, mods)
        QApplication.sendEvent(canvas, event)
        qtbot.wait(5)  # let napari handle each move, as between real mouse events


def test_real_brush_strokes_survive_rerun(qtbot, plugin: CassWidget, rgb_image: np.ndarray,
                                          toasts: list) -> None:
    """The brush driven by mouse events on the canvas, as an annotator paints."""
    from qtpy.QtCore import QPoint

    viewer = plugin.viewer
    viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, plugin, "cat, dog")
    run(qtbot, plugin)
    layer = _labels(plugin)
    first = np.array(layer.data, copy=True)
    viewer.reset_view()
    qtbot.wait(50)
    canvas = _canvas(plugin)
    cy, cx = viewer.camera.center[-2:]
    zoom = viewer.camera.zoom

    def at(row: float, col: float) -> QPoint:
        return QPoint(round((col - cx) * zoom + canvas.width() / 2),
                      round((row - cy) * zoom + canvas.height() / 2))

    layer.mode = "paint"
    layer.selected_label = 3  # a class added for the correction
    set_classes(qtbot, plugin, "cat, dog, grass")
    layer.brush_size = 3
    _drag(qtbot, canvas, [at(20, c) for c in range(10, 41, 2)])
    painted = np.asarray(layer.data) == 3
    assert painted[20, 10:41].all() and not (first == 3).any()

    set_classes(qtbot, plugin, "cat, dog, grass, sky")
    run(qtbot, plugin)
    np.testing.assert_array_equal(layer.data, np.where(painted, 3, engine_labels(plugin, rgb_image)))
    assert toasts == []
