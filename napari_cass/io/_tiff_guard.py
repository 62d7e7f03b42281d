"""What a TIFF may cost to decode, read from its header and its compressed data, before decoding.

tifffile decodes a TIFF's first series tile by tile (or strip by strip) into an array
of the series' shape. Three things can make that cost far more than the pixels the
header shows, and each is checked here on the same open file the pixels are read from:

- **samples and planes**: the series' byte size counts every axis (1000 x 1000
  pixels of 3000 samples is 3 GB), checked against the decoded-byte limit;
- **tiles or strips larger than the image**: a 100 x 100 image stored as one
  32768 x 32768 tile is decoded tile-sized (1 GB) before it is cropped;
- **compressed data that inflates past its tile**: without imagecodecs, tifffile
  inflates deflate, LZMA and PackBits data with no output bound (a 4 MB strip of a
  small image can inflate to 4 GB). Each such segment is inflated here first, in a
  bounded buffer, and refused as soon as it passes its tile's size.
"""

from __future__ import annotations

import lzma
import math
import os
import zlib
from typing import Any

from ._limits import ImageDecodeError, check_decoded_bytes, check_pixel_limit

__all__ = ["check_tiff"]

#: How far a tile may extend past the image, per side (tiles are multiples of 16; the
#: small levels of a pyramid keep the big levels' 256 or 512 px tiles).
TILE_SLACK = 1024
_ZLIB = {8, 32946, 50013}  # Adobe deflate, old-style deflate, PixarLog-style zlib
_LZMA = {34925}
_PACKBITS = {32773}
# A compressed segment is never much larger than its raw size (deflate adds 5 bytes per
# 16 KB, PackBits one byte per 128, JPEG at quality 100 stays below 2x).
_SEGMENT_SLACK = 64 << 10


_FIX = ("Open it in an image editor and save it again as a plain (untiled) TIFF or a PNG; "
        "if it came from someone else, ask for the original.")


def _inflated_size(compression: int, data: bytes, limit: int) -> int:
    """Bytes ``data`` inflates to, counting at most ``limit + 1`` (memory: one tile)."""
    if compression in _ZLIB:
        try:
            return len(zlib.decompressobj().decompress(data, limit + 1))
        except zlib.error:
            return 0  # corrupt: tifffile says so when it decodes
    if compression in _LZMA:
        try:
            return len(lzma.LZMADecompressor().decompress(data, max_length=limit + 1))
        except lzma.LZMAError:
            return 0
    # PackBits: a header byte n < 128 copies n + 1 literal bytes, n > 128 repeats one byte
    # 257 - n times. Only the headers are visited.
    size, i, end = 0, 0, len(data)
    while i < end and size <= limit:
        n = data[i]
        if n < 128:
            size, i = size + n + 1, i + n + 2
        elif n > 128:
            size, i = size + 257 - n, i + 2
        else:  # 128: no operation
            i += 1
    return size


def _check_geometry(name: str, page: Any) -> int:
    """Refuse tiles far larger than the image; return the decoded bytes of one tile or strip."""
    key = page.keyframe
    if key.dtype is None:
        return 0  # tifffile refuses the pixel format itself
    if key.is_tiled:
        for side, tile, image in (("wide", key.tilewidth, key.imagewidth),
                                  ("high", key.tilelength, key.imagelength),
                                  ("deep", key.tiledepth, key.imagedepth)):
            if tile > max(image, TILE_SLACK if side != "deep" else 1):
                raise ImageDecodeError(
                    f"{name} stores its {key.imagewidth} x {key.imagelength} pixel image in tiles "
                    f"{tile} pixels {side}, far larger than the image: decoding one tile would take "
                    f"{math.prod(key.chunks) * key.dtype.itemsize / 1e6:,.0f} MB. Nothing was "
                    f"decoded. {_FIX}"
                )
    return math.prod(int(n) for n in key.chunks) * key.dtype.itemsize


def _check_segments(name: str, fh: Any, page: Any, chunk_bytes: int) -> None:
    """Refuse a tile or strip whose stored or inflated size passes the tile's decoded size."""
    compression = int(page.keyframe.compression)
    inflate = compression in _ZLIB or compression in _LZMA or compression in _PACKBITS
    for offset, count in zip(page.dataoffsets, page.databytecounts):
        if count > 2 * chunk_bytes + _SEGMENT_SLACK:
            raise ImageDecodeError(
                f"{name} stores {count:,} bytes for a tile or strip of {chunk_bytes:,} bytes: the "
                f"file is damaged or crafted. Nothing was decoded. {_FIX}"
            )
        if not inflate or count == 0:
            continue
        fh.seek(offset)
        size = _inflated_size(compression, fh.read(count), chunk_bytes)
        if size > chunk_bytes:
            raise ImageDecodeError(
                f"{name} holds a compressed tile or strip of {count:,} bytes that inflates past "
                f"the {chunk_bytes:,} bytes its pixels take (a decompression bomb); it was "
                f"refused without being decoded. {_FIX}"
            )


def check_tiff(tif: Any, name: str | os.PathLike[str], max_pixels: int | str | None = None) -> tuple[int, int]:
    """Check the first series of an open ``tifffile.TiffFile``; return its ``(width, height)``.

    Raises
    ------
    ImageTooLargeError
        Above the pixel limit (every plane counts) or the decoded-byte limit (every sample counts).
    ImageDecodeError
        Tiles far larger than the image, or compressed data that inflates past its tile.
    ValueError
        No image in the file.
    """
    try:
        series = tif.series[0]
    except IndexError:
        raise ValueError(f"{name} holds no image that can be read.") from None
    shape, axes, dtype = tuple(int(n) for n in series.shape), str(series.axes), series.dtype
    dims = dict(zip(axes, shape))
    height = dims.get("Y", shape[-2] if len(shape) >= 2 else 1)
    width = dims.get("X", shape[-1] if shape else 1)
    pixels = math.prod(n for a, n in zip(axes, shape) if a != "S")  # samples are channels
    check_pixel_limit(name, width, height, max_pixels, count=pixels)
    samples = dims.get("S", 1)
    planes = pixels // max(width * height, 1)
    what = (f"{width} x {height} pixels" + (f" x {planes} planes" if planes > 1 else "")
            + (f" x {samples} samples" if samples > 1 else "") + f" of {dtype}")
    check_decoded_bytes(name, math.prod(shape) * dtype.itemsize, what, max_pixels)
    for page in series.pages:
        if page is None:
            continue
        chunk_bytes = _check_geometry(str(name), page)
        if chunk_bytes:
            _check_segments(str(name), tif.filehandle, page, chunk_bytes)
    return width, height
