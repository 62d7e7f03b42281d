"""The Qt-free batch session: mask names, resume, class growth, cheap atomic saves."""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from napari_cass.plugin._batch_session import PROGRESS_FILE, BatchSession
from napari_cass.plugin._classes import LabelClasses
from napari_cass.io import read_classes_json, read_label_image


def _write_images(folder: Path, n: int = 3) -> list[Path]:
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


def _write_named(folder: Path, names: list[str], shape: tuple[int, int] = (6, 7)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        ext = Path(name).suffix.lower()
        iio.imwrite(folder / name, np.full((*shape, 3), 10 * k, np.uint8),
                    extension=".jpg" if ext == ".jpg" else ext)


def _mask(value: int, shape: tuple[int, int] = (6, 7)) -> np.ndarray:
    """A mask unique to ``value``: background with a ``value`` block whose size depends on it."""
    m = np.zeros(shape, np.uint8)
    m[: 1 + value % shape[0], : 1 + value % shape[1]] = value
    return m


def test_session_lists_saves_and_resumes(tmp_path: Path) -> None:
    _write_images(tmp_path / "in", 3)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    s = BatchSession(tmp_path / "in", tmp_path / "out")
    assert [p.name for p in s.images] == ["img_00.png", "img_01.png", "img_02.png"]
    assert s.index == 0 and s.mask_path() is None
    classes = LabelClasses.from_names(["cat", "dog"])
    labels = np.ones((32, 40), np.uint8)
    labels[:5] = 2
    paths = s.save(s.read_image(), labels, classes)
    assert paths["mask"] == tmp_path / "out" / "masks" / "img_00.png"
    assert (tmp_path / "out" / "images" / "img_00.png").is_file()
    assert s.go(1) and s.go(1) and not s.go(1)
    progress = json.loads((tmp_path / "out" / PROGRESS_FILE).read_text())
    assert progress["current"] == "img_02.png" and progress["saved"] == ["img_00.png"]
    assert progress["masks"] == {f"img_{i:02d}.png": f"img_{i:02d}" for i in range(3)}

    again = BatchSession(tmp_path / "in", tmp_path / "out")
    assert again.index == 2 and again.saved == {"img_00.png"}
    np.testing.assert_array_equal(again.load_mask(0), labels)
    assert [c["name"] for c in again.saved_classes()["classes"]] == ["background", "cat", "dog"]
    # a different class list cannot silently reuse this dataset folder
    with pytest.raises(ValueError, match="'cat', 'dog' are missing"):
        again.save(again.read_image(1), labels, LabelClasses.from_names(["car", "road"]), index=1)
    assert again.mask_path(1) is None


def test_session_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        BatchSession(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No image"):
        BatchSession(tmp_path / "empty", tmp_path / "out")
    _write_images(tmp_path / "a", 1)
    _write_images(tmp_path / "b", 1)
    BatchSession(tmp_path / "a", tmp_path / "out").save_progress()
    with pytest.raises(ValueError, match="another image folder"):
        BatchSession(tmp_path / "b", tmp_path / "out")
    with pytest.raises(ValueError, match="different from the image folder"):
        BatchSession(tmp_path / "a", tmp_path / "a")
    (tmp_path / "out" / PROGRESS_FILE).write_text("[1, 2")
    with pytest.raises(ValueError, match="unreadable.*move it away"):
        BatchSession(tmp_path / "a", tmp_path / "out")


def test_session_distinct_stems(tmp_path: Path) -> None:
    _write_named(tmp_path / "in", ["x y.png", "x y.bmp"])
    s = BatchSession(tmp_path / "in", tmp_path / "out")
    assert s.stems == ["x y", "x y_2"]  # sorted: .bmp first; letters and spaces kept


UNICODE_NAMES = ["猫.png", "鳥.png", "café.png", "Café.PNG", "cafe.png", "a.png", "a.jpg",
                 unicodedata.normalize("NFD", "café") + ".bmp"]


def test_unicode_names_distinct_masks_and_resume(tmp_path: Path) -> None:
    _write_named(tmp_path / "in", UNICODE_NAMES)
    s = BatchSession(tmp_path / "in", tmp_path / "out")
    names = [p.name for p in s.images]
    assert sorted(names) == sorted(UNICODE_NAMES)
    by_name = dict(zip(names, s.stems))
    assert by_name["猫.png"] == "猫" and by_name["鳥.png"] == "鳥"
    assert by_name["cafe.png"] == "cafe" and by_name["a.jpg"] == "a" and by_name["a.png"] == "a_2"
    # café, Café and the NFD café share one name on macOS/Windows: suffixes keep them apart
    cafes = sorted(by_name[n] for n in names if n.lower().startswith("caf") and n != "cafe.png")
    assert cafes == ["Café", "café_2", "café_3"]
    assert len({st.casefold() for st in s.stems}) == len(UNICODE_NAMES)

    classes = LabelClasses.from_names([f"c{k}" for k in range(1, 12)])
    for i in range(len(s)):  # mask i holds label i + 1: every image a different mask
        s.save(s.read_image(i), _mask(i + 1), classes, index=i)
    masks = sorted(p.name for p in (tmp_path / "out" / "masks").iterdir())
    assert len(masks) == len(UNICODE_NAMES)
    recorded = json.loads((tmp_path / "out" / PROGRESS_FILE).read_text(encoding="utf-8"))["masks"]
    assert recorded == by_name

    # Resume after the folder changed: a.jpg removed, two new images sort before the others.
    expected = {n: _mask(i + 1) for i, n in enumerate(names) if n != "a.jpg"}
    (tmp_path / "in" / "a.jpg").unlink()
    _write_named(tmp_path / "in", ["0.png", "a.PNG"])
    again = BatchSession(tmp_path / "in", tmp_path / "out")
    for i, p in enumerate(again.images):
        if p.name in expected:
            np.testing.assert_array_equal(again.load_mask(i), expected[p.name])
            assert again.stems[i] == by_name[p.name]
        else:  # new images never inherit a mask (a.PNG may not take a.jpg's old "a")
            assert again.mask_path(i) is None
    assert dict(zip([p.name for p in again.images], again.stems))["a.PNG"] == "a_3"
    assert again.saved == set(expected)


def test_nfd_spelling_change_keeps_the_mask(tmp_path: Path) -> None:
    """A folder copied from macOS may spell café in NFD: the record still applies."""
    _write_named(tmp_path / "in", ["café.png"])
    s = BatchSession(tmp_path / "in", tmp_path / "out")
    s.save(s.read_image(), _mask(1), LabelClasses.from_names(["x"]))
    nfd = unicodedata.normalize("NFD", "café.png")
    (tmp_path / "in" / "café.png").rename(tmp_path / "in" / nfd)
    again = BatchSession(tmp_path / "in", tmp_path / "out")
    assert again.images[0].name == nfd and again.stems == ["café"] and again.saved == {nfd}
    np.testing.assert_array_equal(again.load_mask(), _mask(1))


def test_resumed_mask_is_writable(tmp_path: Path) -> None:
    _write_images(tmp_path / "in", 2)
    s = BatchSession(tmp_path / "in", tmp_path / "out")
    labels = np.zeros((32, 40), np.uint8)
    labels[3:9, 4:20] = 1
    s.save(s.read_image(), labels, LabelClasses.from_names(["cat"]))
    for mask in (BatchSession(tmp_path / "in", tmp_path / "out").load_mask(0), s.load_mask(0)):
        assert mask.flags.writeable and mask.flags.c_contiguous and mask.flags.owndata
        mask[0, 0] = 1  # a brush stroke
        assert mask[0, 0] == 1 and int(mask.sum()) == 6 * 16 + 1


def test_class_list_grows_mid_batch(tmp_path: Path) -> None:
    _write_images(tmp_path / "in", 3)
    s = BatchSession(tmp_path / "in", tmp_path / "out")
    two = LabelClasses.from_names(["cat", "dog"], synonyms=[["kitty"], ["puppy"]])
    first = np.zeros((32, 40), np.uint8)
    first[:10], first[10:20] = 1, 2
    s.save(s.read_image(0), first, two, index=0)
    three = LabelClasses.from_names(["cat", "dog", "bird"], synonyms=[["kitty"], ["puppy"], []])
    second = np.zeros((32, 40), np.uint8)
    second[:4], second[4:8], second[8:12] = 1, 2, 3
    written = s.save_if_changed(s.read_image(1), second, three, index=1)
    assert set(written) == {"classes", "image", "mask"}
    doc = read_classes_json(tmp_path / "out" / "classes.json")
    assert [c["name"] for c in doc["classes"]] == ["background", "cat", "dog", "bird"]
    assert [c["color"] for c in doc["classes"]] == three.colors.astype(int).tolist()
    assert doc["classes"][1]["synonyms"] == ["kitty"]
    # the earlier mask still reads with the same values, hence the same classes
    np.testing.assert_array_equal(read_label_image(s.mask_path(0)), first)
    np.testing.assert_array_equal(read_label_image(s.mask_path(1)), second)

    # renames, reorders and removals are refused, saying what differs; nothing is written
    before = (tmp_path / "out" / "classes.json").read_bytes()
    for names, message in [
        (["kitten", "dog", "bird"], "'cat' is missing"),
        (["dog", "cat", "bird"], r"'cat' \(label 1 -> 2\), 'dog' \(label 2 -> 1\)"),
        (["cat", "dog"], "'bird' is missing"),
        (["cat", "fish", "dog", "bird"], r"'dog' \(label 2 -> 3\)"),
    ]:
        with pytest.raises(ValueError, match=message) as err:
            s.save(s.read_image(2), np.zeros((32, 40), np.uint8), LabelClasses.from_names(names),
                   index=2)
        assert "add new classes at the end" in str(err.value)
    assert (tmp_path / "out" / "classes.json").read_bytes() == before
    assert s.mask_path(2) is None


def test_save_if_changed_writes_only_what_changed(tmp_path: Path) -> None:
    _write_images(tmp_path / "in", 2)
    s = BatchSession(tmp_path / "in", tmp_path / "out")
    classes = LabelClasses.from_names(["cat", "dog"])
    labels = np.zeros((32, 40), np.uint8)
    labels[5:15, 5:15] = 2
    image = s.read_image()
    assert set(s.save_if_changed(image, labels, classes)) == {"classes", "image", "mask"}
    mask = tmp_path / "out" / "masks" / "img_00.png"
    os.utime(mask, ns=(1_000_000_000, 1_000_000_000))  # a marker: any rewrite changes it
    assert s.save_if_changed(image, labels, classes) == {}
    assert mask.stat().st_mtime_ns == 1_000_000_000
    assert not s.needs_save(labels)
    labels[0, 0] = 1  # one edited pixel
    assert s.needs_save(labels) and s.needs_save(labels, index=1)  # image 1: never saved
    assert set(s.save_if_changed(image, labels, classes)) == {"mask"}
    np.testing.assert_array_equal(read_label_image(mask), labels)
    grown = LabelClasses.from_names(["cat", "dog", "bird"])  # a class added, mask unchanged
    assert set(s.save_if_changed(image, labels, grown)) == {"classes"}
    assert [c["name"] for c in s.saved_classes()["classes"]] == ["background", "cat", "dog", "bird"]
    classes = grown
    # after a resume the reloaded mask counts as saved; save() always writes
    again = BatchSession(tmp_path / "in", tmp_path / "out")
    reloaded = again.load_mask(0)
    os.utime(mask, ns=(2_000_000_000, 2_000_000_000))
    assert again.save_if_changed(image, reloaded, classes) == {}
    assert mask.stat().st_mtime_ns == 2_000_000_000
    copy = tmp_path / "out" / "images" / "img_00.png"
    copy.unlink()  # a missing image copy is written again
    assert set(again.save_if_changed(image, reloaded, classes)) == {"image"}
    np.testing.assert_array_equal(iio.imread(copy), image)
    assert again.save(image, reloaded, classes)["mask"] == mask
    assert mask.stat().st_mtime_ns != 2_000_000_000
    # bad masks are refused with what to do
    with pytest.raises(ValueError, match=r"holds label 4.*labels 0\.\.3"):
        again.save_if_changed(image, np.full((32, 40), 4, np.uint8), classes)
    with pytest.raises(ValueError, match=r"shape \(32, 41\).*\(32, 40\)"):
        again.save_if_changed(image, np.zeros((32, 41), np.uint8), classes)


def test_many_classes_switch_mask_to_tiff(tmp_path: Path) -> None:
    _write_images(tmp_path / "in", 1)
    s = BatchSession(tmp_path / "in", tmp_path / "out")
    labels = np.zeros((32, 40), np.uint16)
    labels[:3] = 2
    s.save(s.read_image(), labels, LabelClasses.from_names(["a", "b"]))
    many = LabelClasses.from_names(["a", "b", *(f"k{i}" for i in range(300))])
    labels[5:7] = 301
    s.save_if_changed(s.read_image(), labels, many)
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["img_00.tif"]
    np.testing.assert_array_equal(BatchSession(tmp_path / "in", tmp_path / "out").load_mask(), labels)


def test_killed_save_leaves_old_mask_and_temp_is_cleaned(tmp_path: Path, monkeypatch) -> None:
    from PIL import Image

    _write_images(tmp_path / "in", 1)
    s = BatchSession(tmp_path / "in", tmp_path / "out")
    classes = LabelClasses.from_names(["cat"])
    old = np.zeros((32, 40), np.uint8)
    old[2:4] = 1
    s.save(s.read_image(), old, classes)
    mask = tmp_path / "out" / "masks" / "img_00.png"

    real_save = Image.Image.save

    def dying_save(self, fp, *args, **kwargs):  # writes half a file, then fails
        Path(fp).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        s.save(s.read_image(), np.ones((32, 40), np.uint8), classes)
    monkeypatch.setattr(Image.Image, "save", real_save)
    np.testing.assert_array_equal(read_label_image(mask), old)  # atomic: old mask intact
    assert not [p for p in mask.parent.iterdir() if p.name != "img_00.png"]

    # a process killed mid-save leaves its temp files; the next open removes them
    leftovers = [tmp_path / "out" / "masks" / ".img_00.k1ll3d_x.tmp.png",
                 tmp_path / "out" / "images" / ".img_00.a8b9c0d1.tmp.png",
                 tmp_path / "out" / ".progress.zz99yy88.tmp.json"]
    keep = [tmp_path / "out" / "masks" / "notes.tmp.png", tmp_path / "out" / ".notes.tmp.png",
            tmp_path / "out" / ".hidden.json"]
    for p in leftovers + keep:
        p.write_bytes(b"partial")
    again = BatchSession(tmp_path / "in", tmp_path / "out")
    assert sorted(again.removed_temp_files) == sorted(leftovers)
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in keep)
    np.testing.assert_array_equal(again.load_mask(), old)


def test_a_run_writing_into_the_folder_blocks_open_and_save(tmp_path: Path) -> None:
    """A CLI run holds the folder lock: the batch neither cleans its temp files nor saves."""
    from napari_cass.io import OutputConflictError, RunLock

    _write_images(tmp_path / "in", 1)
    s = BatchSession(tmp_path / "in", tmp_path / "out")
    live_temp = tmp_path / "out" / "masks" / ".img_00.abcd1234.tmp.png"
    live_temp.parent.mkdir(parents=True)
    live_temp.write_bytes(b"being written")
    with RunLock(tmp_path / "out"):
        with pytest.raises(OutputConflictError, match="Another napari-cass run is writing"):
            BatchSession(tmp_path / "in", tmp_path / "out")
        with pytest.raises(OutputConflictError, match="Another napari-cass run is writing"):
            s.save(s.read_image(), np.zeros((32, 40), np.uint8), LabelClasses.from_names(["a"]))
    assert live_temp.exists() and s.mask_path() is None
    s.save(s.read_image(), np.zeros((32, 40), np.uint8), LabelClasses.from_names(["a"]))
    assert s.mask_path() == tmp_path / "out" / "masks" / "img_00.png"


def test_unreadable_image_is_recorded_and_never_saved_under(tmp_path: Path) -> None:
    paths = _write_images(tmp_path / "in", 2)
    good = paths[1].read_bytes()
    paths[1].write_bytes(good[: len(good) // 3])  # truncated
    s = BatchSession(tmp_path / "in", tmp_path / "out")
    with pytest.raises(ValueError, match="Cannot read img_01.png: image file is truncated"):
        s.read_image(1)
    assert json.loads((tmp_path / "out" / PROGRESS_FILE).read_text())["failed"] == {
        "img_01.png": "image file is truncated"}
    classes = LabelClasses.from_names(["cat"])
    with pytest.raises(ValueError, match="could not be read.*nothing is saved"):
        s.save(s.read_image(0), np.zeros((32, 40), np.uint8), classes, index=1)  # another's pixels
    assert not (tmp_path / "out" / "masks").exists() and not (tmp_path / "out" / "images").exists()
    again = BatchSession(tmp_path / "in", tmp_path / "out")
    assert again.failed == {"img_01.png": "image file is truncated"}
    paths[1].write_bytes(good)  # repaired: the next read clears the record
    assert again.read_image(1).shape == (32, 40, 3) and again.failed == {}
    assert json.loads((tmp_path / "out" / PROGRESS_FILE).read_text())["failed"] == {}


def test_saved_rows_become_the_tables_label_values() -> None:
    """A mask file counts rows; a layer whose classes have other ids gets those ids."""
    from napari_cass.plugin._batch_controller import BatchController

    classes = LabelClasses.from_names(["cat", "dog"])
    rows = np.array([[0, 1], [2, 1]], np.uint8)
    np.testing.assert_array_equal(BatchController._as_values(rows, classes), rows)
    classes.ids = [0, 6, 300]  # e.g. after classes were removed and added outside the batch
    values = BatchController._as_values(rows, classes)
    np.testing.assert_array_equal(values, [[0, 6], [300, 6]])
    np.testing.assert_array_equal(classes.to_rows(values), rows)


@pytest.mark.skipif(os.name == "nt", reason="symbolic links need privileges on Windows")
def test_linked_classes_or_progress_files_are_refused(tmp_path: Path) -> None:
    _write_images(tmp_path / "in", 1)
    out = tmp_path / "out"
    s = BatchSession(tmp_path / "in", out)
    s.save(s.read_image(), np.zeros((32, 40), np.uint8), LabelClasses.from_names(["cat"]))
    elsewhere = tmp_path / "elsewhere.json"
    for name in ("classes.json", PROGRESS_FILE):
        elsewhere.write_bytes((out / name).read_bytes())
        (out / name).unlink()
        (out / name).symlink_to(elsewhere)
        with pytest.raises(ValueError, match="symbolic link|a link"):
            BatchSession(tmp_path / "in", out).saved_classes()
        (out / name).unlink()
        (out / name).write_bytes(elsewhere.read_bytes())
