"""napari_cass.io: label images, classes.json, overlays, COCO, dataset folders (Qt-free)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_cass.io import (
    atomic_write,
    check_targets,
    export_dataset_item,
    label_palette,
    labels_to_coco,
    overlay_labels,
    read_classes_json,
    read_label_image,
    safe_filename,
    to_uint8_rgb,
    write_classes_json,
    write_indexed_png,
    write_label_tiff,
)


def _labels(h: int = 20, w: int = 30, n: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(h, w)).astype(np.int32)


# ------------------------------------------------------------------ palette
def test_palette_is_voc_colour_map() -> None:
    pal = label_palette(6)
    assert pal.shape == (6, 3) and pal.dtype == np.uint8
    assert pal[:6].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128]]
    big = label_palette(256)
    assert len({tuple(c) for c in big}) == 256  # every index distinguishable
    assert label_palette(300).shape == (300, 3)
    with pytest.raises(ValueError, match="non-negative"):
        label_palette(-1)


# ------------------------------------------------------------------ masks
def test_indexed_png_round_trip_keeps_values_and_palette(tmp_path: Path) -> None:
    labels = _labels(n=5)
    pal = label_palette(5)
    out = write_indexed_png(tmp_path / "m.png", labels, pal)
    with Image.open(out) as img:
        assert img.mode == "P"
        stored = np.array(img.getpalette()[:15], dtype=np.uint8).reshape(5, 3)
    np.testing.assert_array_equal(stored, pal)
    np.testing.assert_array_equal(read_label_image(out), labels)


def test_indexed_png_refuses_large_values_and_suggests_tiff(tmp_path: Path) -> None:
    labels = np.zeros((4, 4), dtype=np.int32)
    labels[0, 0] = 300
    with pytest.raises(ValueError, match="write_label_tiff"):
        write_indexed_png(tmp_path / "m.png", labels, label_palette(301))
    assert not (tmp_path / "m.png").exists()


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 3, 3), dtype=np.int32), "2-D"),
    (np.full((3, 3), -1), "non-negative"),
    (np.full((3, 3), 0.5), "integer"),
])
def test_label_writers_reject_bad_labels(tmp_path: Path, bad: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_indexed_png(tmp_path / "m.png", bad, label_palette(3))
    with pytest.raises(ValueError, match=message):
        write_label_tiff(tmp_path / "m.tif", bad)


def test_label_tiff_round_trip_beyond_255(tmp_path: Path) -> None:
    labels = _labels(n=1000, seed=3)
    assert labels.max() > 255
    out = write_label_tiff(tmp_path / "m.tif", labels)
    back = read_label_image(out)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, labels)


def test_read_label_image_rejects_rgb(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="not a label image"):
        read_label_image(tmp_path / "rgb.png")
    with pytest.raises(FileNotFoundError):
        read_label_image(tmp_path / "missing.png")


# ------------------------------------------------------------------ atomic / overwrite
def test_writers_never_overwrite_silently(tmp_path: Path) -> None:
    target = tmp_path / "m.png"
    write_indexed_png(target, _labels(seed=1), label_palette(4))
    before = target.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        write_indexed_png(target, _labels(seed=2), label_palette(4))
    assert target.read_bytes() == before
    write_indexed_png(target, _labels(seed=2), label_palette(4), overwrite=True)
    np.testing.assert_array_equal(read_label_image(target), _labels(seed=2))


def test_atomic_write_leaves_nothing_behind_on_error(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.txt"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as tmp:
            assert tmp.parent == target.parent and tmp.suffix == ".txt"
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []
    with atomic_write(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done"
    assert [p.name for p in target.parent.iterdir()] == ["x.txt"]


def test_check_targets_lists_conflicts(tmp_path: Path) -> None:
    paths = [tmp_path / f"{i}.png" for i in range(8)]
    for p in paths[:7]:
        p.write_text("x")
    with pytest.raises(FileExistsError, match=r"7 output files exist already: .*0\.png.*and 2 more"):
        check_targets(paths)
    check_targets(paths, overwrite=True)
    check_targets([tmp_path / "new.png"])


@pytest.mark.parametrize("name, expected", [
    ("cat", "cat"),
    ("traffic light", "traffic light"),
    ("../../etc/passwd", "_.._etc_passwd"),
    ("  _cat_  ", "_cat_"),
    ("a/b\\c:d*e?f", "a_b_c_d_e_f"),
    ("...hidden", "hidden"),
    ("", "unnamed"),
    ("///", "unnamed"),
    ("CON", "_CON"),
    ("com1.txt", "_com1.txt"),
    ("vélo", "vélo"),
])
def test_safe_filename(name: str, expected: str) -> None:
    assert safe_filename(name) == expected


def test_safe_filename_caps_length() -> None:
    assert len(safe_filename("x" * 500)) == 120
    assert len(safe_filename("x" * 500, max_length=10)) == 10


# ------------------------------------------------------------------ classes.json
def test_classes_json_round_trip(tmp_path: Path) -> None:
    names = ["background", "cat", "traffic light"]
    colours = label_palette(3)
    path = write_classes_json(tmp_path / "classes.json", names, colours,
                              [["sky", "wall"], ["cat", "kitten"], ["traffic light"]],
                              extra={"method": "cass", "preset": "voc21"})
    doc = read_classes_json(path)
    assert doc["format"] == "napari-cass/classes@1"
    assert doc["method"] == "cass" and doc["preset"] == "voc21"
    assert [c["id"] for c in doc["classes"]] == [0, 1, 2]
    assert [c["name"] for c in doc["classes"]] == names
    assert doc["classes"][1]["color"] == [128, 0, 0]
    assert doc["classes"][1]["synonyms"] == ["cat", "kitten"]
    with pytest.raises(FileExistsError):
        write_classes_json(path, names, colours)


def test_classes_json_write_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unique"):
        write_classes_json(tmp_path / "c.json", ["a", "a"], label_palette(2))
    with pytest.raises(ValueError, match="one per class"):
        write_classes_json(tmp_path / "c.json", ["a", "b", "c"], label_palette(2))
    with pytest.raises(ValueError, match="reserved"):
        write_classes_json(tmp_path / "c.json", ["a"], label_palette(1), extra={"classes": []})
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("doc, message", [
    ({"classes": []}, "not a napari-cass class file"),
    ({"format": "napari-cass/classes@1", "classes": []}, "non-empty"),
    ({"format": "napari-cass/classes@1", "classes": [{"id": 1, "name": "a", "color": [0, 0, 0]}]}, "ids must be"),
    ({"format": "napari-cass/classes@1", "classes": [{"id": 0, "name": "a", "color": [0, 0]}]}, "colour"),
    ({"format": "napari-cass/classes@1", "classes": [{"id": 0, "name": "", "color": [0, 0, 0]}]}, "no name"),
])
def test_classes_json_read_validation(tmp_path: Path, doc: dict, message: str) -> None:
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=message):
        read_classes_json(path)


def test_classes_json_rejects_broken_json(tmp_path: Path) -> None:
    path = tmp_path / "classes.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_classes_json(path)


# ------------------------------------------------------------------ overlay
def test_to_uint8_rgb_scales_like_a_display() -> None:
    grey16 = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    out = to_uint8_rgb(grey16)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[1, 1, 0] == 255 and out[0, 1, 0] == 64
    unit = to_uint8_rgb(np.full((2, 2, 3), 0.5, dtype=np.float32))
    assert np.all(unit == 128)  # floats in [0, 1] are not stretched
    rgba = to_uint8_rgb(np.zeros((3, 3, 4), dtype=np.uint8))
    assert rgba.shape == (3, 3, 3)
    with pytest.raises(ValueError, match="grey"):
        to_uint8_rgb(np.zeros((3, 3, 5)))


def test_overlay_blends_only_labelled_pixels() -> None:
    image = np.full((4, 4, 3), 100, dtype=np.uint8)
    labels = np.zeros((4, 4), dtype=np.int32)
    labels[0, :] = 1
    pal = label_palette(2)  # 1 -> (128, 0, 0)
    out = overlay_labels(image, labels, pal, alpha=0.5)
    assert out[0, 0].tolist() == [114, 50, 50]
    assert out[1, 0].tolist() == [100, 100, 100]
    every = overlay_labels(image, labels, pal, alpha=1.0, skip_zero=False)
    assert every[1, 0].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="palette has only"):
        overlay_labels(image, labels + 1, pal)
    with pytest.raises(ValueError, match="do not match"):
        overlay_labels(image, labels[:2], pal)
    with pytest.raises(ValueError, match="alpha"):
        overlay_labels(image, labels, pal, alpha=2.0)


# ------------------------------------------------------------------ COCO
def _coco_from_dict(doc: dict, tmp_path: Path):
    from pycocotools.coco import COCO

    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))  # must be plain JSON
    return COCO(str(path))


def test_labels_to_coco_rle_is_exact(tmp_path: Path) -> None:
    labels = np.zeros((24, 32), dtype=np.int32)
    labels[2:10, 3:12] = 1
    labels[15:22, 20:30] = 3
    names = ["background", "cat", "dog", "grass"]
    doc = labels_to_coco(labels, names, image_id=7, file_name="a.png", mode="rle", ignore_index=0)
    coco = _coco_from_dict(doc, tmp_path)
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == ["cat", "grass"]  # dog absent
    assert coco.imgs[7]["height"] == 24 and coco.imgs[7]["width"] == 32
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[7])):
        value = ann["category_id"] - 1
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), labels == value)
        assert ann["area"] == float((labels == value).sum())
        assert ann["iscrowd"] == 0
    cat_ann = [a for a in doc["annotations"] if a["category_id"] == 2][0]
    assert cat_ann["bbox"] == [3.0, 2.0, 9.0, 8.0]
    with_bg = labels_to_coco(labels, names, 7, "a.png")
    assert [c["name"] for c in with_bg["categories"]] == ["background", "cat", "grass"]


def test_labels_to_coco_polygons_per_region(tmp_path: Path) -> None:
    labels = np.zeros((40, 40), dtype=np.int32)
    labels[5:15, 5:15] = 1
    labels[25:35, 20:38] = 1  # a second region of the same class
    labels[20:24, 2:8] = 2
    doc = labels_to_coco(labels, ["bg", "cell", "debris"], 1, "x.png", mode="polygon", ignore_index=0)
    coco = _coco_from_dict(doc, tmp_path)
    cell_anns = [a for a in doc["annotations"] if a["category_id"] == 2]
    assert len(cell_anns) == 2
    for ann in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(ann).astype(bool)
        x, y, w, h = (int(v) for v in ann["bbox"])
        truth = np.zeros_like(mask)
        truth[y:y + h, x:x + w] = labels[y:y + h, x:x + w] == ann["category_id"] - 1
        iou = (mask & truth).sum() / (mask | truth).sum()
        assert iou > 0.9, (ann["category_id"], iou)
        assert ann["area"] == float(truth.sum())
    with pytest.raises(ValueError, match="mode"):
        labels_to_coco(labels, ["a", "b", "c"], 1, "x.png", mode="mask")
    with pytest.raises(ValueError, match="no class name"):
        labels_to_coco(labels, ["a"], 1, "x.png")


# ------------------------------------------------------------------ dataset
def test_export_dataset_item_layout_and_guards(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    image = np.random.default_rng(0).integers(0, 4000, size=(20, 30), dtype=np.uint16)
    labels = _labels(n=3)
    names = ["background", "cat", "dog"]
    paths = export_dataset_item(root, "scan 01/a", image, labels, names, label_palette(3))
    assert paths["image"] == root / "images" / "scan 01_a.png"
    assert paths["mask"] == root / "masks" / "scan 01_a.png"
    with Image.open(paths["image"]) as img:
        assert img.mode == "RGB" and img.size == (30, 20)
    np.testing.assert_array_equal(read_label_image(paths["mask"]), labels)
    assert [c["name"] for c in read_classes_json(paths["classes"])["classes"]] == names

    second = export_dataset_item(root, "b", image, labels, names, label_palette(3))  # same classes: fine
    assert second["mask"].exists()
    with pytest.raises(FileExistsError):
        export_dataset_item(root, "b", image, labels, names, label_palette(3))
    with pytest.raises(ValueError, match="other classes"):
        export_dataset_item(root, "c", image, labels, ["background", "cat", "bird"], label_palette(3))
    assert not (root / "images" / "c.png").exists()
    with pytest.raises(ValueError, match="do not match"):
        export_dataset_item(root, "d", image, labels[:5], names, label_palette(3))
    assert sorted(os.listdir(root / "masks")) == ["b.png", "scan 01_a.png"]


def test_export_dataset_item_refuses_values_no_class_describes(tmp_path: Path) -> None:
    labels = _labels(n=3)
    labels[0, :2] = [3, 7]
    with pytest.raises(ValueError, match=r"value\(s\) 3, 7 that no class describes.*values 0..2"):
        export_dataset_item(tmp_path, "x", np.zeros((20, 30, 3), np.uint8), labels,
                            ["background", "cat", "dog"], label_palette(3))
    assert not (tmp_path / "masks").exists() and not (tmp_path / "classes.json").exists()


def test_export_dataset_item_many_classes_uses_tiff(tmp_path: Path) -> None:
    names = [f"class {i}" for i in range(300)]
    labels = _labels(n=300, seed=5)
    paths = export_dataset_item(tmp_path, "big", np.zeros((20, 30, 3), np.uint8), labels, names,
                                label_palette(300))
    assert paths["mask"].suffix == ".tif"
    np.testing.assert_array_equal(read_label_image(paths["mask"]), labels)


def test_atomic_write_gives_normal_file_permissions(tmp_path):
    import os
    import stat

    from napari_cass.io import atomic_write

    target = tmp_path / "out.txt"
    with atomic_write(target) as tmp:
        tmp.write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    os.chmod(target, 0o640)
    with atomic_write(target, overwrite=True) as tmp:
        tmp.write_text("y")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # replacing keeps the file's mode
