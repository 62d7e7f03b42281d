"""Between the dock's controls and :class:`WidgetSettings` (what is remembered).

The class list is stored one row per class (``class_rows``): a class with
synonyms ("person | man | woman") is restored as one class.
"""

from __future__ import annotations

from typing import Any

from ._classes import LabelClasses
from ._settings import WidgetSettings

__all__ = ["apply_settings", "settings_of"]


def apply_settings(widget: Any, s: WidgetSettings) -> None:
    """Put remembered choices into the dock's controls."""
    for combo, value in (
        (widget.method_combo, s.method), (widget.preset_combo, s.preset),
        (widget.clip_combo, s.clip), (widget.vfm_combo, s.vfm), (widget.device_combo, s.device),
        (widget.stack_combo, s.stack_mode),
    ):
        idx = combo.findText(value)
        if idx >= 0:
            combo.setCurrentIndex(idx)
    widget.confidence_check.setChecked(s.show_confidence)
    widget.refine_check.setChecked(s.refine_boundaries)
    server = widget.model.server
    server.url_edit.setText(s.server_url)
    server.token_file_edit.setText(s.server_token_file)
    if s.server_token and not server.token_edit.text():  # this session's token wins
        server.token_edit.setText(s.server_token)
    widget.class_table.background_edit.setText(s.background)
    rows = [r for r in s.class_rows if isinstance(r, list) and r and all(isinstance(w, str) for w in r)]
    if rows:  # one row per class: a class with synonyms stays one class
        words = widget.class_table.background_words()
        widget.class_table.set_label_classes(
            LabelClasses.from_names([r[0] for r in rows], [r[1:] for r in rows], words))
    elif s.classes_text.strip():
        widget.class_table.set_from_text(s.classes_text)


def settings_of(widget: Any) -> WidgetSettings:
    """The dock's current choices, to remember for the next session."""
    lc = widget.class_table.label_classes()
    clip, vfm, method, preset, device = widget.model.key()
    return WidgetSettings(
        method=method, preset=preset, clip=clip, vfm=vfm, device=device,
        classes_text=widget.class_table.classes_text(),
        class_rows=[[n, *syn] for n, syn in zip(lc.names[1:], lc.synonyms[1:])],
        background=widget.class_table.background_edit.text(),
        stack_mode=widget.stack_combo.currentText(),
        show_confidence=widget.confidence_check.isChecked(),
        refine_boundaries=widget.refine_check.isChecked(),
        server_url=widget.model.server.url_edit.text().strip(),
        server_token_file=widget.model.server.token_file_edit.text().strip(),
        server_token=widget.model.server.token_edit.text().strip(),  # saved only if private
    )
