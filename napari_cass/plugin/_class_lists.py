"""The class table's lists: benchmark class lists, class files, and the quick-entry text.

Mixed into :class:`~._class_table.ClassTable` (one idea per module): loading a list
or a file fills the table *and* the quick-entry box, so pressing Set afterwards keeps
what was loaded.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from qtpy.QtWidgets import QFileDialog

from ._class_files import read_class_file, write_class_file
from ._classes import BACKGROUND_NAME

__all__ = ["ClassListsMixin"]

#: The benchmark combo's first entry (not a list).
CHOOSE_LIST = "Benchmark class list…"


class ClassListsMixin:
    """Benchmark lists, class files and the quick-entry text of :class:`ClassTable`."""

    def _fill_benchmarks(self) -> None:
        from napari_cass.engine import BENCHMARK_CLASS_LISTS

        self.benchmark_combo.addItem(CHOOSE_LIST)
        for name in BENCHMARK_CLASS_LISTS:
            self.benchmark_combo.addItem(name)
        self.benchmark_combo.setToolTip("Fill the table with a benchmark's classes and synonyms.")

    def load_benchmark(self, name: str) -> None:
        from napari_cass.engine import benchmark_classes

        if name not in ("", CHOOSE_LIST):
            prompts = benchmark_classes(name)
            if prompts and prompts[0].name.casefold() == BACKGROUND_NAME:
                # COCO-Object's background reuses class words ("bed"): the evaluation keeps
                # them (as the paper), an annotator's run would refuse them, so drop them here.
                taken = {w.casefold() for p in prompts[1:] for w in (p.name, *p.queries)}
                words = tuple(w for w in prompts[0].queries if w.casefold() not in taken)
                prompts = [replace(prompts[0], queries=words), *prompts[1:]]
            self.background_edit.setText("")
            self.set_classes(prompts)
            self.sync_text()  # else Set would put back the classes typed before the list

    def sync_text(self) -> None:
        """Show the table in the quick-entry box (one line: ``a | synonym, b, c``).

        After a list, a file or another image's classes fill the table, pressing
        Set must not bring back the classes typed earlier.
        """
        lc = self.label_classes()
        self.text.setPlainText(", ".join(" | ".join([n, *s]) for n, s in zip(lc.names[1:], lc.synonyms[1:])))

    def classes_text(self) -> str:
        """The table in the one-class-per-line text format (for settings and .txt files)."""
        lc = self.label_classes()
        return "\n".join(", ".join([n, *s]) for n, s in zip(lc.names[1:], lc.synonyms[1:]))

    def load_file(self, path: str | Path) -> None:
        """Load classes.json (with colours) or any file ``load_class_file`` reads."""
        prompts, colors, background = read_class_file(path)
        self.background_edit.setText(", ".join(background))
        self.set_classes(prompts, colors)
        self.sync_text()

    def save_file(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write ``.json`` (napari-cass classes.json) or text (one class per line)."""
        return write_class_file(path, self.label_classes(), overwrite=overwrite)

    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Load class list", "", "Class lists (*.json *.txt);;All files (*)"
        )
        if path:
            try:
                self.load_file(path)
            except (ValueError, OSError) as err:
                self.error.emit(str(err))

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save class list", "classes.json", "classes.json (*.json);;Text (*.txt)"
        )
        if path:
            try:  # the save dialog already asked before replacing an existing file
                self.save_file(path, overwrite=True)
            except (ValueError, OSError) as err:
                self.error.emit(str(err))

    def _on_benchmark_chosen(self, index: int) -> None:
        name = self.benchmark_combo.itemText(index)
        self.benchmark_combo.setCurrentIndex(0)
        try:
            self.load_benchmark(name)
        except ValueError as err:
            self.error.emit(str(err))
