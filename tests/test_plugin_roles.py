"""Ignore class and COCO things from the dock: marked with buttons, honoured by runs and exports."""

from __future__ import annotations

import json

import numpy as np
from scipy import ndimage

from _gui_actions import click, set_classes

WAIT = 120_000


def test_ignore_and_thing_roles_from_table_to_files(qtbot, plugin, rgb_image, tmp_path) -> None:
    from pycocotools import mask as mask_utils

    from napari_cass.io import read_classes_json, read_label_image

    plugin.viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, plugin, "cat, dog, unsure")
    table = plugin.class_table
    table.table.setCurrentCell(3, 1)
    click(qtbot, table.ignore_btn)
    table.table.setCurrentCell(1, 1)
    click(qtbot, table.thing_btn)
    classes = table.label_classes()
    assert classes.roles == ["", "thing", "", "ignore"] and classes.ignore_row == 3
    assert table.table.verticalHeaderItem(3).text().endswith("⊘")
    assert [p.name for p in classes.prompts()] == ["cat", "dog"]  # never asked of the engine

    click(qtbot, plugin.segment_btn)
    qtbot.waitUntil(lambda: not plugin.is_running, timeout=WAIT)
    assert not plugin.errors.is_error, plugin.errors.message
    layer = plugin.labels_layer_for("pic")
    unsure, cat = classes.values[3], classes.values[1]
    assert not (np.asarray(layer.data) == unsure).any()  # a run never proposes it
    layer.brush_size = 5
    layer.paint((10, 10), unsure)  # the annotator marks an ambiguous spot
    painted = np.asarray(layer.data) == unsure
    assert painted.any()

    table.table.setCurrentCell(1, 1)
    click(qtbot, table.down_btn)  # reorder: roles travel with the row
    assert plugin.class_table.label_classes().roles == ["", "", "thing", "ignore"]

    paths = plugin.export_dataset(tmp_path / "ds")
    mask = read_label_image(paths["mask"])
    np.testing.assert_array_equal(mask == 255, painted)  # the ignore class is 255
    meta = read_classes_json(paths["classes"])
    assert meta.get("ignore_index") == 255
    assert [c.get("ignore", False) for c in meta["classes"]] == [False, False, False, True]
    assert [c.get("thing", False) for c in meta["classes"]] == [False, False, True, False]

    plugin.viewer.layers.selection.active = layer
    out = tmp_path / "pic.json"
    plugin.viewer.layers.save(str(out), selected=True, plugin="napari-cass")
    doc = json.loads(out.read_text())
    data = np.asarray(layer.data)
    components = ndimage.label(data == cat, structure=np.ones((3, 3)))[1]
    cat_cat = next(c["id"] for c in doc["categories"] if c["name"] == "cat")
    cat_anns = [a for a in doc["annotations"] if a["category_id"] == cat_cat]
    assert len(cat_anns) == components and components > 0  # one annotation per region
    assert all(a["iscrowd"] == 0 for a in cat_anns)
    decoded = sum(mask_utils.decode(a["segmentation"]).astype(int) for a in cat_anns)
    np.testing.assert_array_equal(decoded, (data == cat).astype(int))
    assert not any(c["name"] == "unsure" for c in doc["categories"])  # ignored, not annotated
