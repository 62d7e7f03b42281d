"""Batch mode through the plugin dock in a shown viewer (the Qt-free session: test_batch_session.py).

Segmentations use tiny random-weight models: the masks are meaningless; the
tests check saving, resuming, navigation in place, and that no correction is lost.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt

from napari_cass.io import read_classes_json, read_label_image

WAIT = 120_000


def _write_images(folder: Path, names=("img_00", "img_01", "img_02")) -> list[Path]:
    import imageio.v3 as iio

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    paths = []
    for i, name in enumerate(names):
        img = (rng.random((32, 40, 3)) * 255).astype(np.uint8)
        img[:, : 10 + 5 * i] = (220, 30, 30)
        p = folder / f"{name}.png"
        iio.imwrite(p, img)
        paths.append(p)
    return paths


def _click(qtbot, button) -> None:
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def _wait(qtbot, w) -> None:
    qtbot.waitUntil(lambda: not w.is_running, timeout=WAIT)


def _open(qtbot, w, src: Path, out: Path) -> None:
    w.sections["Batch"].expand(animate=False)
    qtbot.waitUntil(lambda: w.batch_panel.open_btn.height() > 0, timeout=5_000)  # laid out
    w.batch_panel.image_dir.setText(str(src))
    w.batch_panel.output_dir.setText(str(out))
    _click(qtbot, w.batch_panel.open_btn)
    _wait(qtbot, w)


def _mask_file(out: Path, stem: str) -> np.ndarray:
    return read_label_image(out / "masks" / f"{stem}.png")


def _value(w, row: int) -> int:
    """The label value of class row ``row`` in the dock's table (its id; the row in files)."""
    classes = w.class_table.label_classes()
    return int(getattr(classes, "values", list(range(classes.n_labels)))[row])


def _rows(w, data: np.ndarray) -> np.ndarray:
    """Layer values as a saved mask holds them (row k of the table = k)."""
    to_rows = getattr(w.class_table.label_classes(), "to_rows", None)
    return to_rows(np.asarray(data)) if to_rows is not None else np.asarray(data)


def test_next_previous_in_place_autosave_and_resume(qtbot, plugin, make_napari_viewer, tiny_factory,
                                                    notes: dict, toasts: list, tmp_path: Path) -> None:
    from conftest import open_plugin

    _write_images(tmp_path / "in")
    out = tmp_path / "out"
    w = plugin
    w.class_table.set_from_text("cat, dog")
    _open(qtbot, w, tmp_path / "in", out)
    viewer = w.viewer
    labels = w.labels_layer_for("img_00")
    assert labels is not None and labels.data.shape == (32, 40)
    ids = [ly.unique_id for ly in viewer.layers]

    labels.brush_size = 3
    labels.paint((5, 5), _value(w, 2))  # a correction: saved shortly after, without pressing anything
    corrected = np.array(labels.data, copy=True)
    qtbot.waitUntil(lambda: (out / "masks" / "img_00.png").is_file(), timeout=5_000)
    np.testing.assert_array_equal(_mask_file(out, "img_00"), _rows(w, corrected))

    _click(qtbot, w.batch_panel.next_btn)
    _wait(qtbot, w)
    assert [ly.unique_id for ly in viewer.layers] == ids  # same layers, new data: no remove/add
    assert [ly.name for ly in viewer.layers] == ["img_01", "img_01 labels"]
    assert "image 2 / 3" in w.batch_panel.status.text()
    np.testing.assert_array_equal(_mask_file(out, "img_00"), _rows(w, corrected))
    assert not w.batch_step(-5)
    assert "first image" in w.status_label.text()

    _click(qtbot, w.batch_panel.prev_btn)
    _wait(qtbot, w)
    np.testing.assert_array_equal(w.labels_layer_for("img_00").data, corrected)
    assert (out / "masks" / "img_01.png").is_file()  # saved when leaving it
    assert notes["error"] == [] and toasts == []

    # A new viewer resumes at img_00; its mask is writable: the brush works at once.
    v2 = make_napari_viewer(show=True)
    _d2, w2 = open_plugin(v2, tiny_factory)
    _open(qtbot, w2, tmp_path / "in", out)
    assert w2.batch.session.current.name == "img_00.png"
    assert w2.class_table.label_classes().names == ["background", "cat", "dog"]
    resumed = w2.labels_layer_for("img_00")
    np.testing.assert_array_equal(_rows(w2, resumed.data), _rows(w, corrected))
    resumed.brush_size = 3
    resumed.paint((20, 30), _value(w2, 1))
    assert resumed.data[20, 30] == _value(w2, 1)
    w2.batch_save()
    np.testing.assert_array_equal(_mask_file(out, "img_00"), _rows(w2, resumed.data))


def test_unicode_names_and_class_added_mid_batch(qtbot, plugin, tmp_path: Path, notes: dict) -> None:
    _write_images(tmp_path / "in", names=("猫", "鳥", "café"))
    out = tmp_path / "out"
    w = plugin
    w.class_table.set_from_text("cat, dog")
    _open(qtbot, w, tmp_path / "in", out)
    first = w.batch.session.stems[w.batch.session.index]
    labels = w.labels_layer_for(first)
    masks = {}
    for _ in range(3):
        stem = w.batch.session.stems[w.batch.session.index]
        labels = w.labels_layer_for(stem)
        labels.brush_size = 3
        labels.paint((4, 4 + 8 * len(masks)), _value(w, 1))
        masks[stem] = _rows(w, labels.data)
        if len(masks) < 3:
            _click(qtbot, w.batch_panel.next_btn)
            _wait(qtbot, w)
    # a class added mid-batch: the list grows, painted at once, Next saves it
    _click(qtbot, w.class_table.add_btn)
    stem = w.batch.session.stems[w.batch.session.index]
    labels = w.labels_layer_for(stem)
    labels.paint((10, 10), _value(w, 3))
    masks[stem] = _rows(w, labels.data)
    w.batch_save()
    assert notes["error"] == []
    assert len({p.name for p in (out / "masks").iterdir()}) == 3  # one mask per image
    for stem, mask in masks.items():
        np.testing.assert_array_equal(_mask_file(out, stem), mask)
    assert "猫" in masks and "鳥" in masks
    names = [c["name"] for c in read_classes_json(out / "classes.json")["classes"]]
    assert names == ["background", "cat", "dog", "class 3"]


def test_closing_the_dock_saves(qtbot, make_napari_viewer, tiny_factory, tmp_path: Path) -> None:
    from conftest import open_plugin

    _write_images(tmp_path / "in")
    out = tmp_path / "out"
    viewer = make_napari_viewer(show=True)
    dock, w = open_plugin(viewer, tiny_factory)
    w.class_table.set_from_text("cat, dog")
    _open(qtbot, w, tmp_path / "in", out)
    labels = w.labels_layer_for("img_00")
    labels.brush_size = 3
    labels.paint((8, 8), _value(w, 2))
    expected = _rows(w, labels.data)
    viewer.window.remove_dock_widget(dock)  # before the auto-save timer fires
    np.testing.assert_array_equal(_mask_file(out, "img_00"), expected)


def test_batch_needs_folders(qtbot, plugin, tmp_path: Path) -> None:
    assert not plugin.batch_step(1)
    assert "Open a batch folder" in plugin.status_label.text()
    assert not plugin.batch_open("", "")
    assert "image folder" in plugin.errors.message
    assert not plugin.batch_open(str(tmp_path / "nope"), str(tmp_path / "out"))
    assert "not found" in plugin.errors.message


def test_closing_the_viewer_saves(qtbot, make_napari_viewer, tiny_factory, tmp_path: Path) -> None:
    from conftest import open_plugin

    _write_images(tmp_path / "in")
    out = tmp_path / "out"
    viewer = make_napari_viewer(show=True)
    _dock, w = open_plugin(viewer, tiny_factory)
    w.class_table.set_from_text("cat, dog")
    _open(qtbot, w, tmp_path / "in", out)
    labels = w.labels_layer_for("img_00")
    labels.brush_size = 3
    labels.paint((8, 8), _value(w, 2))
    expected = _rows(w, labels.data)
    viewer.close()  # File > Close Window, before the auto-save timer fires
    np.testing.assert_array_equal(_mask_file(out, "img_00"), expected)
