"""The limits every image reader applies before decoding: pixels, and bytes once decoded.

A small file can declare a huge image (a "decompression bomb"): 476 KB of TIFF for
20000 x 20000 pixels, 23 KB for 1000 x 1000 pixels of 3000 samples each, 18 KB of
animated PNG for 200 frames. Two numbers bound what a read may cost:

- the pixel limit, :data:`DEFAULT_MAX_PIXELS` unless the caller or the environment
  variable :data:`MAX_PIXELS_ENV` says otherwise (every plane of a stack counts);
- the decoded-byte limit, :data:`BYTES_PER_PIXEL` bytes for each allowed pixel
  (800 MB at the default: RGBA at 16 bits per channel fits, 3000 samples do not).

Raising the pixel limit raises both, so one option (``--max-pixels``) remains the only
knob; ``0`` removes both. Structural checks that no genuine file fails (tiles larger than
the image, compressed data that inflates past its tile) apply even without a limit.
"""

from __future__ import annotations

import math
import os

__all__ = [
    "BYTES_PER_PIXEL",
    "DEFAULT_MAX_PIXELS",
    "MAX_PIXELS_ENV",
    "ImageDecodeError",
    "ImageTooLargeError",
    "check_decoded_bytes",
    "check_pixel_limit",
    "max_decoded_bytes",
    "max_pixels_limit",
    "parse_pixel_count",
]

#: Default limit: 100 megapixels (a 10000 x 10000 image; 4.5x a 24-megapixel photo).
DEFAULT_MAX_PIXELS = 100_000_000
#: Environment variable that overrides the default limit (pixels; ``0`` or ``none``: no limit).
MAX_PIXELS_ENV = "NAPARI_CASS_MAX_PIXELS"
#: Decoded bytes allowed per allowed pixel: 4 channels of 16 bits (800 MB at 100 megapixels).
BYTES_PER_PIXEL = 8


class ImageTooLargeError(ValueError):
    """An image declares more pixels, or more decoded bytes, than the configured limit allows."""


class ImageDecodeError(ValueError):
    """An image file is built to cost more than its pixels: refused before it is decoded."""


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


def max_decoded_bytes(max_pixels: int | str | None = None) -> int | None:
    """Bytes a decoded image may take: :data:`BYTES_PER_PIXEL` per allowed pixel (``None``: no limit)."""
    limit = max_pixels_limit(max_pixels)
    return None if limit is None else limit * BYTES_PER_PIXEL


def _raise_hint(needed_pixels: int) -> str:
    suggest = max(int(needed_pixels), 1)
    return (f"If the image is genuine, raise the limit: --max-pixels {suggest} on the command "
            f"line, or the environment variable {MAX_PIXELS_ENV}={suggest} (0 removes the limit).")


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
    planes = total // max(int(width) * int(height), 1)
    size = f"{width} x {height} pixels" + (f" x {planes} planes" if planes > 1 else "")
    raise ImageTooLargeError(
        f"{name} is {size} ({total / 1e6:.1f} megapixels), above the limit of "
        f"{limit / 1e6:g} megapixels that guards against decompression bombs. " + _raise_hint(total)
    )


def check_decoded_bytes(name: str | os.PathLike[str], nbytes: int, what: str,
                        max_pixels: int | str | None = None) -> None:
    """Raise :class:`ImageTooLargeError` if decoding ``what`` would take more than the byte limit.

    ``what`` describes the declared layout in words (``"1000 x 1000 pixels x 3000
    samples of uint8"``): the message says what made the image that large.
    """
    limit = max_decoded_bytes(max_pixels)
    if limit is None or nbytes <= limit:
        return
    raise ImageTooLargeError(
        f"{name} declares {what}: {nbytes / 1e6:,.0f} MB once decoded, above the limit of "
        f"{limit / 1e6:,.0f} MB ({BYTES_PER_PIXEL} bytes for each allowed pixel) that guards "
        "against decompression bombs; nothing was decoded. " + _raise_hint(-(-nbytes // BYTES_PER_PIXEL))
    )
