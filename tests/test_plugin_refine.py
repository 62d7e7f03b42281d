"""The "Refine boundaries" check box: PAMR through the Plugins path, remembered."""

from __future__ import annotations

import json

import numpy as np

from _gui_actions import click, set_classes

WAIT = 120_000


def test_refine_boundaries_runs_pamr_and_is_remembered(qtbot, plugin, rgb_image, make_napari_viewer,
                                                        tiny_factory) -> None:
    from conftest import open_plugin

    from napari_cass.plugin._settings import settings_path

    plugin.viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, plugin, "cat, dog, grass")
    plugin.refine_check.setChecked(True)
    click(qtbot, plugin.segment_btn)
    qtbot.waitUntil(lambda: not plugin.is_running, timeout=WAIT)
    assert not plugin.errors.is_error, plugin.errors.message
    classes = plugin.class_table.label_classes()
    refined = plugin.segmenter.segment(rgb_image, classes.prompts(), refine="pamr")
    plain = plugin.segmenter.segment(rgb_image, classes.prompts(), refine="none")
    layer = plugin.labels_layer_for("pic")
    lut = classes.rows_to_values(np.uint8)
    np.testing.assert_array_equal(layer.data, lut[refined.mask(np.int64)])
    assert not np.array_equal(refined.labels, plain.labels)  # the refinement did something
    assert layer.metadata["napari_cass"]["refine"] == "pamr"
    assert json.loads(settings_path().read_text())["refine_boundaries"] is True

    viewer = make_napari_viewer(show=True)
    _dock, w2 = open_plugin(viewer, tiny_factory)
    assert w2.refine_check.isChecked()
