"""The smaller points of issue 13 item 7, through the Plugins path with real clicks.

* a 200-character server URL in "running on: …" never widens the dock;
* dataset export writes the image through the contrast limits the engine used;
* a red error goes away with the next action that works;
* NaN / infinite pixels are refused, with their count, before a run starts;
* napari's first window with the dock fits a 1366 px screen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import QPoint, QRect
from qtpy.QtWidgets import QFileDialog

from napari_cass.plugin._layer_inputs import engine_image

from _gui_actions import click, set_classes

WAIT = 120_000
#: A laptop screen's width: napari's first window with the dock must fit in it.
SCREEN_WIDTH = 1366


def _segment(qtbot, widget) -> None:
    click(qtbot, widget.segment_btn)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=WAIT)


def _inside_viewport(widget, button) -> bool:
    """True when ``button`` is drawn whole inside the dock's scroll viewport (after scrolling to it)."""
    widget.scroll.ensureWidgetVisible(button)
    viewport = widget.scroll.viewport()
    top_left = button.mapTo(viewport, QPoint(0, 0))
    return button.isVisible() and viewport.rect().contains(QRect(top_left, button.size()))


# ------------------------------------------------------------ 1. long server URL
class _BehindLongUrl:
    """The tiny local segmenter reporting the device a ``RemoteSegmenter`` reports (``server <url>``)."""

    def __init__(self, segmenter, url: str) -> None:
        self._segmenter = segmenter
        self.device = f"server {url}"

    def __getattr__(self, name: str):
        return getattr(self._segmenter, name)


def test_long_server_url_elides_and_never_widens_the_dock(qtbot, plugin, rgb_image, tiny_factory) -> None:
    url = ("http://gpu-box.imaging-facility.example.org:8765/" + "/".join(["team-cass"] * 16))[:200]
    assert len(url) == 200

    def factory(clip: str, vfm: str, method: str, preset: str, device: str):
        return _BehindLongUrl(tiny_factory(clip, vfm, method, preset, device), url)

    plugin.segmenter_factory = factory
    plugin.viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, plugin, "red, blue")
    plugin.sections["Model"].expand(animate=False)
    qtbot.wait(50)
    width = plugin.width()
    _segment(qtbot, plugin)
    assert not plugin.errors.is_error, plugin.errors.message
    label = plugin.device_label
    assert label.text() == f"running on: server {url}"  # the whole text stays readable...
    assert label.toolTip() == label.text()  # ...in the tooltip
    qtbot.wait(50)
    shown = label.fontMetrics().horizontalAdvance(label.text())
    assert label.width() < shown  # drawn elided, not at full length
    assert plugin.width() == width
    assert not plugin.scroll.horizontalScrollBar().isVisible()
    assert plugin.scroll.widget().width() <= plugin.scroll.viewport().width()
    for button in (plugin.undo_btn, plugin.class_table.save_btn, plugin.class_table.down_btn):
        assert _inside_viewport(plugin, button), button.text()


# ---------------------------------------------------------------- 2. export
def test_export_of_a_float_image_uses_the_engine_contrast(qtbot, plugin, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    rng = np.random.default_rng(7)
    faint = (rng.random((48, 64)) * 0.01).astype(np.float32)  # in [0, 0.01]: black at 0..1
    faint[0, 0], faint[-1, -1] = 0.0, 0.01  # the extremes, so the limits are exactly (0, 0.01)
    layer = plugin.viewer.add_image(faint, name="faint")
    assert tuple(layer.contrast_limits) == pytest.approx((0.0, 0.01))
    set_classes(qtbot, plugin, "cell, dish")
    _segment(qtbot, plugin)
    assert not plugin.errors.is_error, plugin.errors.message
    import napari_cass.plugin._export_panel as export_mod

    monkeypatch.setattr(export_mod.QFileDialog, "getExistingDirectory",
                        staticmethod(lambda *a, **k: str(tmp_path)))
    click(qtbot, plugin.export_btn)
    assert not plugin.errors.is_error, plugin.errors.message
    saved = np.asarray(Image.open(tmp_path / "images" / "faint.png"))
    assert saved.dtype == np.uint8 and saved.min() == 0 and saved.max() == 255
    # exactly the picture the engine was given (same function, same limits), as RGB
    expected = engine_image(faint, layer.contrast_limits, "faint")
    assert np.array_equal(saved[..., 0], expected) and np.array_equal(saved[..., 2], expected)


# ------------------------------------------------------- 3. errors go away
def test_a_run_that_works_clears_the_red_error(qtbot, plugin, rgb_image, notes: dict) -> None:
    click(qtbot, plugin.segment_btn)  # no image yet: an error
    assert plugin.errors.is_error and "No image layer" in plugin.errors.message
    assert "ff6b6b" in plugin.status_label.styleSheet()
    plugin.viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, plugin, "red, blue")
    _segment(qtbot, plugin)
    assert not plugin.errors.is_error
    assert plugin.status_label.styleSheet() == ""
    assert plugin.status_label.text().startswith("done")
    assert not plugin.errors.details_btn.isVisible() and not plugin.errors.copy_btn.isVisible()


def test_a_class_edit_that_works_clears_the_red_error(qtbot, plugin, rgb_image, notes: dict) -> None:
    plugin.viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, plugin, "red, blue")
    plugin.class_table.table.clearSelection()
    click(qtbot, plugin.class_table.remove_btn)  # no row chosen: an error
    assert plugin.errors.is_error and "Select a class row" in plugin.errors.message
    click(qtbot, plugin.class_table.add_btn)  # worked, and has nothing to report
    assert not plugin.errors.is_error
    assert plugin.status_label.styleSheet() == "" and plugin.status_label.text() == ""


# -------------------------------------------------------------- 4. NaN / inf
@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_nan_and_inf_pixels_are_refused_before_the_run(qtbot, plugin, tiny_factory, rgb: bool,
                                                       notes: dict) -> None:
    rng = np.random.default_rng(3)
    shape = (40, 50, 3) if rgb else (40, 50)
    data = rng.random(shape).astype(np.float32)
    nan_px = [(1, 2), (5, 5), (30, 40)]
    inf_px = [(10, 11), (20, 21)]
    for y, x in nan_px:
        data[y, x] = np.nan  # every channel of an RGB pixel
    if rgb:
        data[6, 7, 1] = np.nan  # one channel: still one bad pixel
        nan_px.append((6, 7))
    for (y, x), sign in zip(inf_px, (1, -1)):
        data[y, x] = sign * np.inf
    plugin.viewer.add_image(data, name="holes", rgb=rgb, contrast_limits=(0.0, 1.0))
    set_classes(qtbot, plugin, "a, b")
    click(qtbot, plugin.segment_btn)
    assert not plugin.is_running and tiny_factory.calls == []  # no run, no model built
    assert plugin.labels_layer_for("holes") is None
    message = plugin.errors.message
    assert plugin.errors.is_error
    n_bad = len(nan_px) + len(inf_px)
    assert f"{n_bad} pixel(s) (of {40 * 50:,})" in message, message
    assert f"({len(nan_px)} NaN, {len(inf_px)} infinite)" in message, message
    assert "nan_to_num" in message  # what to do
    # replacing them, as the message says, lets the run go ahead
    layer = plugin.viewer.layers["holes"]
    layer.data = np.nan_to_num(layer.data, nan=0.0, posinf=0.0, neginf=0.0)
    _segment(qtbot, plugin)
    assert not plugin.errors.is_error, plugin.errors.message
    assert plugin.labels_layer_for("holes") is not None


# ------------------------------------------------------- 5. first window width
def _main_window(widget):
    from qtpy.QtWidgets import QApplication, QMainWindow

    windows = [w for w in QApplication.topLevelWidgets() if isinstance(w, QMainWindow) and w.isVisible()]
    return next(w for w in windows if w.isAncestorOf(widget))


@pytest.mark.parametrize("dock_first", [False, True], ids=["shown-then-dock", "dock-then-shown"])
def test_first_window_with_the_dock_fits_a_1366_screen(qtbot, make_napari_viewer, tiny_factory,
                                                       dock_first: bool) -> None:
    from napari.settings import get_settings

    get_settings().application.first_time = True  # napari sizes a first window from size hints
    viewer = make_napari_viewer(show=not dock_first)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-cass", "CASS segmentation")
    widget.segmenter_factory = tiny_factory
    if dock_first:  # e.g. `napari -w napari-cass`: the dock is there before the window shows
        viewer.window.show()
    window = _main_window(widget)
    qtbot.wait(100)
    assert window.width() <= SCREEN_WIDTH, window.width()
    # narrow, yet nothing clipped: no horizontal scrollbar, every button inside the viewport
    assert not widget.scroll.horizontalScrollBar().isVisible()
    for section in widget.sections.values():
        section.expand(animate=False)
    qtbot.wait(50)
    assert widget.scroll.widget().width() <= widget.scroll.viewport().width()
    buttons = [widget.class_table.set_btn, widget.class_table.down_btn, widget.class_table.save_btn,
               widget.segment_btn, widget.cancel_btn, widget.undo_btn, widget.export_btn,
               widget.batch_panel.open_btn, widget.batch_panel.next_btn]
    for button in buttons:
        assert _inside_viewport(widget, button), button.text()


def test_a_benchmark_list_fills_the_quick_entry_box(qtbot, plugin, rgb_image) -> None:
    """Choosing a list, then Set, used to put back the classes typed before (21 removed)."""
    plugin.viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, plugin, "cat, dog")
    table = plugin.class_table
    names = [table.benchmark_combo.itemText(i) for i in range(table.benchmark_combo.count())]
    voc = next(n for n in names if "voc" in n.lower())
    table.load_benchmark(voc)
    loaded = table.label_classes()
    assert loaded.n_labels > 10 and "cat" not in table.text.toPlainText().split(", ")[:1]
    table.set_btn.click()  # Set now keeps the list: nothing removed, no question
    after = table.label_classes()
    assert after.names == loaded.names and after.synonyms == loaded.synonyms
