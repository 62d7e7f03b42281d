"""Status line and error area of the dock: bounded, copyable, never resizing the dock.

The status is one short line. An error shows its first sentence; "Details"
opens a read-only, scrollable box of fixed height with the whole message (for
example the ``napari-cass download ...`` command to run), which the user can
select or copy with one click. Long words wrap or scroll inside the box, so
the dock never grows wider and the canvas keeps its size.

All notifications of the plugin go through :func:`notify` so they can be
captured in one place.

An error stays red only until the next thing that worked: every status line
(:meth:`ErrorPanel.set_status`) replaces it, and an action that has nothing to
report calls :meth:`ErrorPanel.clear_error`, so a fixed mistake never looks
unfixed.
"""

from __future__ import annotations

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

__all__ = ["ErrorPanel", "ask_yes_no", "notify"]

_DETAILS_HEIGHT = 96


def notify(kind: str, message: str) -> None:
    """A napari notification (``kind`` = "error", "warning" or "info")."""
    {"error": show_error, "warning": show_warning}.get(kind, show_info)(message)


def ask_yes_no(parent: QWidget, question: str) -> bool:
    """A Yes/No dialog (No is the default): True if the user chose Yes."""
    from qtpy.QtWidgets import QMessageBox

    buttons = QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No
    answer = QMessageBox.question(parent, "napari-cass", question, buttons,
                                  QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


def _summary(message: str, limit: int = 90) -> str:
    first = message.strip().splitlines()[0] if message.strip() else ""
    cut = first.find(": ")
    if 0 < cut < limit and len(first) > limit:
        first = first[:cut]
    return first if len(first) <= limit else first[: limit - 1] + "…"


class ErrorPanel(QWidget):
    """A one-line status plus a collapsible, copyable details box for errors."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.status = QLabel("")
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details_btn = QPushButton("Details")
        self.details_btn.setCheckable(True)
        self.details_btn.setVisible(False)
        self.details_btn.toggled.connect(self._show_details)
        self.copy_btn = QPushButton("Copy")
        self.copy_btn.setToolTip("Copy the whole message (and any command in it).")
        self.copy_btn.setVisible(False)
        self.copy_btn.clicked.connect(lambda _checked=False: self.copy())
        self.details = QPlainTextEdit()
        self.details.setReadOnly(True)
        self.details.setFixedHeight(_DETAILS_HEIGHT)
        self.details.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.details.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.details.setVisible(False)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.status, 1)
        row.addWidget(self.details_btn)
        row.addWidget(self.copy_btn)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.details)
        self.message = ""
        self.is_error = False

    def set_status(self, text: str) -> None:
        """A short progress / result line; clears a previous error."""
        self.is_error = False
        self.message = text
        self.status.setStyleSheet("")
        self.status.setText(_summary(text))
        self.status.setToolTip(text)
        self.details_btn.setChecked(False)
        self.details_btn.setVisible(False)
        self.copy_btn.setVisible(False)

    def set_error(self, message: str, toast: bool = True) -> None:
        """Show an error: summary line, Details (whole text, copyable), optional toast."""
        self.is_error = True
        self.message = message
        self.status.setStyleSheet("color: #ff6b6b;")
        self.status.setText(_summary(message))
        self.status.setToolTip(message)
        self.details.setPlainText(message)
        self.details_btn.setVisible(True)
        self.copy_btn.setVisible(True)
        if toast:
            notify("error", _summary(message, 200) + ("  (details in the CASS panel)"
                                                    if len(message) > 200 else ""))

    def clear_error(self) -> None:
        """An action succeeded without a message of its own: drop a shown error, keep a status."""
        if self.is_error:
            self.set_status("")

    def copy(self) -> None:
        QApplication.clipboard().setText(self.message)

    def _show_details(self, on: bool) -> None:
        self.details.setVisible(bool(on))
        self.details_btn.setText("Hide" if on else "Details")
