"""Reading input images with a pixel limit checked from the header, before decoding.

A 476 KB TIFF can declare 20000 x 20000 pixels and ask for gigabytes when decoded (a
"decompression bomb"). Every reader here looks at the header first (PIL opens lazily and
knows ``.size``; tifffile reads page shapes without touching pixel data) and refuses images
above a limit: :data:`DEFAULT_MAX_PIXELS` unless the caller or the environment variable
:data:`MAX_PIXELS_ENV` says otherwise. The CLI, batch mode and servers share these readers.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS_ENV",
    "ImageTooLargeError",
    "check_pixel_limit",
    "image_size",
    "max_pixels_limit",
    "parse_pixel_count",
    "read_image",
]

#: Image file suffixes the readers accept (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Default limit: 100 megapixels (a 10000 x 10000 image; 4.5x a 24-megapixel photo).
DEFAULT_MAX_PIXELS = 100_000_000
#: Environment variable that overrides the default limit (pixels; ``0`` or ``none``: no limit).
MAX_PIXELS_ENV = "NAPARI_CASS_MAX_PIXELS"
_TIFF = (".tif", ".tiff")
_PIL_LOCK = threading.Lock()


class ImageTooLargeError(ValueError):
    """An image declares more pixels than the configured limit allows."""


def parse_pixel_count(text: str | int | float | None) -> int | None:
    """Parse a pixel limit: ``250000000``, ``2.5e8``, ``250M``, ``1G``; ``0``/``none`` -> no limit.

    Returns ``None`` for "no limit". Raises ``ValueError`` with an example otherwise.
    """
    if text is None:
        return None
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        raw = str(text).strip().lower().replace("_", "")
        if raw in ("", "none", "off", "unlimited"):
            return None
        scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(raw[-1:], 1.0)
        number = raw[:-1] if scale != 1.0 else raw
        try:
            value = float(number) * scale
        except ValueError:
            raise ValueError(
                f"{text!r} is not a pixel count; write e.g. 250000000, 2.5e8 or 250M "
                "(0 or 'none' for no limit)."
            ) from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"The pixel limit must be a positive number (0 for no limit), got {text!r}.")
    return None if value == 0 else int(value)


def max_pixels_limit(max_pixels: int | str | None = None) -> int | None:
    """The limit in effect: ``max_pixels`` if given, else ``$NAPARI_CASS_MAX_PIXELS``, else the default.

    ``None`` means no limit (``0`` or ``none`` given explicitly or in the environment).
    """
    if max_pixels is not None:
        return parse_pixel_count(max_pixels)
    env = os.environ.get(MAX_PIXELS_ENV)
    if env is not None and env.strip():
        try:
            return parse_pixel_count(env)
        except ValueError as exc:
            raise ValueError(f"Environment variable {MAX_PIXELS_ENV}: {exc}") from None
    return DEFAULT_MAX_PIXELS


def check_pixel_limit(name: str | os.PathLike[str], width: int, height: int,
                      max_pixels: int | str | None = None, count: int | None = None) -> None:
    """Raise :class:`ImageTooLargeError` if a ``width`` x ``height`` image is above the limit.

    ``count`` is the number of pixels to compare when it is not ``width * height`` (a TIFF
    stack of several planes). The message names the image, its size, the limit and the two
    ways to raise it.
    """
    limit = max_pixels_limit(max_pixels)
    total = int(count if count is not None else int(width) * int(height))
    if limit is None or total <= limit:
        return
    suggest = max(total, 1)
    planes = total // max(int(width) * int(height), 1)
    size = f"{width} x {height} pixels" + (f" x {planes} planes" if planes > 1 else "")
    raise ImageTooLargeError(
        f"{name} is {size} ({total / 1e6:.1f} megapixels), above the limit of "
        f"{limit / 1e6:g} megapixels that guards against decompression bombs. If the image is "
        f"genuine, raise the limit: --max-pixels {suggest} on the command line, or the environment "
        f"variable {MAX_PIXELS_ENV}={suggest} (0 removes the limit)."
    )


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


def _tiff_size(path: Path) -> tuple[int, int, int]:
    """(width, height, pixels) of a TIFF's first series, from the header only."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape, axes = tuple(series.shape), str(series.axes)
    dims = {a: n for a, n in zip(axes, shape)}
    height, width = int(dims.get("Y", shape[-2] if len(shape) >= 2 else 1)), int(dims.get("X", shape[-1]))
    pixels = math.prod(int(n) for a, n in zip(axes, shape) if a != "S")  # samples are channels
    return width, height, pixels


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of an image file, read from its header without decoding pixels."""
    p = Path(path)
    if p.suffix.lower() in _TIFF:
        width, height, _ = _tiff_size(p)
        return width, height
    from PIL import Image

    with _pil_unlimited(), Image.open(p) as img:
        return int(img.size[0]), int(img.size[1])


def read_image(path: str | os.PathLike[str], max_pixels: int | str | None = None) -> np.ndarray:
    """Read an image file as an array, refusing it before decoding if it is too large.

    Parameters
    ----------
    path : path-like
        A PNG, JPEG, BMP or TIFF file (TIFF: the first series, like ``tifffile.imread``).
    max_pixels : int or str, optional
        Pixel limit (see :func:`parse_pixel_count`); default: ``$NAPARI_CASS_MAX_PIXELS``
        or :data:`DEFAULT_MAX_PIXELS`. ``0`` disables the check.

    Raises
    ------
    ImageTooLargeError
        The header declares more pixels than the limit; nothing was decoded.
    FileNotFoundError, IsADirectoryError, ValueError
        The file is missing, a folder, or not an image.
    """
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{p} is a folder, not an image file.")
    if not p.exists():
        raise FileNotFoundError(f"Image {p} does not exist.")
    if p.suffix.lower() in _TIFF:
        import tifffile

        width, height, pixels = _tiff_size(p)
        check_pixel_limit(p, width, height, max_pixels, count=pixels)
        return np.asarray(tifffile.imread(p))
    from PIL import Image, UnidentifiedImageError

    import imageio.v3 as iio

    try:
        with _pil_unlimited(), Image.open(p) as img:  # the header only: quick under the lock
            width, height = img.size
    except UnidentifiedImageError:
        raise ValueError(f"{p} is not an image file that can be read (PNG, JPEG, BMP, TIFF).") from None
    check_pixel_limit(p, width, height, max_pixels)
    pil_limit = Image.MAX_IMAGE_PIXELS
    if pil_limit is not None and width * height > pil_limit:  # allowed by us, above PIL's own
        with _pil_unlimited():
            return np.asarray(iio.imread(p))
    return np.asarray(iio.imread(p))
