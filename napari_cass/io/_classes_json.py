"""``classes.json``: the index -> name / colour / synonyms table written next to masks."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_write

__all__ = [
    "CLASSES_FORMAT",
    "classes_table",
    "class_words",
    "read_classes_json",
    "read_text_utf8",
    "write_classes_json",
]

CLASSES_FORMAT = "napari-cass/classes@1"


def classes_table(names: Sequence[str], colors: np.ndarray,
                  synonyms: Sequence[Sequence[str]] | None = None, *, ignore_class: int | None = None,
                  things: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Build the validated ``classes`` list (one dict per class index).

    ``ignore_class`` (a class index) gets ``"ignore": true``: annotators mark ambiguous
    regions with it, dataset PNG masks store it as 255 (VOC / mmsegmentation's ignore
    value), TIFF masks as its own index, and evaluation does not score its pixels.
    ``things`` (class indices) get ``"thing": true``: COCO export makes one annotation
    per connected region of them (instances) and one per class for the others (stuff).
    """
    names = list(names)
    for what, values in (("ignore_class", [] if ignore_class is None else [ignore_class]), ("things", things or [])):
        bad = [v for v in values if not isinstance(v, (int, np.integer)) or not 0 <= int(v) < len(names)]
        if bad:
            raise ValueError(f"{what} must be class indices 0..{len(names) - 1}, got {bad[:5]}.")
    if ignore_class is not None and things and int(ignore_class) in {int(t) for t in things}:
        raise ValueError(f"Class {ignore_class} ({names[int(ignore_class)]!r}) cannot be both the ignore class and a thing.")
    if not names:
        raise ValueError("There are no classes to write; give at least one class name.")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"Class {i} has an empty or non-text name ({name!r}).")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"Class names must be unique; repeated: {', '.join(dupes)}.")
    cols = np.asarray(colors)
    if cols.ndim != 2 or cols.shape[1] != 3 or cols.shape[0] < len(names):
        raise ValueError(
            f"Need an (n, 3) colour array with at least {len(names)} rows (one per class), "
            f"got shape {cols.shape}."
        )
    if synonyms is not None and len(synonyms) != len(names):
        raise ValueError(
            f"Got {len(synonyms)} synonym lists for {len(names)} classes; give one list per class."
        )
    table = []
    for i, name in enumerate(names):
        syn = [str(s) for s in synonyms[i]] if synonyms is not None else [name]
        colour = [int(c) for c in np.clip(cols[i], 0, 255)]
        entry = {"id": i, "name": name, "color": colour, "synonyms": syn}
        if ignore_class is not None and i == int(ignore_class):
            entry["ignore"] = True
        if things and i in {int(t) for t in things}:
            entry["thing"] = True
        table.append(entry)
    return table


def write_classes_json(path: str | os.PathLike[str], names: Sequence[str], colors: np.ndarray,
                       synonyms: Sequence[Sequence[str]] | None = None, overwrite: bool = False,
                       extra: dict[str, Any] | None = None, *, ignore_class: int | None = None,
                       things: Sequence[int] | None = None) -> Path:
    """Write the class table so a mask's pixel values can be read back as names.

    ``extra`` (method, preset, model names, ...) is stored at the top level; its keys
    may not clash with ``format`` or ``classes``. ``ignore_class`` and ``things``: see
    :func:`classes_table`.
    """
    table = classes_table(names, colors, synonyms, ignore_class=ignore_class, things=things)
    doc: dict[str, Any] = {"format": CLASSES_FORMAT, "classes": table}
    for key, value in (extra or {}).items():
        if key in doc:
            raise ValueError(f"extra may not contain the reserved key {key!r}.")
        doc[key] = value
    text = json.dumps(doc, indent=2, ensure_ascii=False, default=str)
    with atomic_write(path, overwrite=overwrite) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return Path(path)


def read_classes_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a ``classes.json``; errors say which entry is wrong."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Class file {p} does not exist.")
    try:
        doc = json.loads(read_text_utf8(p))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p} is not valid JSON ({exc}).") from exc
    if not isinstance(doc, dict) or doc.get("format") != CLASSES_FORMAT:
        raise ValueError(
            f"{p} is not a napari-cass class file: expected a JSON object with "
            f'"format": "{CLASSES_FORMAT}".'
        )
    classes = doc.get("classes")
    if not isinstance(classes, list) or not classes:
        raise ValueError(f'{p}: "classes" must be a non-empty list.')
    for i, entry in enumerate(classes):
        where = f"{p}: classes[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be an object with id, name, color and synonyms.")
        if entry.get("id") != i:
            raise ValueError(f"{where} has id {entry.get('id')!r}; ids must be 0, 1, 2, ... in order.")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where} has no name.")
        color = entry.get("color")
        if (not isinstance(color, list) or len(color) != 3
                or not all(isinstance(c, int) and 0 <= c <= 255 for c in color)):
            raise ValueError(f"{where} ({name!r}) needs a colour [r, g, b] with 0-255 integers.")
        syn = entry.setdefault("synonyms", [name])
        if not isinstance(syn, list) or not all(isinstance(s, str) for s in syn):
            raise ValueError(f"{where} ({name!r}): synonyms must be a list of strings.")
        for flag in ("ignore", "thing"):
            if not isinstance(entry.get(flag, False), bool):
                raise ValueError(f"{where} ({name!r}): {flag!r} must be true or false.")
    if sum(bool(c.get("ignore")) for c in classes) > 1:
        raise ValueError(f'{p}: more than one class is marked "ignore"; mark one at most.')
    names = [c["name"] for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(f"{p}: class names are repeated.")
    return doc


def read_text_utf8(path: str | os.PathLike[str]) -> str:
    """Read a text file as UTF-8 (a leading byte-order mark is dropped).

    A file saved in another encoding (Latin-1, Windows-1252, UTF-16...) raises
    ``ValueError`` naming the file, the first bad byte and what to do, instead of a bare
    ``UnicodeDecodeError``.
    """
    p = Path(path)
    data = p.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = data[exc.start:exc.start + 1].hex()
        line = data[:exc.start].count(b"\n") + 1
        raise ValueError(
            f"{p} is not UTF-8 text (byte 0x{bad} on line {line}); it was probably saved in "
            "another encoding such as Latin-1 or Windows-1252. Save it as UTF-8 (in most "
            "editors: Save As, Encoding: UTF-8) and try again."
        ) from None


def class_words(doc: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """What a napari-cass ``classes.json`` asks the engine: background words and classes.

    The one reading of a class table shared by the CLI (``--classes-file``) and the
    widget, so a ``classes.json`` written by either segments the same way when read back.
    Row 0 named "background" is label 0: its synonyms are the background words; without
    words (or with ``"has_background": false``) it is no class at all, only the value of
    unlabelled pixels. Every other row is a class whose words are its name followed by its
    synonyms (repeats dropped: the CLI stores the name among the synonyms, the widget does
    not). A table whose row 0 is not "background" has no background row.

    Returns
    -------
    background_words : list of str
        Empty when the table has no background class.
    classes : list of (name, words)
        In label order; ``words[0]`` is the name.
    """
    rows = sorted(doc["classes"], key=lambda c: int(c["id"]))
    background: list[str] = []
    if rows and str(rows[0]["name"]).strip().casefold() == "background":
        if doc.get("has_background", True) is not False:
            background = _unique([str(w) for w in rows[0].get("synonyms") or []])
        rows = rows[1:]
    classes = []
    for row in rows:
        name = str(row["name"]).strip()
        classes.append((name, _unique([name, *(str(w) for w in row.get("synonyms") or [])])))
    return background, classes


def _unique(words: list[str]) -> list[str]:
    out: list[str] = []
    for w in (w.strip() for w in words):
        if w and w not in out:
            out.append(w)
    return out
