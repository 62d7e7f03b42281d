"""What a user does with the dock, as Qt input events (shared by the plugin tests)."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt


def click(qtbot: Any, button: Any) -> None:
    """A left click on a real button."""
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def set_classes(qtbot: Any, widget: Any, text: str) -> None:
    """Type into the quick-entry box and press Set, as a user does."""
    box = widget.class_table.text
    box.clear()
    qtbot.keyClicks(box, text)
    click(qtbot, widget.class_table.set_btn)
