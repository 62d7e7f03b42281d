"""Label image -> COCO annotations (RLE per class, or polygons per connected region)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["labels_to_coco"]


def _bbox(mask: np.ndarray) -> list[float]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")  # JSON-serialisable
    return rle


def _polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of one region as COCO polygons ([x0, y0, x1, y1, ...]); holes are not kept."""
    from skimage import measure

    padded = np.pad(mask.astype(np.uint8), 1)
    polys: list[list[float]] = []
    for contour in measure.find_contours(padded, 0.5):
        contour = measure.approximate_polygon(contour, tolerance=0.5)
        if len(contour) < 4:  # closed contour: first == last, so < 3 distinct points
            continue
        xy = np.fliplr(contour - 1.0)  # undo the padding; (row, col) -> (x, y)
        xy = np.clip(xy, 0.0, None)
        # COCO polygon coordinates are pixel-edge based: shift from pixel centres by 0.5.
        xy = xy + 0.5
        polys.append([round(float(v), 2) for v in xy.reshape(-1)])
    return polys


def labels_to_coco(labels: np.ndarray, names: Sequence[str], image_id: int, file_name: str,
                   mode: str = "rle", ignore_index: int | Sequence[int] | None = None,
                   things: Sequence[int] | None = None) -> dict[str, Any]:
    """Convert a semantic label image to a COCO annotation document.

    Category ids are ``class index + 1`` (COCO reserves 0), each category also records
    its ``label_value``. Classes absent from the image are left out. ``mode="rle"``
    gives one annotation per class (exact masks); ``mode="polygon"`` gives one
    annotation per connected region (outer outline only; holes are filled).
    ``ignore_index`` (e.g. 0 for a background class, or several values such as the
    background and the ignore class) is not annotated.

    ``things`` (class indices; RLE mode): those classes are instances, one annotation
    per connected region (8-connected: pixels touching at a corner are one object), each
    with its exact RLE mask, area, bbox and ``iscrowd`` 0; the other classes are stuff,
    one annotation per class. Categories then carry ``isthing`` (1 or 0), as in COCO
    panoptic.
    """
    if mode not in ("rle", "polygon"):
        raise ValueError(f"mode must be 'rle' or 'polygon', got {mode!r}.")
    lab = np.asarray(labels)
    if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"Labels must be a 2-D integer array, got shape {lab.shape}, dtype {lab.dtype}.")
    names = list(names)
    skip = set() if ignore_index is None else (
        {int(ignore_index)} if isinstance(ignore_index, (int, np.integer)) else {int(v) for v in ignore_index})
    present = [int(v) for v in np.unique(lab) if int(v) not in skip]
    unknown = [v for v in present if v < 0 or v >= len(names)]
    if unknown:
        raise ValueError(
            f"The labels contain values {unknown[:5]} with no class name ({len(names)} names given)."
        )
    height, width = lab.shape
    if things is not None and mode != "rle":
        raise ValueError("things (one annotation per instance) needs mode='rle' (exact masks).")
    thing_set = {int(t) for t in things or ()}
    categories = [
        {"id": v + 1, "name": names[v], "supercategory": "object", "label_value": v,
         **({} if things is None else {"isthing": int(v in thing_set)})} for v in present
    ]
    from scipy import ndimage

    annotations: list[dict[str, Any]] = []
    for v in present:
        mask = lab == v
        if v in thing_set:
            regions, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
            for r in range(1, count + 1):
                region = regions == r
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": v + 1,
                    "segmentation": _rle(region), "area": float(region.sum()), "bbox": _bbox(region),
                    "iscrowd": 0,
                })
            continue
        if mode == "rle":
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": v + 1,
                "segmentation": _rle(mask), "area": float(mask.sum()), "bbox": _bbox(mask),
                "iscrowd": 0,
            })
            continue
        regions, count = ndimage.label(mask)
        for r in range(1, count + 1):
            region = regions == r
            polys = _polygons(region)
            if not polys:
                continue
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": v + 1,
                "segmentation": polys, "area": float(region.sum()), "bbox": _bbox(region),
                "iscrowd": 0,
            })
    return {
        "info": {"description": "napari-cass segmentation"},
        "images": [{"id": image_id, "file_name": file_name, "height": int(height), "width": int(width)}],
        "annotations": annotations,
        "categories": categories,
    }
