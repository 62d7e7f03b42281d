"""Class lists as the plugin sees them: row k of the table, label value ``ids[k]``.

A class's label value is its id, stable for the life of a layer: reordering
rows changes the table order, not pixel values; renaming touches no pixel; a
removed class's value is never reused by the same table. Files are written
with compact values (row k = label k): :meth:`LabelClasses.to_rows`.

Qt-free helpers shared by the class table, the widget, the writers and batch mode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "BACKGROUND_NAME",
    "META_KEY",
    "LabelClasses",
    "classes_from_layer_meta",
    "default_colors",
]

BACKGROUND_NAME = "background"
META_KEY = "napari_cass"


def default_colors(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 colours for labels ``0..n-1`` (the shared VOC-style palette)."""
    from napari_cass.io import label_palette

    return np.asarray(label_palette(max(int(n), 1)), dtype=np.uint8)[:n]


@dataclass
class LabelClasses:
    """Names, colours and synonyms of labels ``0..n-1`` (label 0 is always "background").

    ``background_words`` are the words that describe label 0 to the engine; when
    empty, the engine gets no background class and label 0 only holds pixels the
    user erased or left unlabelled.

    ``ids`` give each class an identity that survives reordering and renaming
    (label 0 has id 0), and are the class's label value in a layer (a painted
    "dog" stays "dog" whatever the table does). Empty when unknown (a plain
    layer, or a file): values are then the rows.
    """

    names: list[str]
    colors: np.ndarray
    synonyms: list[list[str]] = field(default_factory=list)
    background_words: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    #: Per row: "" (a class the engine labels), "ignore" (ambiguous regions, painted by
    #: hand, never asked of the engine; 255 in PNG masks) or "thing" (COCO: one
    #: annotation per connected region). At most one row is "ignore".
    roles: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.colors = np.asarray(self.colors, dtype=np.uint8).reshape(-1, 3)
        if not self.synonyms:
            self.synonyms = [[] for _ in self.names]
        self.ids = [int(i) for i in self.ids]
        self.roles = [str(r) if r in ("ignore", "thing") else "" for r in self.roles] or [""] * len(self.names)
        if len(self.roles) != len(self.names) or self.roles[0] or self.roles.count("ignore") > 1:
            raise ValueError("Class roles: one per class, none for the background, one 'ignore' at most.")
        if self.ids and len(self.ids) != len(self.names):
            raise ValueError(f"{len(self.ids)} class ids for {len(self.names)} classes.")
        if not (len(self.names) == len(self.colors) == len(self.synonyms)):
            raise ValueError(
                f"Class list is inconsistent: {len(self.names)} names, {len(self.colors)} colours, "
                f"{len(self.synonyms)} synonym lists."
            )
        if not self.names or self.names[0] != BACKGROUND_NAME:
            raise ValueError("Label 0 must be named 'background'.")

    @property
    def n_labels(self) -> int:
        return len(self.names)

    def prompts(self) -> list[Any]:
        """The engine's class prompts for labels ``1..n-1``.

        Raises ``ValueError`` (with what to do) when there are none, a class is named
        "background", or a background word is also a class or a class's word.
        """
        from napari_cass.engine import ClassPrompt, normalize_classes

        items = [  # the ignore class is painted by hand: the engine never proposes it
            ClassPrompt.from_words([name, *syn], name=name)
            for name, syn, role in zip(self.names[1:], self.synonyms[1:], self.roles[1:])
            if role != "ignore"
        ]
        for name in self.names[1:]:
            if name.strip().casefold() == BACKGROUND_NAME:
                raise ValueError(
                    "'background' is reserved for label 0: remove that class and type the "
                    "words that describe the background into 'Background words' instead."
                )
        if not items:
            raise ValueError(
                "The class list is empty: add at least one class (e.g. type "
                "'person, car, road' and press Set)."
            )
        prompts = normalize_classes(items)
        if self.background_words:
            from napari_cass.engine import with_background

            # A background word that is also a class (or one of its words) would tie with
            # it: refused with the word and what to do (the engine itself accepts it, for
            # the benchmark lists that reuse words, e.g. COCO-Object's "bed").
            with_background(prompts, self.background_words)
        return prompts

    def background(self) -> list[str] | None:
        """The background words for the engine, or None for no background class."""
        return list(self.background_words) or None

    @property
    def values(self) -> list[int]:
        """The label value of each row (its id; the row itself when ids are unknown)."""
        return list(self.ids) if self.ids else list(range(self.n_labels))

    @property
    def max_value(self) -> int:
        return max(self.values) if self.names else 0

    def name_of(self, value: int) -> str | None:
        """The class name of a label value (None: no class has it)."""
        values = self.values
        return self.names[values.index(int(value))] if int(value) in values else None

    def rows_to_values(self, dtype: Any = np.uint16) -> np.ndarray:
        """Lookup table row -> label value (the engine answers in rows)."""
        return np.asarray(self.values, dtype=dtype)

    def to_rows(self, data: np.ndarray) -> np.ndarray:
        """``data`` (label values) with compact values: row k of the table = k.

        What files hold (PNG, TIFF, COCO, classes.json all count rows).
        Raises ``ValueError`` naming a label value no class has.
        """
        data = np.asarray(data)
        values = self.values
        if values == list(range(self.n_labels)):
            top = int(data.max()) if data.size else 0
            if top >= self.n_labels:
                raise ValueError(
                    f"The layer holds label {top}, but its class list has only labels "
                    f"0..{self.n_labels - 1}: add classes in the CASS widget or erase those pixels."
                )
            return data
        present = np.unique(data) if data.size else np.zeros(0, data.dtype)
        unknown = [int(v) for v in present if int(v) not in values]
        if unknown:
            raise ValueError(
                f"The layer holds label {unknown[0]}, which no class in its class list has: add "
                "the class in the CASS widget or erase those pixels."
            )
        lut = np.zeros(max(values) + 1, dtype=np.uint8 if self.n_labels <= 256 else np.uint16)
        lut[np.asarray(values)] = np.arange(self.n_labels)
        return lut[data]

    @property
    def ignore_row(self) -> int | None:
        """The row of the ignore class, or None."""
        return self.roles.index("ignore") if "ignore" in self.roles else None

    @property
    def thing_rows(self) -> list[int]:
        return [k for k, r in enumerate(self.roles) if r == "thing"]

    def engine_values(self, dtype: Any = np.uint16) -> np.ndarray:
        """Label value of each engine answer: row 0, then the classes it is asked about."""
        return np.asarray([v for v, r in zip(self.values, self.roles) if r != "ignore"], dtype=dtype)

    def in_row_order(self) -> LabelClasses:
        """The same classes with ids dropped: what a file written by :meth:`to_rows` holds."""
        return LabelClasses(list(self.names), self.colors.copy(),
                            [list(s) for s in self.synonyms], list(self.background_words),
                            roles=list(self.roles))

    def color_dict(self) -> dict[int | None, np.ndarray]:
        """Label value -> RGBA for napari's DirectLabelColormap.

        Label 0 is transparent; a label without a class (painted with a number
        beyond the table) is drawn grey so it is never invisible.
        """
        out: dict[int | None, np.ndarray] = {
            None: np.array([0.5, 0.5, 0.5, 1.0], dtype=np.float32),
            0: np.zeros(4, dtype=np.float32),
        }
        for k, value in enumerate(self.values):
            if k:
                out[value] = np.array([*(self.colors[k] / 255.0), 1.0], dtype=np.float32)
        return out

    def features(self) -> dict[str, Any]:
        """Columns for ``layer.features`` so napari shows the class name on hover."""
        return {"index": np.asarray(self.values), "class": list(self.names)}

    def to_meta(self, **extra: Any) -> dict[str, Any]:
        """JSON-friendly dict stored in ``layer.metadata['napari_cass']``."""
        return {
            "names": list(self.names),
            "colors": self.colors.astype(int).tolist(),
            "synonyms": [list(s) for s in self.synonyms],
            "background_words": list(self.background_words),
            "class_ids": list(self.ids),
            "roles": list(self.roles),
            **extra,
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> LabelClasses:
        return cls(
            names=[str(n) for n in meta["names"]],
            colors=np.asarray(meta["colors"], dtype=np.uint8),
            synonyms=[[str(w) for w in s] for s in meta.get("synonyms", [])] or [],
            background_words=[str(w) for w in meta.get("background_words", [])],
            ids=[int(i) for i in meta.get("class_ids", [])],
            roles=[str(r) for r in meta.get("roles", [])],
        )

    @classmethod
    def from_names(
        cls,
        names: Sequence[str],
        synonyms: Sequence[Sequence[str]] | None = None,
        background_words: Sequence[str] = (),
    ) -> LabelClasses:
        """Labels ``1..n`` named ``names``, default colours, label 0 = background."""
        all_names = [BACKGROUND_NAME, *names]
        syn = [list(background_words)] + [list(s) for s in (synonyms or [[] for _ in names])]
        return cls(all_names, default_colors(len(all_names)), syn, list(background_words))


def classes_from_layer_meta(
    metadata: Mapping[str, Any] | None, features: Any, data: np.ndarray | None
) -> LabelClasses:
    """Best-effort class list of any Labels layer (ours, or a plain one)."""
    meta = (metadata or {}).get(META_KEY)
    if isinstance(meta, Mapping) and "names" in meta:
        return LabelClasses.from_meta(meta)
    names: list[str] = []
    try:  # a features table with index/class columns (e.g. another plugin's)
        idx = [int(i) for i in features["index"]]
        cls_names = [str(c) for c in features["class"]]
        n = max(idx) + 1 if idx else 0
        names = [f"label {k}" for k in range(n)]
        for i, c in zip(idx, cls_names):
            names[i] = c
    except (KeyError, TypeError, ValueError, IndexError):
        names = []
    n_data = int(np.max(data)) + 1 if data is not None and np.size(data) else 1
    while len(names) < n_data:
        names.append(f"label {len(names)}")
    if not names:
        names = [BACKGROUND_NAME]
    names[0] = BACKGROUND_NAME
    return LabelClasses(names, default_colors(len(names)), [[] for _ in names])
