"""One image + its mask into a segmentation dataset folder (images/, masks/, classes.json)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._atomic import atomic_write, check_targets
from ._names import safe_filename
from ._classes_json import classes_table, read_classes_json, write_classes_json
from ._masks import mask_suffix_for, write_indexed_png, write_label_tiff
from ._overlay import to_uint8_rgb

__all__ = ["export_dataset_item"]


def export_dataset_item(root: str | os.PathLike[str], stem: str, image: np.ndarray,
                        labels: np.ndarray, names: Sequence[str], colors: np.ndarray,
                        overwrite: bool = False,
                        synonyms: Sequence[Sequence[str]] | None = None, *,
                        ignore_class: int | None = None,
                        things: Sequence[int] | None = None) -> dict[str, Path]:
    """Add one item to a dataset laid out as ``images/<stem>.png``, ``masks/<stem>.png``.

    The layout is what mmsegmentation's ``BaseSegDataset`` (``img_dir="images"``,
    ``ann_dir="masks"``) and a simple torchvision ``Dataset`` read directly.
    Masks are indexed PNGs, or uint16 ``.tif`` for more than 256 classes.
    ``classes.json`` is written once; a dataset whose existing ``classes.json``
    lists other classes is refused, since its masks would mean something else.

    ``ignore_class``: the index of the class annotators use for ambiguous regions. Its
    pixels are written as 255 in PNG masks (the value VOC and mmsegmentation ignore) and
    as its own index in TIFF masks; ``classes.json`` marks the class ``"ignore": true``
    and records the mask value to ignore as ``"ignore_index"`` (255, or the index in a
    TIFF dataset), which is mmsegmentation's ``ignore_index``. ``things``: class indices
    marked ``"thing": true`` (COCO instances, :func:`labels_to_coco`).
    Returns the paths written: ``{"image", "mask", "classes"}``.
    """
    root = Path(root)
    safe = safe_filename(stem)
    rgb = to_uint8_rgb(image)
    lab = np.asarray(labels)
    if lab.shape != rgb.shape[:2]:
        raise ValueError(
            f"Labels of shape {lab.shape} do not match the image's height and width {rgb.shape[:2]}."
        )
    names = list(names)
    table = classes_table(names, colors, synonyms, ignore_class=ignore_class, things=things)
    if lab.size and np.issubdtype(lab.dtype, np.integer):
        unknown = np.unique(lab[(lab < 0) | (lab >= len(names))])
        if unknown.size:
            shown = ", ".join(str(int(v)) for v in unknown[:8]) + (", ..." if unknown.size > 8 else "")
            raise ValueError(
                f"The labels of {stem!r} hold value(s) {shown} that no class describes (the class "
                f"list has values 0..{len(names) - 1}): add the missing classes or repaint those "
                "pixels before exporting."
            )
    mask_suffix = mask_suffix_for(len(names))
    image_path = root / "images" / f"{safe}.png"
    mask_path = root / "masks" / f"{safe}{mask_suffix}"
    classes_path = root / "classes.json"

    if classes_path.exists():
        existing = read_classes_json(classes_path)["classes"]
        old = [(c["id"], c["name"], bool(c.get("ignore"))) for c in existing]
        new = [(c["id"], c["name"], bool(c.get("ignore"))) for c in table]
        if old != new:
            raise ValueError(
                f"{classes_path} lists other classes ({', '.join(n for _, n, _ in old[:8])}"
                f"{', ...' if len(old) > 8 else ''}) than this export "
                f"({', '.join(n for _, n, _ in new[:8])}{', ...' if len(new) > 8 else ''}), or "
                "another ignore class; "
                "mask values would mean different classes. Export to a new folder, or use the "
                "same class list."
            )
    check_targets([image_path, mask_path], overwrite)
    if not classes_path.exists():  # the table first: a mask is never without one
        extra = None if ignore_class is None else {
            "ignore_index": 255 if mask_suffix == ".png" else int(ignore_class)}
        write_classes_json(classes_path, names, colors, synonyms, extra=extra, ignore_class=ignore_class,
                           things=things)

    from PIL import Image

    with atomic_write(image_path, overwrite=overwrite) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    if mask_suffix == ".png":
        palette = np.asarray(colors)[: len(names)]
        if ignore_class is not None:
            lab = np.where(lab == int(ignore_class), 255, lab)
            palette = np.concatenate([palette, np.zeros((256 - len(palette), 3), palette.dtype)])
            palette[255] = palette[int(ignore_class)]  # viewers show 255 in the ignore class's colour
        write_indexed_png(mask_path, lab, palette, overwrite=overwrite)
    else:
        write_label_tiff(mask_path, lab, overwrite=overwrite)
    return {"image": image_path, "mask": mask_path, "classes": classes_path}
