"""Reading input images with their cost checked from the header, before decoding.

A 476 KB TIFF can declare 20000 x 20000 pixels and ask for gigabytes when decoded (a
"decompression bomb"). Every reader here opens the file once, checks what decoding
would cost from that open file (PIL opens lazily and knows ``.size``; tifffile reads
page shapes and where the compressed data lie), and decodes from the same open file:
the limits are in :mod:`._limits`, the TIFF checks in :mod:`._tiff_guard`. Animated
PNGs and multi-picture JPEGs give their first frame only. The CLI, the plugin's batch
mode, Ray workers, ``napari-cass eval`` and the label readers share these readers.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ._limits import (
    BYTES_PER_PIXEL,
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_ENV,
    ImageDecodeError,
    ImageTooLargeError,
    check_decoded_bytes,
    check_pixel_limit,
    max_decoded_bytes,
    max_pixels_limit,
    parse_pixel_count,
)
from ._tiff_guard import check_tiff

__all__ = [
    "BYTES_PER_PIXEL",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS_ENV",
    "ImageDecodeError",
    "ImageTooLargeError",
    "check_pixel_limit",
    "image_size",
    "max_decoded_bytes",
    "max_pixels_limit",
    "open_picture",
    "parse_pixel_count",
    "read_image",
    "read_tiff",
]

#: Image file suffixes the readers accept (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_TIFF = (".tif", ".tiff")
# What PIL may decode for each suffix: never a TIFF or another format named .png.
_PIL_FORMATS = {".png": ("PNG",), ".jpg": ("JPEG", "MPO"), ".jpeg": ("JPEG", "MPO"), ".bmp": ("BMP",)}
_PIL_LOCK = threading.Lock()
# Bytes per channel of PIL's modes, for the decoded size (others: 1).
_PIL_CHANNEL_BYTES = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


@contextlib.contextmanager
def _pil_unlimited() -> Iterator[None]:
    """Let PIL open what our own limit already allowed (PIL refuses > ~179 MP on its own).

    PIL's limit is a module global: it is lifted only while this lock is held, around our
    own reads, and restored afterwards.
    """
    from PIL import Image

    with _PIL_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _check_file(p: Path) -> None:
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a folder, not an image file.")
    if not p.exists():
        raise FileNotFoundError(f"Image {p} does not exist.")


@contextlib.contextmanager
def open_picture(path: str | os.PathLike[str], max_pixels: int | str | None = None) -> Iterator[Any]:
    """Open a PNG, JPEG or BMP file as a PIL image whose decoding cost has been checked.

    The file is opened once; the PIL image is read from that open file, restricted to the
    format its suffix names, at its first frame (an animated PNG's other frames are never
    decoded). Pixels are decoded when the caller asks for them (``np.asarray``, ``convert``).

    Raises
    ------
    ImageTooLargeError
        Above the pixel or decoded-byte limit; nothing was decoded.
    ValueError
        Not a PNG, JPEG or BMP image (whatever its suffix).
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    _check_file(p)
    formats = _PIL_FORMATS.get(p.suffix.lower())
    if formats is None:
        raise ValueError(f"{p} is not a PNG, JPEG or BMP file (by its suffix); TIFF files are read "
                         "with read_image or read_tiff.")
    # The suffix's format first, then the other picture formats: datasets hold PNGs named
    # .jpg and the like. Only these decoders ever run, whatever the bytes claim.
    Image.init()  # registers every plugin (MPO where this Pillow has it)
    allowed = list(formats) + [f for fs in _PIL_FORMATS.values() for f in fs if f not in formats]
    allowed = [f for f in dict.fromkeys(allowed) if f in Image.OPEN]  # this Pillow's decoders
    with open(p, "rb") as handle:
        try:
            with _pil_unlimited():  # the header only: quick under the lock
                img = Image.open(handle, formats=allowed)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, KeyError):
            raise ValueError(f"{p} is not an image file that can be read: its bytes are no PNG, "
                             f"JPEG or BMP picture (its suffix says {formats[0]}). PNG, JPEG, BMP "
                             "and TIFF files are read.") from None
        with img:
            width, height = img.size
            check_pixel_limit(p, width, height, max_pixels)
            bands = len(img.getbands())
            channel = _PIL_CHANNEL_BYTES.get(img.mode, 1)
            check_decoded_bytes(p, width * height * bands * channel,
                                f"{width} x {height} pixels of {img.mode}", max_pixels)
            yield img


def _pil_array(img: Any) -> np.ndarray:
    """The first frame as an array, converted as ``imageio.v3.imread`` converts it."""
    if img.mode == "P":
        img = img.convert(img.palette.mode)
    elif img.format == "PNG" and img.mode == "I":
        img = img.convert("I;16")
    arr = np.asarray(img)
    return arr if arr.flags.writeable else np.array(arr)


def read_tiff(path: str | os.PathLike[str], max_pixels: int | str | None = None) -> np.ndarray:
    """The first series of a TIFF file, after :func:`~._tiff_guard.check_tiff` on the same open file."""
    import tifffile

    p = Path(path)
    _check_file(p)
    try:
        with tifffile.TiffFile(p) as tif:
            check_tiff(tif, p, max_pixels)
            return np.asarray(tif.asarray())
    except tifffile.TiffFileError as exc:
        raise ValueError(f"{p} is not a TIFF file that can be read ({exc}).") from None


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of an image file, read from its header without decoding pixels."""
    p = Path(path)
    if p.suffix.lower() in _TIFF:
        import tifffile

        with tifffile.TiffFile(p) as tif:
            series = tif.series[0]
            dims = dict(zip(str(series.axes), series.shape))
            shape = series.shape
            return int(dims.get("X", shape[-1])), int(dims.get("Y", shape[-2] if len(shape) >= 2 else 1))
    from PIL import Image

    with _pil_unlimited(), Image.open(p) as img:
        return int(img.size[0]), int(img.size[1])


def read_image(path: str | os.PathLike[str], max_pixels: int | str | None = None) -> np.ndarray:
    """Read an image file as an array, refusing it before decoding if it would cost too much.

    Parameters
    ----------
    path : path-like
        A PNG, JPEG, BMP or TIFF file (TIFF: the first series, like ``tifffile.imread``;
        animated PNG, multi-picture JPEG: the first frame).
    max_pixels : int or str, optional
        Pixel limit (see :func:`parse_pixel_count`); default: ``$NAPARI_CASS_MAX_PIXELS``
        or :data:`DEFAULT_MAX_PIXELS`. ``0`` disables the pixel and decoded-byte limits.

    Raises
    ------
    ImageTooLargeError
        The header declares more pixels (every plane counted) or more decoded bytes
        (every sample counted) than the limits; nothing was decoded.
    ImageDecodeError
        A TIFF whose tiles are far larger than the image, or whose compressed data
        inflate past their tiles; nothing was decoded.
    FileNotFoundError, IsADirectoryError, ValueError
        The file is missing, a folder, or not an image.
    """
    p = Path(path)
    if p.suffix.lower() in _TIFF:
        return read_tiff(p, max_pixels)
    with open_picture(p, max_pixels) as img:
        return _pil_array(img)
