"""napari writer contributions for Labels layers: thin wrappers over :mod:`napari_cass.io`.

napari hands a writer the path the user picked in its save dialog (and has
already asked before replacing that file), so the chosen file itself is
overwritten. The ``classes.json`` written next to it is another matter: an
existing one with the same classes is left as it is, one with *other* classes
is never replaced: the class table then goes to ``<mask name>.classes.json``
and a warning says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ._classes import LabelClasses, classes_from_layer_meta, META_KEY

__all__ = [
    "write_labels_png",
    "write_labels_tiff",
    "write_labels_coco",
    "write_classes_next_to",
    "layer_classes",
]


def layer_classes(data: np.ndarray, meta: dict[str, Any]) -> LabelClasses:
    """The class list of the layer being written (ours, or names made up for a plain layer)."""
    classes = classes_from_layer_meta(meta.get("metadata"), meta.get("features"), data)
    top = int(np.max(data)) if np.size(data) else 0
    if top >= classes.n_labels:
        raise ValueError(
            f"The layer holds label {top}, but its class list has only labels "
            f"0..{classes.n_labels - 1}: add classes in the CASS widget or fix the painted labels."
        )
    return classes


def _extra(meta: dict[str, Any]) -> dict[str, Any]:
    info = (meta.get("metadata") or {}).get(META_KEY) or {}
    return {
        k: info[k]
        for k in ("method", "preset", "clip", "vfm", "image")
        if k in info and isinstance(info[k], (str, int, float))
    }


def write_classes_next_to(mask_path: Path, classes: LabelClasses, extra: dict[str, Any]) -> Path:
    """Write ``classes.json`` beside a mask without clobbering a different one."""
    from napari_cass.io import read_classes_json, write_classes_json

    target = mask_path.parent / "classes.json"
    if target.exists():
        try:
            existing = read_classes_json(target)["classes"]
            same = [c["name"] for c in existing] == classes.names and [
                list(c["color"]) for c in existing
            ] == classes.colors.astype(int).tolist()
        except (ValueError, KeyError, OSError):
            same = False
        if same:
            return target
        target = mask_path.with_name(mask_path.stem + ".classes.json")
        from napari.utils.notifications import show_warning

        show_warning(
            f"{mask_path.parent / 'classes.json'} lists other classes: this mask's class table "
            f"was written to {target.name} instead."
        )
    # The versioned name belongs to this mask: replacing it together with the mask is expected.
    return write_classes_json(
        target, classes.names, classes.colors, classes.synonyms,
        overwrite=target.name != "classes.json", extra=extra or None,
    )


def _check_2d(data: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(data)
    if arr.ndim != 2:
        raise ValueError(
            f"{what} holds one 2-D mask, but this Labels layer has shape {arr.shape}: "
            "save a 3-D stack as .tif instead."
        )
    return arr


def write_labels_png(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Indexed PNG (palette = class colours) plus ``classes.json`` next to it."""
    from napari_cass.io import write_indexed_png

    labels = _check_2d(data, "An indexed PNG")
    classes = layer_classes(labels, meta)
    if classes.n_labels > 256:
        raise ValueError(
            f"{classes.n_labels} labels do not fit an 8-bit PNG: save as .tif (16-bit) instead."
        )
    out = Path(path)
    written = write_indexed_png(out, labels, classes.colors, overwrite=True)
    cls_path = write_classes_next_to(out, classes, _extra(meta))
    return [str(written), str(cls_path)]


def write_labels_tiff(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """16-bit TIFF (any number of labels, 2-D or a stack) plus ``classes.json`` next to it."""
    from napari_cass.io import write_label_tiff

    labels = np.asarray(data)
    classes = layer_classes(labels, meta)
    out = Path(path)
    written = write_label_tiff(out, labels, overwrite=True)
    cls_path = write_classes_next_to(out, classes, _extra(meta))
    return [str(written), str(cls_path)]


def write_labels_coco(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """COCO JSON for the current image: one RLE annotation per class; label 0 is not annotated."""
    from napari_cass.io import atomic_write, labels_to_coco, safe_filename

    labels = _check_2d(data, "A COCO file")
    classes = layer_classes(labels, meta)
    image_name = _extra(meta).get("image") or meta.get("name") or Path(path).stem
    doc = labels_to_coco(
        labels, classes.names, image_id=1, file_name=f"{safe_filename(str(image_name))}.png",
        mode="rle", ignore_index=0,
    )
    out = Path(path)
    with atomic_write(out, overwrite=True) as tmp:
        tmp.write_text(json.dumps(doc), encoding="utf-8")
    return [str(out)]
