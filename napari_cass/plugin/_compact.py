"""Widgets that never make the dock wider than a laptop screen allows.

napari sizes its window on the first start from the docks' size hints, so one
long label or one combo sized to its longest entry ("choose for stacks…") pushes
the window past a 1366 px screen and, inside the dock, brings a horizontal
scrollbar that clips the buttons at the right. Here: a one-line label that
elides (the whole text in its tooltip) and combos sized to a few characters
(their lists still show every entry in full).
"""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox, QSizePolicy, QWidget
from superqt import QElidingLabel

__all__ = ["COMBO_CHARS", "ElidedLabel", "compact_combo"]

#: Characters a combo box asks room for; wider entries are elided in the box, not in its list.
COMBO_CHARS = 8


class ElidedLabel(QElidingLabel):
    """One line of text ending in "…" when it does not fit; the whole text is the tooltip.

    ``text()`` returns the whole text (superqt's :class:`QElidingLabel`); the label
    asks for no width of its own (``Ignored``), so a 200-character server URL never
    widens the dock.
    """

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setText(text)

    def setText(self, txt: str) -> None:  # noqa: N802 - Qt's name
        super().setText(txt)
        self.setToolTip(txt)


def compact_combo(combo: QComboBox, chars: int = COMBO_CHARS) -> QComboBox:
    """Size ``combo`` to ``chars`` characters instead of its longest entry; returns it."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)
    return combo
