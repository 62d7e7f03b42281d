"""Class roles in the table: the ignore class and COCO "things".

* **Ignore** marks the class annotators paint over ambiguous regions. The engine
  is never asked about it (a run never proposes it), dataset and PNG exports write
  it as 255 (what VOC and mmsegmentation ignore), ``classes.json`` says
  ``"ignore": true``, and ``napari-cass eval`` does not score it.
* **Thing** marks a countable class: COCO exports give one annotation per
  connected region instead of one per class.

Mixed into :class:`~._class_table.ClassTable`; a row's role travels with its name
item, so reordering keeps it, and the row header shows it (``⊘`` ignore, ``◆`` thing).
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHBoxLayout, QPushButton

__all__ = ["ROLE_DATA", "ClassRolesMixin"]

#: Where a row's role lives (on its name item).
ROLE_DATA = Qt.ItemDataRole.UserRole + 3
_MARK = {"ignore": " ⊘", "thing": " ◆"}


class ClassRolesMixin:
    """The Ignore / Thing buttons and the row roles of :class:`ClassTable`."""

    def _role_buttons(self) -> QHBoxLayout:
        self.ignore_btn = QPushButton("Ignore ⊘")
        self.ignore_btn.setToolTip(
            "Make the selected class the ignore class (ambiguous regions you paint by hand): "
            "never proposed by a run, exported as 255. Click again to undo.")
        self.thing_btn = QPushButton("Thing ◆")
        self.thing_btn.setToolTip(
            "Mark the selected class as countable: COCO exports give one annotation per "
            "connected region. Click again to undo.")
        self.ignore_btn.clicked.connect(lambda _checked=False: self.toggle_role("ignore"))
        self.thing_btn.clicked.connect(lambda _checked=False: self.toggle_role("thing"))
        row = QHBoxLayout()
        row.addWidget(self.ignore_btn)
        row.addWidget(self.thing_btn)
        return row

    def role_of(self, row: int) -> str:
        item = self.table.item(row, 1)
        value = item.data(ROLE_DATA) if item is not None and row else None
        return str(value) if value in ("ignore", "thing") else ""

    def toggle_role(self, role: str, row: int | None = None) -> bool:
        """Give the selected row (or ``row``) ``role``, or take it away if it has it."""
        row = self.table.currentRow() if row is None else row
        if row <= 0 or row >= self.table.rowCount():
            self.error.emit("Select a class row first (the background cannot be ignored or a thing).")
            return False
        new = "" if self.role_of(row) == role else role
        self._updating = True
        try:
            if new == "ignore":  # one ignore class at most
                for other in range(1, self.table.rowCount()):
                    if self.role_of(other) == "ignore":
                        self.table.item(other, 1).setData(ROLE_DATA, "")
            self.table.item(row, 1).setData(ROLE_DATA, new)
        finally:
            self._updating = False
        self._number_rows()
        self.changed.emit()
        return True

    def _number_rows(self) -> None:
        """Row headers show the label's row (0 = background) and its role mark."""
        self.table.setVerticalHeaderLabels(
            [f"{k}{_MARK.get(self.role_of(k), '')}" for k in range(self.table.rowCount())])
