"""Defects found by using the dock as an annotator would (review of issue 7), one test each.

Tiny random-weight models: the labels are meaningless, the tests check that
nothing the user made is lost, with exact pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_cass.io import read_classes_json

from _gui_actions import click, set_classes
from test_batch import _mask_file, _open, _wait, _write_images


def _segment_pic(qtbot, w, image: np.ndarray, classes: str = "cat, dog"):
    """Add ``image`` as "pic", type ``classes``, press Segment, wait; its labels layer."""
    w.viewer.add_image(image, name="pic")
    set_classes(qtbot, w, classes)
    click(qtbot, w.segment_btn)
    _wait(qtbot, w)
    return w.labels_layer_for("pic")


def test_batch_refuses_a_class_removal_before_touching_the_mask(qtbot, plugin, tmp_path: Path,
                                                                 notes: dict) -> None:
    """Removing a saved class mid-batch used to clear its pixels, then refuse the save."""
    _write_images(tmp_path / "in")
    out = tmp_path / "out"
    w = plugin
    w.class_table.set_from_text("cat, dog, grass")
    _open(qtbot, w, tmp_path / "in", out)
    click(qtbot, w.batch_panel.next_btn)  # img_00 saved: classes.json fixes the numbering
    _wait(qtbot, w)
    labels = w.labels_layer_for("img_01")
    labels.brush_size = 3
    cat = w.class_table.label_classes().values[1]  # a class's value is its id
    labels.paint((6, 6), cat)  # a "cat" correction
    kept = np.array(labels.data, copy=True)
    assert (kept == cat).sum() >= 9

    w.class_table.table.selectRow(1)
    click(qtbot, w.class_table.remove_btn)  # remove "cat"
    qtbot.wait(20)
    np.testing.assert_array_equal(labels.data, kept)  # not one pixel cleared
    assert w.class_table.label_classes().names == ["background", "cat", "dog", "grass"]
    assert "'cat' is missing" in w.errors.message and "Class edit undone" in w.errors.message

    w.class_table.table.item(2, 1).setText("puppy")  # a rename: saved masks would lose "dog"
    qtbot.wait(20)
    assert w.class_table.label_classes().names == ["background", "cat", "dog", "grass"]
    np.testing.assert_array_equal(labels.data, kept)

    click(qtbot, w.class_table.add_btn)  # adding at the end is fine
    assert w.class_table.label_classes().names[-1] == "class 4"
    click(qtbot, w.batch_panel.next_btn)
    _wait(qtbot, w)
    assert w.batch.session.index == 2
    rows = w.class_table.label_classes().to_rows(kept)  # files count rows
    np.testing.assert_array_equal(_mask_file(out, "img_01"), rows)
    names = [c["name"] for c in read_classes_json(out / "classes.json")["classes"]]
    assert names == ["background", "cat", "dog", "grass", "class 4"]
    assert len(notes["error"]) == 2  # the two refused edits, nothing else


def test_set_asks_before_unlabelling_hand_painted_pixels(qtbot, plugin, rgb_image: np.ndarray) -> None:
    """Set "cat, puppy" over "cat, dog" used to turn every painted dog into 0 without asking."""
    from napari.layers import Labels

    w = plugin
    layer = _segment_pic(qtbot, w, rgb_image)
    engine = np.array(layer.data, copy=True)
    dog = w.class_table.label_classes().values[2]  # a class's value is its id
    layer.brush_size = 3
    layer.paint((20, 20), dog)  # a hand-painted "dog"
    painted = np.array(layer.data, copy=True)
    blank = Labels(np.zeros(engine.shape, np.uint8))
    blank.brush_size = 3
    blank.paint((20, 20), 1)
    stroke = np.asarray(blank.data) == 1
    hand = int((stroke & (engine != dog)).sum())  # pixels the stroke changed to dog
    assert hand > 0

    questions: list[str] = []
    answers = [False, True]
    w.confirm = lambda q: questions.append(q) or answers.pop(0)
    set_classes(qtbot, w, "cat, puppy")  # a typo'd rename: "dog" goes away
    qtbot.wait(20)
    assert len(questions) == 1 and f"{hand} px of 'dog'" in questions[0]
    np.testing.assert_array_equal(layer.data, painted)  # No: nothing changed
    assert w.class_table.label_classes().names == ["background", "cat", "dog"]

    set_classes(qtbot, w, "cat, puppy")  # Yes: dog (engine and hand) unlabelled, cat stays
    qtbot.wait(20)
    np.testing.assert_array_equal(layer.data, np.where(painted == dog, 0, painted))
    assert w.class_table.label_classes().names == ["background", "cat", "puppy"]

    set_classes(qtbot, w, "cat, puppy, grass")  # nothing painted is removed: no question
    assert len(questions) == 2


def test_classes_beyond_255_widen_the_layer_at_once(qtbot, plugin, rgb_image: np.ndarray) -> None:
    """A table grown past 255 classes left the layer uint8: napari refused to paint label 256."""

    w = plugin
    layer = _segment_pic(qtbot, w, rgb_image)
    layer.brush_size = 3
    layer.paint((10, 10), 2)
    before = np.array(layer.data, copy=True)
    w.class_table.set_from_text("cat, dog, " + ", ".join(f"c{i}" for i in range(254)))
    assert layer.data.dtype == np.uint16
    np.testing.assert_array_equal(layer.data, before)  # same values, wider type
    layer.paint((30, 30), 256)
    assert layer.data[30, 30] == 256
    after_paint = np.array(layer.data, copy=True)
    edited = after_paint != before
    assert edited.sum() == 9  # a 3 px brush over labels 0..2
    assert layer.colormap.map(np.array([256]))[0, 3] == 1.0  # visible
    click(qtbot, w.segment_btn)
    _wait(qtbot, w)
    np.testing.assert_array_equal(np.asarray(layer.data)[edited], 256)  # the edit survives


def test_a_bad_typed_name_goes_back_and_labels_stay(qtbot, plugin, rgb_image: np.ndarray,
                                                    notes: dict) -> None:
    """Typing a duplicate, empty or reserved name in the table used to be taken (two 'cat's on
    the layer, the run refused later); it is refused at once and the old name comes back."""

    w = plugin
    layer = _segment_pic(qtbot, w, rgb_image)
    before = np.array(layer.data, copy=True)
    item = w.class_table.table.item(2, 1)
    for bad, why in (("Cat", "already a class"), ("  ", "needs a name"), ("Background", "reserved")):
        item.setText(bad)
        assert item.text() == "dog" and why in w.errors.message
        assert list(layer.features["class"]) == ["background", "cat", "dog"]
    assert len(notes["error"]) == 3
    item.setText("puppy")  # a good rename still reaches the layer at once
    assert list(layer.features["class"]) == ["background", "cat", "puppy"]
    item.setText("cat")  # and the last accepted name is the one that comes back
    assert item.text() == "puppy"
    np.testing.assert_array_equal(layer.data, before)


def test_undo_last_run_counts_only_pixels_it_changes(qtbot, plugin, rgb_image: np.ndarray) -> None:
    """"last run undone (3063 px restored)" counted every pixel the run wrote, changed or not."""

    w = plugin
    layer = _segment_pic(qtbot, w, rgb_image)
    first = np.array(layer.data, copy=True)
    w.replace_all_check.setChecked(True)
    set_classes(qtbot, w, "cat, dog, grass")
    click(qtbot, w.segment_btn)
    _wait(qtbot, w)
    changed = int((np.asarray(layer.data) != first).sum())
    click(qtbot, w.undo_btn)
    np.testing.assert_array_equal(layer.data, first)
    assert w.status_label.text() == f"last run undone ({changed} px restored)"


def test_opening_a_batch_leaves_the_shown_image_labels_alone(qtbot, plugin, rgb_image: np.ndarray,
                                                             tmp_path: Path) -> None:
    """Opening a batch whose classes.json differs used to remap the labels of the image shown
    before (every 'cat' and 'dog' pixel of 'pic' became 0, then 'car' / 'road')."""

    _write_images(tmp_path / "in")
    out = tmp_path / "out"
    w = plugin
    w.class_table.set_from_text("car, road")
    _open(qtbot, w, tmp_path / "in", out)
    w.batch_save()  # an earlier session's classes.json
    w.batch.close()
    w.batch.session = None

    w.viewer.add_image(rgb_image, name="pic")
    w.select_image("pic")
    set_classes(qtbot, w, "cat, dog")
    click(qtbot, w.segment_btn)
    _wait(qtbot, w)
    layer = w.labels_layer_for("pic")
    layer.brush_size = 3
    layer.paint((20, 20), 2)
    before = np.array(layer.data, copy=True)
    w.confirm = lambda q: pytest.fail(f"asked: {q}")
    _open(qtbot, w, tmp_path / "in", out)  # resume the batch
    np.testing.assert_array_equal(layer.data, before)
    assert list(layer.features["class"]) == ["background", "cat", "dog"]
    assert w.class_table.label_classes().names == ["background", "car", "road"]
    w.select_image("pic")  # back to the picture: the table follows its labels
    assert w.class_table.label_classes().names == ["background", "cat", "dog"]


def test_reopening_the_dock_keeps_labels_after_a_class_removal(qtbot, make_napari_viewer, tiny_factory,
                                                                rgb_image: np.ndarray) -> None:
    """The reopened dock restored its saved class list as an edit of the open labels: after
    'cat' had been removed, all 3,072 px were renumbered (a painted 'dog' became 'grass')."""
    from conftest import open_plugin

    viewer = make_napari_viewer(show=True)
    dock, w = open_plugin(viewer, tiny_factory)
    viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, w, "cat, dog, grass")
    click(qtbot, w.segment_btn)
    _wait(qtbot, w)
    w.confirm = lambda q: True
    w.class_table.table.selectRow(1)
    click(qtbot, w.class_table.remove_btn)  # dog = 1, grass = 2 now
    click(qtbot, w.segment_btn)  # the settings remember "dog, grass"
    _wait(qtbot, w)
    layer = w.labels_layer_for("pic")
    layer.brush_size = 3
    layer.paint((20, 20), 1)  # a painted dog
    before = np.array(layer.data, copy=True)
    viewer.window.remove_dock_widget(dock)

    _dock2, w2 = open_plugin(viewer, tiny_factory)
    w2.confirm = lambda q: pytest.fail(f"asked: {q}")
    np.testing.assert_array_equal(layer.data, before)
    assert w2.class_table.label_classes().names == ["background", "dog", "grass"]
    set_classes(qtbot, w2, "dog, grass, sky")  # same names keep their labels
    np.testing.assert_array_equal(layer.data, before)
    assert list(layer.features["class"]) == ["background", "dog", "grass", "sky"]


def test_batch_mask_stays_above_a_grey_image(qtbot, plugin, tmp_path: Path) -> None:
    """Next from a colour to a grey image re-adds the image layer; it was added on top of the
    mask, hiding every label."""
    import imageio.v3 as iio

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    iio.imwrite(src / "a.png", (rng.random((32, 40, 3)) * 255).astype(np.uint8))
    iio.imwrite(src / "b.png", (rng.random((32, 40)) * 255).astype(np.uint8))
    w = plugin
    w.class_table.set_from_text("cat, dog")
    _open(qtbot, w, src, tmp_path / "out")
    assert [ly.name for ly in w.viewer.layers] == ["a", "a labels"]
    click(qtbot, w.batch_panel.next_btn)
    _wait(qtbot, w)
    assert [ly.name for ly in w.viewer.layers] == ["b", "b labels"]  # bottom to top
    click(qtbot, w.batch_panel.prev_btn)
    _wait(qtbot, w)
    assert [ly.name for ly in w.viewer.layers] == ["a", "a labels"]
