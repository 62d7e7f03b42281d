"""Class list files for the class table: napari-cass ``classes.json`` (with colours) and text.

Qt-free. Text files hold one class per line, synonyms after commas, so a class
with synonyms ("person, man, woman") stays one class when read back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._classes import BACKGROUND_NAME, LabelClasses

__all__ = ["read_class_file", "write_class_file"]


def read_class_file(path: str | Path) -> tuple[list[Any], np.ndarray | None, list[str]]:
    """``(prompts, colours or None, background words)`` of a class list file.

    A napari-cass ``classes.json`` (written by the widget or the CLI) is read through
    :func:`napari_cass.io.class_words`, the one reading the CLI's ``--classes-file``
    uses too, so the table asks the engine exactly what the CLI would: a row 0
    "background" without words is no class (only label 0), a class's name is not
    repeated among its words. Its colours are kept. Any other file goes through the
    engine's ``load_class_file``.
    """
    from napari_cass.engine import ClassPrompt, load_class_file

    path = Path(path)
    if path.suffix.lower() == ".json" and path.is_file():
        try:
            from napari_cass.io import class_words, read_classes_json

            doc = read_classes_json(path)
            background, classes = class_words(doc)
            rows = sorted(doc["classes"], key=lambda c: int(c["id"]))
            colors = [c["color"] for c in rows]
            if not rows or str(rows[0]["name"]).strip().casefold() != BACKGROUND_NAME:
                colors = [[0, 0, 0], *colors]  # a table without a background row: label 0 added
            prompts = [ClassPrompt.from_words(words, name=name) for name, words in classes]
            return prompts, np.asarray(colors, dtype=np.uint8), background
        except (ValueError, KeyError, TypeError):
            pass  # not our classes.json: fall back to the engine's loader
    return list(load_class_file(path)), None, []


def write_class_file(path: str | Path, classes: LabelClasses, overwrite: bool = False) -> Path:
    """Write ``.json`` (napari-cass classes.json) or text (one class per line)."""
    from napari_cass.io import atomic_write, write_classes_json

    path = Path(path)
    if path.suffix.lower() == ".json":
        return Path(write_classes_json(path, classes.names, classes.colors, classes.synonyms,
                                       overwrite=overwrite))
    lines = ["# napari-cass class list: one class per line, synonyms after commas"]
    lines += [", ".join([n, *s]) for n, s in zip(classes.names[1:], classes.synonyms[1:])]
    with atomic_write(path, overwrite=overwrite) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
