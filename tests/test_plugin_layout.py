"""The dock on a 1366x768 laptop screen: every section and button reachable, nothing clipped."""

from __future__ import annotations

from qtpy.QtCore import QPoint, QRect
from qtpy.QtWidgets import QApplication, QMainWindow


def _main_window(widget) -> QMainWindow:
    windows = [w for w in QApplication.topLevelWidgets() if isinstance(w, QMainWindow) and w.isVisible()]
    return next(w for w in windows if w.isAncestorOf(widget))


def test_every_section_reachable_at_1366x768(qtbot, plugin) -> None:
    window = _main_window(plugin)
    window.showNormal()
    window.resize(1366, 768)
    qtbot.waitUntil(lambda: window.height() <= 768, timeout=5_000)
    for section in plugin.sections.values():
        section.expand(animate=False)
    qtbot.wait(50)
    assert plugin.minimumSizeHint().height() < 500
    assert plugin.height() <= 768
    area = QRect(QPoint(0, 0), window.size())
    buttons = [
        plugin.class_table.set_btn, plugin.class_table.add_btn, plugin.class_table.remove_btn,
        plugin.segment_btn, plugin.cancel_btn, plugin.undo_btn, plugin.device_combo,
        plugin.export_btn, plugin.batch_panel.open_btn, plugin.batch_panel.next_btn,
    ]
    for button in buttons:
        plugin.scroll.ensureWidgetVisible(button)
        qtbot.wait(10)
        top_left = button.mapTo(window, QPoint(0, 0))
        rect = QRect(top_left, button.size())
        viewport = plugin.scroll.viewport()
        vp = QRect(viewport.mapTo(window, QPoint(0, 0)), viewport.size())
        assert area.contains(rect) and vp.contains(rect), button.text() if hasattr(button, "text") else button
    # the class table keeps room for its rows (no buttons drawn over it)
    assert plugin.class_table.table.height() >= 120
    # an error never widens the dock
    width = plugin.width()
    plugin.errors.set_error("napari-cass download " + "x" * 500, toast=False)
    plugin.errors.details_btn.click()
    qtbot.wait(20)
    assert plugin.width() == width
