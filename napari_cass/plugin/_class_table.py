"""The class list editor: a table (colour, name, synonyms) plus quick entry and files.

Row 0 is always "background" (label 0); rows 1..n are the classes the engine is
asked about, so row k is label k in the Labels layer *now*. Each row also carries
a class id that moves with the row: when rows are reordered, renamed or removed,
the plugin remaps existing label values by id (see ``_label_sync``), so a
painted class keeps its meaning. Set / Load / benchmark lists reuse the id of a
row with the same name.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QColorDialog,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._class_lists import ClassListsMixin
from ._class_roles import ROLE_DATA, ClassRolesMixin
from ._classes import BACKGROUND_NAME, LabelClasses, default_colors
from ._compact import compact_combo

__all__ = ["ClassTable"]

_COLOR, _NAME, _SYN = 0, 1, 2
_ID_ROLE = Qt.ItemDataRole.UserRole + 1
_NAME_ROLE = Qt.ItemDataRole.UserRole + 2  # the last accepted name (a bad edit goes back to it)


def _split_words(text: str) -> list[str]:
    return [w.strip() for w in text.replace("|", ",").split(",") if w.strip()]


class ClassTable(ClassRolesMixin, ClassListsMixin, QWidget):
    """Editable class list; emits ``changed`` whenever names, synonyms or colours change."""

    changed = Signal()
    #: Problems the user must see (bad file, duplicate class, ...); the widget shows them.
    error = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._updating = False
        self._next_id = 1

        self.table = QTableWidget(0, 3, self)
        self.table.setHorizontalHeaderLabels(["", "Class (label)", "Synonyms"])
        self.table.verticalHeader().setVisible(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(_COLOR, QHeaderView.ResizeMode.Fixed)
        header.setSectionResizeMode(_NAME, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(_SYN, QHeaderView.ResizeMode.Stretch)
        self.table.setColumnWidth(_COLOR, 28)
        self.table.setMinimumHeight(210)
        self.table.setToolTip(
            "Row k is label k. Click a colour swatch to change it; double-click a name or the "
            "synonyms (comma-separated) to edit. Row 0 is the background (transparent)."
        )
        self.table.cellClicked.connect(self._on_cell_clicked)
        self.table.itemChanged.connect(self._on_item_changed)

        self.add_btn = QPushButton("Add")
        self.remove_btn = QPushButton("Remove")
        self.up_btn = QPushButton("Up")
        self.down_btn = QPushButton("Down")
        self.add_btn.clicked.connect(lambda: self.add_class())
        self.remove_btn.clicked.connect(self.remove_selected)
        self.up_btn.clicked.connect(lambda: self.move_selected(-1))
        self.down_btn.clicked.connect(lambda: self.move_selected(1))
        row_btns = QHBoxLayout()
        for b in (self.add_btn, self.remove_btn, self.up_btn, self.down_btn):
            row_btns.addWidget(b)

        self.text = QPlainTextEdit()
        self.text.setPlaceholderText(
            "person, car, road   (or one class per line: name, synonym, synonym)"
        )
        self.text.setMaximumHeight(64)
        self.text.setToolTip(
            "One line: classes separated by commas, synonyms by '|' (person | man, car). "
            "Several lines: one class per line, synonyms separated by commas."
        )
        self.set_btn = QPushButton("Set")
        self.set_btn.setToolTip("Replace the table with the classes typed on the left.")
        # clicked(bool) must not reach set_from_text(text): it reads the box itself.
        self.set_btn.clicked.connect(lambda _checked=False: self.set_from_text())
        text_row = QHBoxLayout()
        text_row.addWidget(self.text, 1)
        text_row.addWidget(self.set_btn)

        self.background_edit = QLineEdit()
        self.background_edit.setPlaceholderText("none (every pixel gets a class)")
        self.background_edit.setToolTip(
            "Words describing the background (label 0), e.g. 'sky, wall, floor'. "
            "Leave empty to give every pixel one of the classes."
        )
        self.background_edit.textChanged.connect(self._on_background_changed)

        self.benchmark_combo = QComboBox()
        self.load_btn = QPushButton("Load…")
        self.save_btn = QPushButton("Save…")
        self.load_btn.setToolTip("Load a class list: classes.json (napari-cass) or a text file.")
        self.save_btn.setToolTip("Save the class list as classes.json (.json) or text (.txt).")
        self.load_btn.clicked.connect(self._load_dialog)
        self.save_btn.clicked.connect(self._save_dialog)
        self.benchmark_combo.activated.connect(self._on_benchmark_chosen)

        compact_combo(self.benchmark_combo)  # its longest list name must not widen the dock
        files = QHBoxLayout()
        files.addWidget(self.load_btn)
        files.addWidget(self.save_btn)
        grid = QGridLayout()  # one thing per row: the dock fits beside napari on a 1366 px screen
        grid.addWidget(QLabel("Background words:"), 0, 0)
        grid.addWidget(self.background_edit, 0, 1)
        grid.addWidget(self.benchmark_combo, 1, 0, 1, 2)
        grid.addLayout(files, 2, 0, 1, 2)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(text_row)
        layout.addWidget(self.table)
        layout.addLayout(row_btns)
        layout.addLayout(self._role_buttons())
        layout.addLayout(grid)

        self._fill_benchmarks()
        self._set_rows([], [], None)

    # ------------------------------------------------------------------ model
    def _set_rows(
        self,
        names: Sequence[str],
        synonyms: Sequence[Sequence[str]],
        colors: np.ndarray | None,
    ) -> None:
        by_name = {self._row_name(r).casefold(): self._row_id(r) for r in range(1, self.table.rowCount())}
        roles = {self._row_name(r).casefold(): self.role_of(r) for r in range(1, self.table.rowCount())}
        ids = [by_name.get(str(nm).strip().casefold()) or self._new_id() for nm in names]
        self._updating = True
        try:
            n = len(names) + 1
            if colors is None or len(colors) < n:
                base = default_colors(n)
                if colors is not None:
                    base[: len(colors)] = colors
                colors = base
            self.table.setRowCount(n)
            self._number_rows()
            self._fill_row(0, BACKGROUND_NAME, self.background_words(), colors[0], 0, background=True)
            for i, (name, syn) in enumerate(zip(names, synonyms), start=1):
                self._fill_row(i, name, list(syn), colors[i], ids[i - 1],
                               role=roles.get(str(name).strip().casefold(), ""))
        finally:
            self._updating = False
        self._number_rows()
        self.changed.emit()

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _row_name(self, row: int) -> str:
        item = self.table.item(row, _NAME)
        return item.text().strip() if item is not None else ""

    def _row_id(self, row: int) -> int:
        item = self.table.item(row, _NAME)
        value = item.data(_ID_ROLE) if item is not None else None
        return int(value) if value is not None else 0

    def _fill_row(
        self, row: int, name: str, synonyms: list[str], color: np.ndarray, class_id: int,
        background: bool = False, role: str = "",
    ) -> None:
        swatch = QTableWidgetItem("")
        swatch.setFlags(Qt.ItemFlag.ItemIsEnabled)
        self._paint_swatch(swatch, color)
        name_item = QTableWidgetItem(name)
        name_item.setData(_ID_ROLE, int(class_id))
        name_item.setData(_NAME_ROLE, name)
        name_item.setData(ROLE_DATA, role)
        syn_item = QTableWidgetItem(", ".join(synonyms))
        if background:
            name_item.setFlags(Qt.ItemFlag.ItemIsEnabled)
            syn_item.setFlags(Qt.ItemFlag.ItemIsEnabled)
            name_item.setToolTip("Label 0: transparent in napari. Its words are set below.")
            syn_item.setToolTip("Edit in 'Background words' below.")
            swatch.setToolTip("Label 0 is drawn transparent.")
        else:
            swatch.setToolTip("Click to pick a colour.")
        self.table.setItem(row, _COLOR, swatch)
        self.table.setItem(row, _NAME, name_item)
        self.table.setItem(row, _SYN, syn_item)

    @staticmethod
    def _paint_swatch(item: QTableWidgetItem, color: np.ndarray) -> None:
        r, g, b = (int(c) for c in color[:3])
        item.setBackground(QColor(r, g, b))
        item.setData(Qt.ItemDataRole.UserRole, (r, g, b))

    # ----------------------------------------------------------------- public
    def n_classes(self) -> int:
        """Number of classes (rows 1..n)."""
        return max(self.table.rowCount() - 1, 0)

    def background_words(self) -> list[str]:
        return _split_words(self.background_edit.text())

    def label_classes(self) -> LabelClasses:
        """The table as a :class:`LabelClasses` (label 0 = background)."""
        names, synonyms, colors = [], [], []
        ids = [self._row_id(r) for r in range(self.table.rowCount())]
        for row in range(self.table.rowCount()):
            name_item = self.table.item(row, _NAME)
            names.append(name_item.text().strip() if name_item else "")
            syn_item = self.table.item(row, _SYN)
            synonyms.append(_split_words(syn_item.text()) if syn_item and row else [])
            sw = self.table.item(row, _COLOR)
            colors.append(sw.data(Qt.ItemDataRole.UserRole) if sw else (0, 0, 0))
        bg = self.background_words()
        synonyms[0] = bg
        roles = [self.role_of(r) for r in range(self.table.rowCount())]
        return LabelClasses(names, np.asarray(colors, dtype=np.uint8), synonyms, bg, ids, roles)

    def set_label_classes(self, classes: LabelClasses, quiet: bool = False) -> None:
        """Show ``classes`` (a layer's class list), keeping its ids when it has them.

        ``quiet`` fills the table without emitting ``changed`` (nothing to remap:
        the table follows the layer, not the other way round).
        """
        self.background_edit.blockSignals(True)
        self.background_edit.setText(", ".join(classes.background_words))
        self.background_edit.blockSignals(False)
        ids = list(classes.ids) if len(classes.ids) == classes.n_labels else []
        self._updating = True
        try:
            self.table.setRowCount(classes.n_labels)
            self._number_rows()
            for row in range(classes.n_labels):
                cid = ids[row] if ids else (0 if row == 0 else self._new_id())
                self._next_id = max(self._next_id, cid + 1)
                words = classes.background_words if row == 0 else classes.synonyms[row]
                self._fill_row(row, classes.names[row], list(words), classes.colors[row], cid,
                               background=row == 0, role=classes.roles[row])
        finally:
            self._updating = False
        self._number_rows()
        self.sync_text()
        if not quiet:
            self.changed.emit()

    def set_classes(self, prompts: Sequence, colors: np.ndarray | None = None) -> None:
        """Fill the table from engine ``ClassPrompt`` s.

        A first class named "background" becomes row 0 (its words become the
        background words); ``colors`` (if given) are per label, row 0 first.
        """
        prompts = list(prompts)
        if prompts and prompts[0].name.strip().casefold() == BACKGROUND_NAME:
            words = [q for q in prompts[0].queries]
            self.background_edit.blockSignals(True)
            self.background_edit.setText(", ".join(words))
            self.background_edit.blockSignals(False)
            prompts = prompts[1:]
        names = [p.name for p in prompts]
        synonyms = [[q for q in p.queries if q != p.name] for p in prompts]
        self._set_rows(names, synonyms, colors)

    def set_from_text(self, text: str | None = None) -> bool:
        """Parse the quick-entry text (or ``text``) into the table; False + error on bad input."""
        from napari_cass.engine import parse_classes

        if text is None:
            text = self.text.toPlainText()
        else:
            self.text.setPlainText(text)
        try:
            prompts = parse_classes(text)
        except ValueError as err:
            self.error.emit(str(err))
            return False
        self.set_classes(prompts)
        return True

    def add_class(self, name: str | None = None, synonyms: Sequence[str] = ()) -> int:
        """Append a class row (a fresh unique name if none is given); returns its label."""
        existing = {self.table.item(r, _NAME).text().casefold() for r in range(self.table.rowCount())}
        if name is None:
            k = self.table.rowCount()
            name = f"class {k}"
            while name.casefold() in existing:
                k += 1
                name = f"class {k}"
        row = self.table.rowCount()
        self._updating = True
        try:
            self.table.insertRow(row)
            self._fill_row(row, name, list(synonyms), default_colors(row + 1)[row], self._new_id())
        finally:
            self._updating = False
        self._number_rows()
        self.table.setCurrentCell(row, _NAME)
        self.changed.emit()
        return row

    def remove_selected(self) -> None:
        row = self.table.currentRow()
        if row <= 0:
            self.error.emit("Select a class row to remove (the background row stays).")
            return
        self.table.removeRow(row)
        self._number_rows()
        self.changed.emit()

    def move_selected(self, step: int) -> None:
        """Move the selected class up (-1) or down (+1); row 0 stays the background."""
        row = self.table.currentRow()
        target = row + step
        if row <= 0 or target <= 0 or target >= self.table.rowCount():
            return
        self._updating = True
        try:
            for col in range(3):
                a = self.table.takeItem(row, col)
                b = self.table.takeItem(target, col)
                self.table.setItem(row, col, b)
                self.table.setItem(target, col, a)
        finally:
            self._updating = False
        self.table.setCurrentCell(target, _NAME)
        self._number_rows()
        self.changed.emit()

    def set_color(self, row: int, rgb: Sequence[int]) -> None:
        item = self.table.item(row, _COLOR)
        if item is not None and row > 0:
            self._paint_swatch(item, np.asarray(rgb))
            self.changed.emit()

    # ----------------------------------------------------------------- events
    def _on_cell_clicked(self, row: int, col: int) -> None:
        if col != _COLOR or row == 0:
            return
        current = self.table.item(row, _COLOR).data(Qt.ItemDataRole.UserRole)
        color = QColorDialog.getColor(QColor(*current), self, f"Colour of label {row}")
        if color.isValid():
            self.set_color(row, (color.red(), color.green(), color.blue()))

    def _on_item_changed(self, item: QTableWidgetItem) -> None:
        if self._updating:
            return
        if item.column() == _NAME and item.row() > 0 and not self._accept_name(item):
            return
        self.changed.emit()

    def _accept_name(self, item: QTableWidgetItem) -> bool:
        """A typed class name: refuse (and put back) an empty, reserved or duplicate one."""
        name, row = item.text().strip(), item.row()
        others = {self._row_name(r).casefold() for r in range(1, self.table.rowCount()) if r != row}
        problem = (
            "a class needs a name" if not name
            else f"'{name}' is reserved for label 0 (type background words below)"
            if name.casefold() == BACKGROUND_NAME
            else f"'{name}' is already a class (use Synonyms for other words of one class)"
            if name.casefold() in others else ""
        )
        self._updating = True
        try:
            if problem:
                item.setText(str(item.data(_NAME_ROLE) or ""))
            else:
                item.setData(_NAME_ROLE, name)
        finally:
            self._updating = False
        if problem:
            self.error.emit(f"Name of label {row} not changed: {problem}.")
        return not problem

    def _on_background_changed(self, text: str) -> None:
        item = self.table.item(0, _SYN)
        if item is not None:
            self._updating = True
            item.setText(", ".join(_split_words(text)))
            self._updating = False
        self.changed.emit()
