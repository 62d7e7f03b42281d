"""Exports ready to train on: an ignore class (255 in PNG masks, its own value in TIFF,
recorded in classes.json, skipped by eval) and COCO instances for "thing" classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from napari_cass.io import export_dataset_item, label_palette, labels_to_coco, read_classes_json, read_label_image


def _labels(shape=(40, 60), n=4, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, n, shape)
    lab[5:15, 5:20] = 2  # a block of the ignore class in every test below
    return lab


def test_png_dataset_writes_the_ignore_class_as_255(tmp_path):
    names = ["background", "cat", "unsure", "dog"]
    lab = _labels()
    image = np.zeros((*lab.shape, 3), np.uint8)
    colours = label_palette(len(names))
    paths = export_dataset_item(tmp_path, "a", image, lab, names, colours, ignore_class=2, things=[1, 3])
    assert paths["mask"].suffix == ".png"
    mask = read_label_image(paths["mask"])
    assert np.array_equal(mask, np.where(lab == 2, 255, lab))
    doc = read_classes_json(paths["classes"])
    assert doc["ignore_index"] == 255
    assert [c.get("ignore", False) for c in doc["classes"]] == [False, False, True, False]
    assert [c.get("thing", False) for c in doc["classes"]] == [False, True, False, True]
    from PIL import Image

    with Image.open(paths["mask"]) as im:  # viewers show 255 in the ignore class's colour
        assert list(im.getpalette()[255 * 3 : 256 * 3]) == [int(c) for c in colours[2]]
    # a second item with another ignore class would make the masks mean something else
    with pytest.raises(ValueError, match="ignore"):
        export_dataset_item(tmp_path, "b", image, lab, names, colours, ignore_class=1)


def test_tiff_dataset_keeps_the_ignore_class_value(tmp_path):
    names = [f"class {i}" for i in range(300)]  # more than a PNG holds: uint16 TIFF
    lab = _labels(n=300, seed=1)
    paths = export_dataset_item(tmp_path, "a", np.zeros((*lab.shape, 3), np.uint8), lab, names,
                                label_palette(300), ignore_class=2)
    assert paths["mask"].suffix == ".tif"
    assert np.array_equal(read_label_image(paths["mask"]), lab)
    doc = read_classes_json(paths["classes"])
    assert doc["ignore_index"] == 2 and doc["classes"][2]["ignore"] is True


@pytest.mark.parametrize("n_classes", [5, 300])
def test_eval_skips_the_ignore_class(tmp_path, n_classes):
    from napari_cass.evaluation import FolderDataset

    names = ["background"] + [f"thing {i}" for i in range(1, n_classes)]
    lab = _labels(n=n_classes, seed=2)
    export_dataset_item(tmp_path, "a", np.zeros((*lab.shape, 3), np.uint8), lab, names,
                        label_palette(n_classes), ignore_class=2)
    ds = FolderDataset(tmp_path)
    assert ds.ignore_class == 2
    assert "thing 2" not in ds.class_names and len(ds.class_names) == n_classes - 2  # unlabelled 0 dropped too
    _, _, gt = ds[0]
    ign = ds.ignore_index
    assert (gt[lab == 2] == ign).all() and (gt[lab == 0] == ign).all()
    # the other classes keep their order: value v > 2 is class v - 2 (0 and the ignore class gone)
    for v in (1, 3, n_classes - 1):
        assert (gt[lab == v] == (v - 1 if v < 2 else v - 2)).all()


def test_two_ignore_classes_are_refused(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"format": "napari-cass/classes@1", "classes": [
        {"id": 0, "name": "a", "color": [0, 0, 0], "ignore": True},
        {"id": 1, "name": "b", "color": [1, 1, 1], "ignore": True}]}))
    with pytest.raises(ValueError, match="ignore"):
        read_classes_json(path)


def test_coco_things_are_instances_and_decode_exactly(tmp_path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    lab = np.zeros((50, 70), np.int32)
    lab[2:10, 2:12] = 1  # three cars, two touching only at a corner (one object, 8-connected)
    lab[20:30, 30:40] = 1
    lab[30:35, 40:45] = 1
    lab[40:48, 60:68] = 1
    lab[:, 50:52] = 2  # a road in two pieces: stuff, one annotation
    lab[0:5, 55:70] = 2
    lab[45:50, 0:5] = 3  # the ignore class
    names = ["background", "car", "road", "unsure"]
    doc = labels_to_coco(lab, names, image_id=7, file_name="a.png", ignore_index=[0, 3], things=[1])
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(doc))
    coco = COCO(str(path))
    cars = coco.loadAnns(coco.getAnnIds(imgIds=[7], catIds=[2]))
    roads = coco.loadAnns(coco.getAnnIds(imgIds=[7], catIds=[3]))
    assert len(cars) == 3 and len(roads) == 1 and not coco.getAnnIds(catIds=[4])
    components, count = ndimage.label(lab == 1, structure=np.ones((3, 3), bool))
    assert count == 3
    expected = {tuple(np.flatnonzero(components == r)) for r in range(1, count + 1)}
    got = set()
    for ann in cars:
        m = coco.annToMask(ann).astype(bool)
        got.add(tuple(np.flatnonzero(m)))
        assert ann["iscrowd"] == 0 and ann["area"] == m.sum() == mask_utils.area(ann["segmentation"])
        ys, xs = np.nonzero(m)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert got == expected  # every instance decodes to exactly its component
    assert np.array_equal(coco.annToMask(roads[0]).astype(bool), lab == 2)
    assert {c["name"]: c["isthing"] for c in coco.loadCats(coco.getCatIds())} == {"car": 1, "road": 0}
    with pytest.raises(ValueError, match="rle"):
        labels_to_coco(lab, names, 7, "a.png", mode="polygon", things=[1])
