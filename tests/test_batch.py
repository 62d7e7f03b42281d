"""Batch mode: the widget flow (the Qt-free session is tested in test_batch_session.py).

Widget tests segment with tiny random-weight models: the masks are meaningless,
only saving, resuming and navigation are checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_cass.io import read_classes_json, read_label_image


def _write_images(folder: Path, n: int = 3) -> list[Path]:
    import imageio.v3 as iio

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    paths = []
    for i in range(n):
        img = (rng.random((32, 40, 3)) * 255).astype(np.uint8)
        img[:, : 10 + 5 * i] = (220, 30, 30)
        p = folder / f"img_{i:02d}.png"
        iio.imwrite(p, img)
        paths.append(p)
    return paths


def test_widget_batch_saves_and_resumes(cass_widget, make_napari_viewer, tiny_factory,
                                        notes: dict, tmp_path: Path) -> None:
    """Random weights: open, correct, Next (auto-save), reopen in a new viewer, resume."""
    from napari_cass._widget import CassWidget

    _write_images(tmp_path / "in", 3)
    w = cass_widget
    w.class_table.set_from_text("cat, dog")
    assert w.batch_open(str(tmp_path / "in"), str(tmp_path / "out"))
    labels = w.labels_layer_for("img_00")
    assert labels is not None and labels.data.shape == (32, 40)
    labels.data[0:4, 0:4] = 2  # a manual correction
    labels.refresh()
    corrected = np.array(labels.data, copy=True)

    assert w.batch_step(1)  # auto-saves img_00, segments img_01
    np.testing.assert_array_equal(read_label_image(tmp_path / "out" / "masks" / "img_00.png"), corrected)
    assert "img_00" not in w.viewer.layers and w.labels_layer_for("img_01") is not None
    assert "image 2 / 3" in w.batch_panel.status.text()
    assert not w.batch_step(-5)  # out of range: stays, says so
    assert any("first image" in m for m in notes["info"])
    assert notes["error"] == []

    # A new session in a fresh viewer resumes at img_01, and Previous shows the saved mask.
    w2 = CassWidget(make_napari_viewer(), segmenter_factory=tiny_factory)
    w2.run_in_thread = False
    assert w2.batch_open(str(tmp_path / "in"), str(tmp_path / "out"))
    assert w2._batch is not None and w2._batch.current.name == "img_01.png"
    assert w2.class_table.label_classes().names == ["background", "cat", "dog"]
    assert w2.batch_step(-1)
    resumed = w2.labels_layer_for("img_00")
    np.testing.assert_array_equal(resumed.data, corrected)
    assert list(resumed.features["class"]) == ["background", "cat", "dog"]
    assert [c["name"] for c in read_classes_json(tmp_path / "out" / "classes.json")["classes"]] == [
        "background", "cat", "dog"]
    assert (tmp_path / "out" / "masks" / "img_01.png").is_file()  # saved when leaving it


def test_batch_needs_folders(cass_widget, notes: dict, tmp_path: Path) -> None:
    assert not cass_widget.batch_step(1)
    assert "Open a batch folder" in notes["info"][-1]
    assert not cass_widget.batch_open("", "")
    assert "image folder" in notes["error"][-1]
    assert not cass_widget.batch_open(str(tmp_path / "nope"), str(tmp_path / "out"))
    assert "not found" in notes["error"][-1]
