"""Label images on disk: indexed PNG (<= 255 classes) and uint16 TIFF (more)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._atomic import atomic_write

__all__ = ["mask_suffix_for", "read_label_image", "write_indexed_png", "write_label_tiff"]

# In PNG masks 255 means "ignore" (the VOC / mmsegmentation convention that evaluation
# follows), so a PNG mask can hold mask values 0-254 only.
PNG_MAX_LABELS = 255


def mask_suffix_for(n_values: int) -> str:
    """File type for masks with ``n_values`` mask values (0 .. n_values - 1).

    ``".png"`` (indexed) while every value stays below 255, the value PNG masks
    reserve for "ignore"; ``".tif"`` (uint16) above, where 255 is an ordinary class.
    """
    return ".png" if n_values <= PNG_MAX_LABELS else ".tif"


def _check_labels(labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"Labels must be a 2-D (H, W) array, got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError("Labels are empty (zero height or width); nothing to write.")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(
                f"Labels must hold integer class indices, got dtype {arr.dtype}; "
                "convert them with labels.astype(int) first."
            )
    if arr.min() < 0:
        raise ValueError(
            f"Labels must be non-negative class indices, found {int(arr.min())}."
        )
    return arr


def write_indexed_png(path: str | os.PathLike[str], labels: np.ndarray, palette: np.ndarray,
                      overwrite: bool = False) -> Path:
    """Write ``labels`` as a palette ("P" mode) PNG whose pixel values are the class indices.

    Viewers show the colours, while tools reading the raw values (mmsegmentation,
    VOC devkits) get the indices. Values must be < 256; use
    :func:`write_label_tiff` for more classes.
    """
    from PIL import Image

    arr = _check_labels(labels)
    top = int(arr.max())
    if top >= 256:
        raise ValueError(
            f"An indexed PNG holds class indices 0-255, but the labels go up to {top}; "
            "use write_label_tiff (uint16 TIFF) for more than 256 classes."
        )
    pal = np.asarray(palette)
    if pal.ndim != 2 or pal.shape[1] != 3 or pal.shape[0] == 0:
        raise ValueError(f"The palette must be an (n, 3) array of RGB colours, got shape {pal.shape}.")
    if pal.shape[0] > 256:
        pal = pal[:256]
    full = np.zeros((256, 3), dtype=np.uint8)
    full[: pal.shape[0]] = np.clip(pal, 0, 255).astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8)))  # mode "L"
    image.putpalette(full.reshape(-1).tolist())  # "L" + palette -> "P", values unchanged
    with atomic_write(path, overwrite=overwrite) as tmp:
        image.save(tmp, format="PNG", optimize=False)
    return Path(path)


def write_label_tiff(path: str | os.PathLike[str], labels: np.ndarray,
                     overwrite: bool = False) -> Path:
    """Write ``labels`` as a zlib-compressed uint16 TIFF (for up to 65536 classes)."""
    import tifffile

    arr = _check_labels(labels)
    top = int(arr.max())
    if top > np.iinfo(np.uint16).max:
        raise ValueError(f"A uint16 TIFF holds class indices up to 65535, but the labels reach {top}.")
    with atomic_write(path, overwrite=overwrite) as tmp:
        tifffile.imwrite(tmp, arr.astype(np.uint16), compression="zlib")
    return Path(path)


def read_label_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a label image written by this module (or any indexed/grey PNG or TIFF).

    Returns the raw integer values (palette indices for "P" PNGs, never colours).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Label image {p} does not exist.")
    if p.suffix.lower() in (".tif", ".tiff"):
        from ._images import read_tiff

        arr = read_tiff(p)  # bounded like every input image (pixels, bytes, tiles)
    else:
        from ._images import open_picture

        with open_picture(p) as img:
            if img.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
                raise ValueError(
                    f"{p} is a {img.mode} image, not a label image; label images are "
                    "indexed (palette) or single-channel integer images."
                )
            arr = np.asarray(img)
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(
            f"{p} is not a label image: expected a 2-D integer array, got shape {arr.shape} "
            f"and dtype {arr.dtype}."
        )
    return arr.astype(np.int32) if arr.dtype == bool else arr
