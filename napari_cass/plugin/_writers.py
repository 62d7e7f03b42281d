"""napari writer contributions for Labels layers: thin wrappers over :mod:`napari_cass.io`.

napari hands a writer the path the user picked in its save dialog (and has
already asked before replacing that file), so the chosen file itself is
overwritten. The ``classes.json`` written next to it is another matter: an
existing one with the same classes is left as it is, one with *other* classes
is never replaced: the class table then goes to ``<mask name>.classes.json``
and a warning says so.

napari calls each writer as ``writer(path, data, meta) -> list[str]`` (the npe2
single-layer API). Errors are :class:`LabelsWriterError`, deliberately *not* a
``ValueError``: when napari picks the writer itself (``viewer.layers.save(path)``,
``napari.save_layers``, a save dialog whose filter names no writer), its npe2 bridge
(``napari.plugins._npe2.write_layers``, napari 0.9.2) catches ``ValueError`` from
the writer and reports only "No data written! A plugin could not be found ...",
hiding what was wrong. Any other exception reaches the caller, and in the GUI
napari shows its message.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._classes import LabelClasses, classes_from_layer_meta, META_KEY

__all__ = [
    "LabelsWriterError",
    "write_labels_png",
    "write_labels_tiff",
    "write_labels_coco",
    "write_classes_next_to",
    "layer_classes",
]


class LabelsWriterError(Exception):
    """A Labels layer that a writer cannot save, with what the writer accepts.

    Not a ``ValueError``: napari hides those when it picks the writer itself
    (see the module docstring).
    """


_ACCEPTS = {  # what each writer says it takes, first thing in each of its errors
    "png": "The PNG writer takes one 2-D (H, W) label image with labels 0-255",
    "tif": "The TIFF writer takes a 2-D (H, W) label image or a 3-D (Z, H, W) stack "
           "(multi-page TIFF)",
    "coco": "The COCO writer takes one 2-D (H, W) label image",
}


def _label_array(data: Any, fmt: str, dims: tuple[int, ...]) -> np.ndarray:
    """``data`` as an integer array with ``ndim`` in ``dims``, or an error naming what fits."""
    accepts = _ACCEPTS[fmt]
    if isinstance(data, (list, tuple)):
        raise LabelsWriterError(
            f"{accepts}; this Labels layer is multiscale ({len(data)} levels): "
            "save a single-scale copy of its full-resolution level."
        )
    arr = np.asarray(data)
    if arr.ndim not in dims:
        if arr.ndim == 3:
            hint = " (a 3-D stack): choose .tif in the save dialog, which saves stacks"
        elif arr.ndim > 3:
            hint = ": save one (Z, H, W) part at a time (e.g. one time point)"
        else:
            hint = ""
        raise LabelsWriterError(f"{accepts}; this Labels layer has shape {arr.shape}{hint}.")
    if arr.size == 0:
        raise LabelsWriterError(f"{accepts}; this Labels layer is empty (shape {arr.shape}).")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise LabelsWriterError(
            f"{accepts} of integer labels; this layer holds {arr.dtype} values: "
            "convert them with layer.data = layer.data.astype(int)."
        )
    low = int(arr.min())
    if low < 0:
        raise LabelsWriterError(
            f"{accepts} of labels >= 0; this layer holds label {low}: erase or relabel those pixels."
        )
    return arr


def layer_classes(data: np.ndarray, meta: dict[str, Any]) -> tuple[np.ndarray, LabelClasses]:
    """The labels as files hold them (row k = label k) and their class list.

    A layer's values are class ids (stable while the layer lives); files count
    rows, so the values are compacted here. A plain layer gets made-up names.
    """
    classes = classes_from_layer_meta(meta.get("metadata"), meta.get("features"), data)
    try:
        rows = classes.to_rows(data)
    except ValueError as err:
        raise LabelsWriterError(str(err)) from None
    return rows, classes.in_row_order()


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
        ignore_class=classes.ignore_row, things=classes.thing_rows or None,
    )


def _errors_napari_shows(writer: Callable[[str, Any, dict[str, Any]], list[str]]
                         ) -> Callable[[str, Any, dict[str, Any]], list[str]]:
    """Re-raise a ``ValueError`` from the io layer as :class:`LabelsWriterError`."""

    @functools.wraps(writer)
    def wrapped(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
        try:
            return writer(path, data, meta)
        except ValueError as err:
            raise LabelsWriterError(str(err)) from err

    return wrapped


def _tiff_dtype(top: int) -> type[np.unsignedinteger]:
    if top <= np.iinfo(np.uint16).max:
        return np.uint16
    if top <= np.iinfo(np.uint32).max:
        return np.uint32
    raise LabelsWriterError(f"The TIFF writer takes labels up to 2**32 - 1; this layer reaches {top}.")


def write_label_stack_tiff(path: Path, labels: np.ndarray) -> Path:
    """Write 2-D labels or a (Z, H, W) stack as a zlib TIFF (uint16, or uint32 when needed).

    A stack becomes one page per slice (axes ``ZYX``), which ``tifffile.imread``,
    Fiji and napari read back as the same (Z, H, W) array.
    """
    import tifffile

    from napari_cass.io import atomic_write

    arr = labels.astype(_tiff_dtype(int(labels.max())), copy=False)
    with atomic_write(path, overwrite=True) as tmp:
        tifffile.imwrite(tmp, arr, photometric="minisblack", compression="zlib",
                         metadata={"axes": "ZYX" if arr.ndim == 3 else "YX"})
    return path


@_errors_napari_shows
def write_labels_png(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Indexed PNG (palette = class colours) plus ``classes.json`` next to it; 2-D only."""
    from napari_cass.io import write_indexed_png

    labels, classes = layer_classes(_label_array(data, "png", (2,)), meta)
    if classes.n_labels > 256:
        raise LabelsWriterError(
            f"{_ACCEPTS['png']}; this layer has {classes.n_labels} labels: "
            "choose .tif (16-bit) in the save dialog instead."
        )
    out = Path(path)
    palette = classes.colors
    if classes.ignore_row is not None:  # the ignore class is 255 in PNG masks (VOC, mmsegmentation)
        labels = np.where(labels == classes.ignore_row, 255, labels).astype(np.uint8)
        palette = np.zeros((256, 3), np.uint8)
        palette[: classes.n_labels] = classes.colors
        palette[255] = classes.colors[classes.ignore_row]
    written = write_indexed_png(out, labels, palette, overwrite=True)
    cls_path = write_classes_next_to(out, classes, _extra(meta))
    return [str(written), str(cls_path)]


@_errors_napari_shows
def write_labels_tiff(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """TIFF (uint16/uint32; 2-D or a multi-page (Z, H, W) stack) plus ``classes.json`` next to it."""
    labels, classes = layer_classes(_label_array(data, "tif", (2, 3)), meta)
    out = Path(path)
    written = write_label_stack_tiff(out, labels)
    cls_path = write_classes_next_to(out, classes, _extra(meta))
    return [str(written), str(cls_path)]


@_errors_napari_shows
def write_labels_coco(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """COCO JSON for the current image: one RLE annotation per class; label 0 is not annotated."""
    from napari_cass.io import atomic_write, labels_to_coco, safe_filename

    labels, classes = layer_classes(_label_array(data, "coco", (2,)), meta)
    image_name = _extra(meta).get("image") or meta.get("name") or Path(path).stem
    doc = labels_to_coco(
        labels, classes.names, image_id=1, file_name=f"{safe_filename(str(image_name))}.png",
        mode="rle", ignore_index=[0] + ([classes.ignore_row] if classes.ignore_row is not None else []),
        things=classes.thing_rows or None,
    )
    out = Path(path)
    with atomic_write(out, overwrite=True) as tmp:
        tmp.write_text(json.dumps(doc), encoding="utf-8")
    return [str(out)]
