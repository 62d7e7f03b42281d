"""A shared batch folder written by someone else: nothing is written or deleted outside it.

Each crafted folder is built here: a ``progress.json`` whose mask names are an absolute
path and ``../../victim/thesis``, ``masks/`` and ``images/`` as symbolic links, and the
dataset root (whose ``images/`` holds the inputs) chosen as output. The batch is used
through the Plugins path; every file outside the output folder must stay byte-identical.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from _gui_actions import click
from test_batch import _open, _rows, _value, _wait, _write_images

from napari_cass.io import read_label_image
from napari_cass.plugin._batch_session import BatchSession
from napari_cass.plugin._classes import LabelClasses

needs_symlinks = pytest.mark.skipif(os.name == "nt", reason="symbolic links need privileges on Windows")


def _snapshot(root: Path, skip: Path | None = None) -> dict[str, bytes]:
    """Every file under ``root`` (links not followed) and its bytes, except under ``skip``."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if skip is not None and skip in p.parents:
                continue
            out[str(p)] = b"link->" + os.readlink(p).encode() if p.is_symlink() else p.read_bytes()
    return out


def _victims(tmp_path: Path) -> list[Path]:
    files = []
    for folder in (tmp_path / "victim", tmp_path / "home" / "u"):
        folder.mkdir(parents=True)
        for suffix in (".png", ".tif"):
            p = folder / f"thesis{suffix}"
            p.write_bytes(f"the only copy of {p.name}".encode())
            files.append(p)
    return files


def _hostile_progress(src: Path, out: Path, home: Path, image_dir: bool = True) -> None:
    out.mkdir(parents=True)
    doc = {
        "format": "napari-cass/batch@2", "index": 0, "current": "img_00.png",
        "saved": ["img_00.png", "img_01.png"],
        "masks": {"img_00.png": str(home / "thesis"), "img_01.png": "../../victim/thesis",
                  "img_02.png": "img_02"},
    }
    if image_dir:
        doc["image_dir"] = str(src.resolve())
    (out / "progress.json").write_text(json.dumps(doc), encoding="utf-8")


def test_hostile_progress_names_write_and_delete_nothing_outside(
        qtbot, plugin, notes: dict, tmp_path: Path) -> None:
    _write_images(tmp_path / "in")
    out = tmp_path / "shared" / "out"
    _victims(tmp_path)
    _hostile_progress(tmp_path / "in", out, tmp_path / "home" / "u")
    outside = _snapshot(tmp_path, skip=out)
    w = plugin
    w.class_table.set_from_text("cat, dog")
    _open(qtbot, w, tmp_path / "in", out)
    assert w.batch.session is not None
    warning = w.batch_panel.message.text()
    assert "ignored 2 mask name(s)" in warning and "../../victim/thesis" in warning
    labels = w.batch.labels_layer
    for step in range(3):  # paint, save, move on: every save of the batch
        labels.brush_size = 3
        labels.paint((4 + step, 4), _value(w, 1 + step % 2))
        w.batch_save()
        if step < 2:
            click(qtbot, w.batch_panel.next_btn)
            _wait(qtbot, w)
    assert notes["error"] == []
    assert _snapshot(tmp_path, skip=out) == outside  # victims byte-identical, nothing new
    masks = sorted(p.name for p in (out / "masks").iterdir())
    assert masks == ["img_00.png", "img_01.png", "img_02.png"]  # new, plain names inside
    recorded = json.loads((out / "progress.json").read_text(encoding="utf-8"))["masks"]
    assert recorded == {f"img_0{i}.png": f"img_0{i}" for i in range(3)}


def test_progress_without_image_dir_is_refused(qtbot, plugin, tmp_path: Path) -> None:
    _write_images(tmp_path / "in")
    out = tmp_path / "out"
    _victims(tmp_path)
    _hostile_progress(tmp_path / "in", out, tmp_path / "home" / "u", image_dir=False)
    before = _snapshot(tmp_path)
    _open(qtbot, plugin, tmp_path / "in", out)
    assert plugin.batch.session is None and "no image folder" in plugin.errors.message
    assert _snapshot(tmp_path) == before and len(plugin.viewer.layers) == 0


def test_a_crafted_name_that_slips_through_is_still_stopped(tmp_path: Path) -> None:
    """Defence in depth: a target outside masks/ is refused even if a name got past the reader."""
    _write_images(tmp_path / "in", names=("img_00",))
    victims = _victims(tmp_path)
    s = BatchSession(tmp_path / "in", tmp_path / "shared" / "out")
    classes = LabelClasses.from_names(["cat"])
    for bad in ("../../victim/thesis", str(tmp_path / "home" / "u" / "thesis"), ".."):
        s.stems[0] = bad
        with pytest.raises(ValueError, match="not a plain file name"):
            s.save(s.read_image(), np.zeros((32, 40), np.uint8), classes)
    assert all(p.read_bytes().startswith(b"the only copy") for p in victims)


@needs_symlinks
@pytest.mark.parametrize("sub", ["masks", "images"])
def test_symlinked_subfolders_are_refused(qtbot, plugin, sub: str, tmp_path: Path) -> None:
    inputs = _write_images(tmp_path / "in")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "img_00.png").write_bytes(b"someone's file")
    (elsewhere / ".img_00.abcd1234.tmp.png").write_bytes(b"looks like a temp file")
    out = tmp_path / "out"
    out.mkdir()
    # masks/ leads elsewhere; images/ leads back to the inputs themselves
    (out / sub).symlink_to(elsewhere if sub == "masks" else inputs[0].parent, target_is_directory=True)
    before = _snapshot(tmp_path)
    _open(qtbot, plugin, tmp_path / "in", out)
    assert plugin.batch.session is None
    assert "symbolic link" in plugin.errors.message and f"{sub}/" in plugin.errors.message
    assert _snapshot(tmp_path) == before and len(plugin.viewer.layers) == 0


def test_output_folder_holding_the_inputs_is_refused(qtbot, plugin, tmp_path: Path) -> None:
    """The dataset root as output: its images/ holds the inputs (a 16-bit grey PNG among them)."""
    root = tmp_path / "dataset"
    _write_images(root / "images")
    grey16 = (np.arange(32 * 40, dtype=np.uint16).reshape(32, 40) * 50)
    iio.imwrite(root / "images" / "deep.png", grey16)
    before = _snapshot(tmp_path)
    _open(qtbot, plugin, root / "images", root)
    assert plugin.batch.session is None
    assert "images/ holds the input images" in plugin.errors.message
    assert _snapshot(tmp_path) == before
    np.testing.assert_array_equal(iio.imread(root / "images" / "deep.png"), grey16)
    # an input folder inside images/, or an input that is a link into it: refused alike
    (root / "images" / "raw").mkdir()
    _write_images(root / "images" / "raw", names=("r0",))
    with pytest.raises(ValueError, match="holds the input images"):
        BatchSession(root / "images" / "raw", root)
    if os.name != "nt":
        (tmp_path / "links").mkdir()
        (tmp_path / "links" / "x.png").symlink_to(root / "images" / "deep.png")
        with pytest.raises(ValueError, match=r"holds the input images \(x.png\)"):
            BatchSession(tmp_path / "links", root)


def test_files_the_batch_did_not_write_are_never_replaced(
        qtbot, plugin, notes: dict, tmp_path: Path) -> None:
    _write_images(tmp_path / "in", names=("img_00", "img_01"))
    out = tmp_path / "out"
    for sub in ("masks", "images"):
        (out / sub).mkdir(parents=True)
        (out / sub / "img_00.png").write_bytes(f"an earlier {sub[:-1]} of img_00".encode())
    (out / "masks" / "IMG_01.tif").write_bytes(b"a mask under another case")
    foreign = _snapshot(out)
    w = plugin
    w.class_table.set_from_text("cat, dog")
    _open(qtbot, w, tmp_path / "in", out)
    labels = w.batch.labels_layer
    labels.brush_size = 3
    labels.paint((6, 6), _value(w, 2))
    painted = _rows(w, labels.data)
    click(qtbot, w.batch_panel.next_btn)
    _wait(qtbot, w)
    w.batch_save()
    assert notes["error"] == []
    assert w.batch.session.stems == ["img_00_2", "img_01_2"]  # names no file has yet
    for path, data in foreign.items():
        assert Path(path).read_bytes() == data
    np.testing.assert_array_equal(read_label_image(out / "masks" / "img_00_2.png"), painted)
    assert (out / "masks" / "img_01_2.png").is_file() and (out / "images" / "img_01_2.png").is_file()


@needs_symlinks
def test_a_planted_link_in_masks_is_not_followed_or_removed(tmp_path: Path) -> None:
    _write_images(tmp_path / "in", names=("img_00",))
    victims = _victims(tmp_path)
    out = tmp_path / "out"
    s = BatchSession(tmp_path / "in", out)
    classes = LabelClasses.from_names(["cat"])
    s.save(s.read_image(), np.zeros((32, 40), np.uint8), classes)  # img_00 is now the batch's own
    (out / "masks" / "img_00.png").unlink()
    (out / "masks" / "img_00.png").symlink_to(victims[0])  # planted after the save
    (out / "masks" / "img_00.tif").symlink_to(victims[1])
    with pytest.raises(ValueError, match="symbolic link"):
        s.save(s.read_image(), np.ones((32, 40), np.uint8), classes)
    with pytest.raises(ValueError, match="symbolic link"):
        BatchSession(tmp_path / "in", out).load_mask()
    assert all(p.read_bytes().startswith(b"the only copy") for p in victims)
    assert (out / "masks" / "img_00.png").is_symlink() and (out / "masks" / "img_00.tif").is_symlink()
