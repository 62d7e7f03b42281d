"""Batch mode through the Plugins path: unreadable images, dock reopen, view fitting.

Every unreadable file is built in the test (a truncated PNG, a zero-byte file, a text
file named ``.png``). Segmentations use tiny random-weight models: the masks are
meaningless; the tests check what is saved where, and what the viewer shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from _gui_actions import click
from test_batch import _open, _rows, _value, _wait

from napari_cass.io import read_label_image


def _rgb(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((*shape, 3)) * 255).astype(np.uint8)


def _folder_with_broken(folder: Path) -> dict[str, np.ndarray]:
    """a_good (32 x 40), three unreadable files, e_good (60 x 90, another size)."""
    folder.mkdir(parents=True)
    good = {"a_good.png": _rgb((32, 40), 1), "e_good.png": _rgb((60, 90), 2)}
    for name, img in good.items():
        iio.imwrite(folder / name, img)
    whole = (folder / "a_good.png").read_bytes()
    (folder / "b_truncated.png").write_bytes(whole[: len(whole) // 2])
    (folder / "c_empty.png").write_bytes(b"")
    (folder / "d_text.png").write_text("these are notes, not pixels\n", encoding="utf-8")
    return good


BROKEN = ("b_truncated.png", "c_empty.png", "d_text.png")


def _progress(out: Path) -> dict:
    return json.loads((out / "progress.json").read_text(encoding="utf-8"))


def _paint(w, labels, where: tuple[int, int], row: int) -> np.ndarray:
    """A brush dab of class row ``row``; returns the mask as a saved file holds it (rows)."""
    labels.brush_size = 3
    labels.paint(where, _value(w, row))
    return _rows(w, labels.data)


def test_unreadable_images_are_skipped_marked_failed_and_never_saved(
        qtbot, plugin, notes: dict, tmp_path: Path) -> None:
    """Next / Previous skip unreadable files; the counter and a message say so."""
    good = _folder_with_broken(tmp_path / "in")
    out = tmp_path / "out"
    w, viewer = plugin, plugin.viewer
    w.class_table.set_from_text("cat, dog")
    _open(qtbot, w, tmp_path / "in", out)
    image = w.batch.image_layer
    assert image.name == "a_good" and w.image_combo.currentText() == "a_good"
    ids = [ly.unique_id for ly in viewer.layers]
    first = _paint(w, w.labels_layer_for("a_good"), (5, 5), 2)

    click(qtbot, w.batch_panel.next_btn)  # over the three broken files to e_good
    _wait(qtbot, w)
    assert [ly.unique_id for ly in viewer.layers] == ids
    assert image.name == "e_good" and image.visible and image.data.shape == (60, 90, 3)
    np.testing.assert_array_equal(image.data, good["e_good.png"])
    assert w.image_combo.currentText() == "e_good"
    status = w.batch_panel.status.text()
    assert "image 5 / 5: e_good.png" in status and "3 unreadable (skipped)" in status
    message = w.batch_panel.message.text()  # stays under the counter while the run reports
    assert all(name in message for name in BROKEN) and "failed" in message
    assert notes["warning"] == [message]
    failed = _progress(out)["failed"]
    assert sorted(failed) == list(BROKEN)
    assert failed["c_empty.png"] == "empty file (0 bytes)"
    assert "truncated" in failed["b_truncated.png"]
    assert all(str(tmp_path) not in reason for reason in failed.values())  # short, no paths

    # the new, larger image fits the canvas: reset_view centres on it
    center = np.asarray(viewer.camera.center[-2:])
    np.testing.assert_allclose(center, [29.5, 44.5], atol=1.0)

    labels = w.labels_layer_for("e_good")
    last = _paint(w, labels, (30, 30), 1)
    qtbot.waitUntil(lambda: (out / "masks" / "e_good.png").is_file(), timeout=5_000)
    np.testing.assert_array_equal(read_label_image(out / "masks" / "e_good.png"), last)

    click(qtbot, w.batch_panel.prev_btn)  # back over them to a_good, with its correction
    _wait(qtbot, w)
    assert image.name == "a_good" and image.data.shape == (32, 40, 3)
    np.testing.assert_array_equal(_rows(w, w.labels_layer_for("a_good").data), first)
    # nothing was ever saved under a broken file's name; no copy of another image either
    stems = {p.stem for sub in ("masks", "images") for p in (out / sub).iterdir()}
    assert stems == {"a_good", "e_good"}
    np.testing.assert_array_equal(read_label_image(out / "masks" / "a_good.png"), first)
    np.testing.assert_array_equal(iio.imread(out / "images" / "e_good.png"), good["e_good.png"])
    assert set(_progress(out)["saved"]) == {"a_good.png", "e_good.png"}
    assert notes["error"] == []


def test_resume_on_a_broken_image_and_no_readable_image(
        qtbot, make_napari_viewer, tiny_factory, notes: dict, tmp_path: Path) -> None:
    from conftest import open_plugin

    _folder_with_broken(tmp_path / "in")
    (tmp_path / "in" / "z_last.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # a signature, then nothing
    out = tmp_path / "out"
    viewer = make_napari_viewer(show=True)
    _dock, w = open_plugin(viewer, tiny_factory)
    w.class_table.set_from_text("cat, dog")
    _open(qtbot, w, tmp_path / "in", out)
    w.batch_save()
    # resume pointed at a broken file (the folder was left there): forward to e_good
    doc = _progress(out)
    doc["current"], doc["index"] = "c_empty.png", 2
    (out / "progress.json").write_text(json.dumps(doc), encoding="utf-8")
    _open(qtbot, w, tmp_path / "in", out)
    assert w.batch.session.current.name == "e_good.png" and w.batch.image_layer.name == "e_good"
    assert len(viewer.layers) == 2
    # Next from the last readable image: it stays, and says why
    assert not w.batch_step(1)
    assert w.batch.session.current.name == "e_good.png"
    assert "No readable image after" in w.batch_panel.message.text()

    # the good files become unreadable too: the layers are hidden and tied to no image
    for name in ("a_good.png", "e_good.png"):
        (tmp_path / "in" / name).write_bytes(b"")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "progress.json"}
    _open(qtbot, w, tmp_path / "in", out)
    assert "can be read" in notes["error"][-1]
    image, labels = w.batch.image_layer, w.batch.labels_layer
    assert not image.visible and not labels.visible
    labels.paint((3, 3), 1)  # a stroke on the hidden layer saves nowhere
    w.batch_save()
    qtbot.wait(700)  # past the auto-save delay
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "progress.json"}
    assert after == before
    assert len(_progress(out)["failed"]) == 6


def test_reopened_dock_resumes_with_the_same_layers(
        qtbot, make_napari_viewer, tiny_factory, notes: dict, tmp_path: Path) -> None:
    from conftest import open_plugin

    src = tmp_path / "in"
    src.mkdir()
    iio.imwrite(src / "b_gray.png", (_rgb((30, 36), 3)[..., 0]))
    iio.imwrite(src / "c_rgb.png", _rgb((30, 36), 4))
    out = tmp_path / "out"
    viewer = make_napari_viewer(show=True)
    dock, w = open_plugin(viewer, tiny_factory)
    w.class_table.set_from_text("cat, dog")
    _open(qtbot, w, src, out)
    image, labels = w.batch.image_layer, w.batch.labels_layer
    uids = {image.unique_id, labels.unique_id}
    _paint(w, labels, (4, 4), 2)
    viewer.window.remove_dock_widget(dock)
    painted_closed = _paint(w, labels, (20, 20), 1)  # while no dock is open

    dock2, w2 = open_plugin(viewer, tiny_factory)
    assert w2.batch_panel.image_dir.text() == str(src)  # the folders are filled in
    assert w2.batch_panel.output_dir.text() == str(out)
    w2.sections["Batch"].expand(animate=False)
    qtbot.waitUntil(lambda: w2.batch_panel.open_btn.height() > 0, timeout=5_000)
    click(qtbot, w2.batch_panel.open_btn)
    _wait(qtbot, w2)
    assert w2.batch.session is not None
    names = [ly.name for ly in viewer.layers]
    assert names == ["b_gray", "b_gray labels"] and not any("[" in n for n in names)
    assert {ly.unique_id for ly in viewer.layers} == uids
    assert w2.image_combo.currentText() == "b_gray" and w2.selected_image_layer().visible
    np.testing.assert_array_equal(_rows(w2, labels.data), painted_closed)  # nothing painted was lost
    np.testing.assert_array_equal(read_label_image(out / "masks" / "b_gray.png"), painted_closed)

    # Segment and strokes reach the layer on screen (no hidden twin to write into)
    assert w2.run_panel.segment_btn.height() > 0
    click(qtbot, w2.run_panel.segment_btn)
    _wait(qtbot, w2)
    assert "done" in w2.status_label.text()
    assert {ly.unique_id for ly in viewer.layers} == uids
    stroke = _paint(w2, labels, (10, 10), 2)
    w2.batch_save()
    np.testing.assert_array_equal(read_label_image(out / "masks" / "b_gray.png"), stroke)
    click(qtbot, w2.batch_panel.next_btn)  # grey -> colour: one image layer swapped, no twins
    _wait(qtbot, w2)
    assert [ly.name for ly in viewer.layers] == ["c_rgb", "c_rgb labels"]
    assert notes["error"] == []

    # a new viewer (napari restarted) fills the folders from the last batch used
    viewer.window.remove_dock_widget(dock2)
    v3 = make_napari_viewer(show=True)
    _d3, w3 = open_plugin(v3, tiny_factory)
    assert (w3.batch_panel.image_dir.text(), w3.batch_panel.output_dir.text()) == (str(src), str(out))
