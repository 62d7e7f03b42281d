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

    A napari-cass ``classes.json`` keeps its colours and background words; any
    other file goes through the engine's ``load_class_file``.
    """
    from napari_cass.engine import ClassPrompt, load_class_file

    path = Path(path)
    if path.suffix.lower() == ".json":
        try:
            from napari_cass.io import read_classes_json

            data = read_classes_json(path)
            entries = sorted(data["classes"], key=lambda c: int(c["id"]))
            background: list[str] = []
            if entries and str(entries[0]["name"]).casefold() == BACKGROUND_NAME:
                background = [str(w) for w in entries[0].get("synonyms", [])]
            else:  # a list without a background row: prepend one
                entries = [{"name": BACKGROUND_NAME, "color": [0, 0, 0]}, *entries]
            prompts = [
                ClassPrompt.from_words([c["name"], *c.get("synonyms", [])], name=c["name"])
                for c in entries[1:]
            ]
            colors = np.asarray([c["color"] for c in entries], dtype=np.uint8)
            return prompts, colors, background
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
