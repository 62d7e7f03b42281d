"""Class table edits reach the labels of the image on screen at once.

Values are class ids (see :mod:`._classes`): a reorder or rename only
recolours and renames; a removal unlabels the class's pixels after asking
when hand-painted ones would go (:attr:`CassWidget.confirm`); batch mode
refuses edits that would change the meaning of masks already saved.
"""

from __future__ import annotations


from qtpy.QtCore import QTimer

from ._classes import META_KEY, LabelClasses

__all__ = ["ClassEditsMixin"]


class ClassEditsMixin:
    """Mixed into :class:`~._widget.CassWidget`."""

    def _on_image_changed(self, _name: str) -> None:
        """The table shows the class list of the chosen image's labels layer."""
        labels = self._current_labels()
        if labels is None or META_KEY not in labels.metadata:
            return
        classes = LabelClasses.from_meta(labels.metadata[META_KEY])
        self.class_table.set_label_classes(classes, quiet=True)
        table = self.class_table.label_classes()
        self.sync.state_for(labels).classes = table
        self.sync.decorate(labels, table)

    def _on_classes_changed(self) -> None:
        """Class table edited: remap, recolour and rename the current labels at once."""
        self.errors.clear_error()  # the edit worked: an earlier error no longer stands
        labels = self._current_labels()
        if labels is None or self.is_running:
            return
        refused = self.batch.refuses(labels, self.class_table.label_classes())
        if refused:  # saved batch masks would change meaning: put the table back, touch nothing
            kept = self.sync.state_for(labels).classes or LabelClasses.from_meta(labels.metadata[META_KEY])
            # deferred: this may run inside the table's own itemChanged (the edited item must live)
            QTimer.singleShot(0, lambda: self.class_table.set_label_classes(kept, quiet=True))
            self._say("error", refused)
            return
        lost = self.sync.edits_removed(labels, self.class_table.label_classes())
        if lost:
            what = ", ".join(f"{n} px of '{name}'" for name, n in lost.items())
            if not self.confirm(f"This class edit removes classes you painted by hand: {what} in "
                                f"'{labels.name}' would become unlabelled (0), and Ctrl+Z cannot "
                                "bring them back. Remove them?"):
                kept = self.sync.state_for(labels).classes
                QTimer.singleShot(0, lambda: self.class_table.set_label_classes(kept, quiet=True))
                self.errors.set_status("class edit undone: the painted pixels are kept")
                return
        cleared = self.sync.classes_changed(labels, self.class_table.label_classes())
        if cleared:
            self.errors.set_status(f"{cleared} px of removed classes are now unlabelled (0)")
