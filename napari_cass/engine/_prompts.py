"""Class prompts: the syntax users type, class files and the benchmark class lists."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence, Union

__all__ = [
    "ClassPrompt",
    "ClassesLike",
    "BENCHMARK_CLASS_LISTS",
    "benchmark_classes",
    "load_class_file",
    "normalize_classes",
    "parse_classes",
    "with_background",
]

# Benchmarks whose first line is a list of stuff words standing for "background".
_BACKGROUND_FIRST = {"voc21", "coco_object"}
BENCHMARK_CLASS_LISTS = (
    "voc20", "voc21", "context59", "context60", "coco_object", "coco_stuff", "ade20k", "cityscapes",
)


@dataclass(frozen=True)
class ClassPrompt:
    """One output class: the name shown to the user and the words CLIP is asked about.

    ``queries`` holds the class name and its synonyms; the class probability is the
    maximum over them (after the softmax), as in the reference.
    """

    name: str
    queries: tuple[str, ...]

    @classmethod
    def from_words(cls, words: Sequence[str], name: str | None = None) -> ClassPrompt:
        cleaned = tuple(w.strip() for w in words if w and w.strip())
        if not cleaned:
            raise ValueError("A class needs at least one non-empty word.")
        return cls(name=(name or cleaned[0]).strip(), queries=cleaned)


ClassesLike = Union[str, Sequence[Union[str, Sequence[str], ClassPrompt]]]


def parse_classes(text: str) -> list[ClassPrompt]:
    """Parse what a user typed.

    Several lines: one class per line, synonyms separated by commas (the benchmark
    file format). One line: classes separated by commas, synonyms of one class
    separated by ``|`` (``"person | man | woman, bicycle, road"``).
    Lines starting with ``#`` are comments.
    """
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise ValueError(
            "The class list is empty: type at least one class, e.g. 'person, bicycle, road'."
        )
    if len(lines) == 1:
        items = [part for part in lines[0].split(",") if part.strip()]
        return normalize_classes([[w for w in item.split("|")] for item in items])
    return normalize_classes([[w for w in ln.replace("|", ",").split(",")] for ln in lines])


def normalize_classes(classes: ClassesLike) -> list[ClassPrompt]:
    """Turn any accepted class specification into validated :class:`ClassPrompt` s.

    Accepts a string (see :func:`parse_classes`) or a sequence whose items are a
    class name, a list of words (name first, then synonyms) or a ``ClassPrompt``.
    Raises ``ValueError`` for an empty list, empty names, or a word used twice.
    """
    if isinstance(classes, str):
        return parse_classes(classes)
    if classes is None or len(classes) == 0:
        raise ValueError(
            "The class list is empty: give at least one class, e.g. ['person', 'bicycle', 'road']."
        )
    out: list[ClassPrompt] = []
    typed: list[bool] = []
    for i, item in enumerate(classes):
        typed.append(not isinstance(item, ClassPrompt))
        if isinstance(item, ClassPrompt):
            prompt = item
        elif isinstance(item, str):
            prompt = ClassPrompt.from_words([item]) if item.strip() else None
        elif isinstance(item, Iterable):
            words = list(item)
            if not all(isinstance(w, str) for w in words):
                raise ValueError(f"Class {i + 1}: synonyms must be strings, got {words!r}.")
            prompt = ClassPrompt.from_words(words) if any(w.strip() for w in words) else None
        else:
            raise ValueError(
                f"Class {i + 1}: expected a name or a list of synonyms, got {type(item).__name__}."
            )
        if prompt is None:
            raise ValueError(f"Class {i + 1} is empty: remove it or give it a name.")
        out.append(prompt)
    _check_unique(out, typed)
    return out


def _check_unique(prompts: list[ClassPrompt], typed: list[bool]) -> None:
    # Names must be unique. Words must be too, among what a user typed: the
    # benchmark lists legitimately reuse a word (COCO-Object's background "bed").
    seen_names: dict[str, int] = {}
    for i, p in enumerate(prompts):
        key = p.name.casefold()
        if key in seen_names:
            raise ValueError(
                f"Duplicate class {p.name!r} (classes {seen_names[key] + 1} and {i + 1}): "
                "give each class a different name, or merge them as synonyms on one line."
            )
        seen_names[key] = i
    seen_words: dict[str, int] = {}
    for i, p in enumerate(prompts):
        if not typed[i]:
            continue
        for w in set(q.casefold() for q in p.queries):
            if w in seen_words and seen_words[w] != i:
                raise ValueError(
                    f"The word {w!r} is used by two classes ({prompts[seen_words[w]].name!r} "
                    f"and {p.name!r}): a word can describe only one class."
                )
            seen_words[w] = i


def with_background(classes: ClassesLike, background: str | Sequence[str] | None) -> list[ClassPrompt]:
    """The classes with a background class (class 0, "background") described by ``background``.

    ``background`` is a list of words or a string of words separated by commas or ``|``;
    ``None`` or empty returns the classes unchanged (validated). A background word that
    is also a class name or a class word is an error: the two would tie and the class
    could never win. If the classes already start with a "background" class (read from a
    ``classes.json``), giving background words too is an error, since it is unclear which
    words should describe the background.
    """
    prompts = normalize_classes(classes)
    if isinstance(background, str):
        background = [w for w in background.replace("|", ",").split(",")]
    words = [w.strip() for w in (background or []) if w and w.strip()]
    if not words:
        check_background(prompts)
        return prompts
    if prompts[0].name.strip().casefold() == "background":
        raise ValueError(
            f"The class list already has a background class (words: {', '.join(prompts[0].queries)}) "
            f"and background words were given too ({', '.join(words)}): give the background words "
            "in one place only."
        )
    out = [ClassPrompt.from_words(words, name="background"), *prompts]
    check_background(out)
    return out


def check_background(prompts: Sequence[ClassPrompt]) -> None:
    """Refuse a background class (class 0) that shares a word with another class.

    The benchmark lists are not checked with this (COCO-Object's background reuses
    "bed", as in the paper); everything a user types or loads is.
    """
    if not prompts or prompts[0].name.strip().casefold() != "background":
        for p in prompts[1:]:
            if p.name.strip().casefold() == "background":
                raise ValueError(
                    "'background' is reserved for class 0: remove that class and give the words "
                    "that describe the background as background words (--background) instead."
                )
        return
    own = {w.casefold(): w for w in prompts[0].queries}
    for p in prompts[1:]:
        if p.name.strip().casefold() == "background":
            raise ValueError("'background' can be class 0 only: remove the second 'background' class.")
        for word in (p.name, *p.queries):
            if word.casefold() in own:
                raise ValueError(
                    f"The background word {own[word.casefold()]!r} is also the class {p.name!r}: "
                    "a word can describe only one class, and the class could never win. Remove "
                    f"{own[word.casefold()]!r} from the background words, or remove the class."
                )


def load_class_file(path: str | Path) -> list[ClassPrompt]:
    """Read a class list file.

    ``.json``: a list of names or of synonym lists, ``{"classes": [...]}``, or the
    ``classes.json`` written by napari-cass (``{"0": {"name": ...}, ...}`` or
    ``{"classes": [{"id": 0, "name": ..., "synonyms": [...]}]}``). In a class table
    whose row 0 is "background", that row is label 0: with synonyms it becomes the
    background class (first prompt, named "background", its synonyms as words); without,
    it is left out, so a ``classes.json`` written by napari-cass segments the same way
    when read back (see :func:`napari_cass.io.class_words`).
    Anything else: the benchmark text format, one class per line, synonyms
    separated by commas. Files must be UTF-8; others are refused with the file named.
    """
    from ..io._classes_json import read_text_utf8

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"Class list {path} is a folder; give a text or .json file.")
    if not path.is_file():
        raise FileNotFoundError(f"Class list file not found: {path}")
    text = read_text_utf8(path)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        prompts = normalize_classes(_classes_from_json(data, path))
        check_background(prompts)
        return prompts
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise ValueError(f"{path} holds no class: write one class per line.")
    return normalize_classes([ln.split(",") for ln in lines])


def _classes_from_json(data, path: Path) -> list:
    from ..io._classes_json import class_words

    if isinstance(data, dict) and "classes" in data:
        table = data
        data = data["classes"]
    else:
        table = {}
    if isinstance(data, dict):  # {"0": {"name": ...}} or {"0": "name"}
        try:
            items = sorted(data.items(), key=lambda kv: int(kv[0]))
        except ValueError:
            raise ValueError(f"{path}: expected class indices as keys.") from None
        data = [v for _, v in items]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of classes.")
    if data and all(isinstance(item, dict) for item in data):
        rows = []
        for i, item in enumerate(data):
            name = item.get("name")
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"{path}: every class needs a 'name' (entry {i} has none).")
            synonyms = item.get("synonyms", [])
            if not isinstance(synonyms, list) or not all(isinstance(w, str) for w in synonyms):
                raise ValueError(f"{path}: the synonyms of {name!r} must be a list of words.")
            rows.append({"id": i, "name": name, "synonyms": synonyms})
        background, classes = class_words({**table, "classes": rows})
        out = [ClassPrompt.from_words(words, name=name) for name, words in classes]
        if background:
            out.insert(0, ClassPrompt.from_words(background, name="background"))
        if not out:
            raise ValueError(
                f"{path} lists only a word-less 'background' row: add at least one class."
            )
        return out
    out = []
    for item in data:
        if isinstance(item, dict):
            raise ValueError(f"{path}: mix of class objects and plain names; use one form.")
        out.append(item)
    return out


def benchmark_classes(name: str) -> list[ClassPrompt]:
    """The class list of a benchmark (``voc21``, ``context59``, ...) with its synonyms.

    For VOC21 and COCO-Object, class 0 is "background", described by 26 stuff words.
    """
    if name not in BENCHMARK_CLASS_LISTS:
        raise ValueError(
            f"Unknown class list {name!r}. Choose one of: {', '.join(BENCHMARK_CLASS_LISTS)}."
        )
    text = resources.files("napari_cass.engine").joinpath(f"class_lists/{name}.txt").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    prompts = [ClassPrompt.from_words(ln.split(",")) for ln in lines]
    if name in _BACKGROUND_FIRST:
        prompts[0] = ClassPrompt(name="background", queries=prompts[0].queries)
    return prompts
