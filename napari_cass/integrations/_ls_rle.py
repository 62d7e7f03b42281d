"""Label Studio's brush RLE: masks to the ``"rle"`` list of a BrushLabels result, and back.

The format is thi.ng's ``rle-pack`` over the flattened RGBA image of the brush layer
(``H * W * 4`` bytes, a painted pixel is ``255`` in every channel): a header (32 bits
value count, 5 bits word size - 1, four 4-bit run-length field sizes - 1), then blocks,
each ``1`` + 2-bit size index + run length - 1 + one word (a run), or ``0`` + size
index + count - 1 + that many words (literals). Label Studio's SDK
(``label_studio_sdk.converter.brush``) implements it, but the SDK pins
``numpy < 2.3`` through OpenCV and brings ~30 packages; these ~100 lines are
vectorised with numpy instead and are checked against the SDK's own decoder and
encoder in the tests.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RLEError", "decode_rle", "encode_rle", "mask_from_rle"]

_SIZES = (3, 4, 8, 16)  # run-length field widths, as Label Studio's SDK writes them
_WORD = 8
_MAX_RUN = 1 << _SIZES[-1]


class RLEError(ValueError):
    """An ``rle`` list that is not Label Studio brush RLE for the stated image size."""


def encode_rle(mask: np.ndarray) -> list[int]:
    """Label Studio brush RLE (list of byte values) of a 2-D mask: non-zero is painted.

    Every run of equal pixels becomes one block (or several for runs over 65536
    values), so the size is proportional to the number of runs, not of pixels.
    """
    m = np.asarray(mask)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"A brush mask must be a non-empty 2-D array, got shape {m.shape}.")
    flat = np.where(m.ravel() != 0, 255, 0).astype(np.int64)
    starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
    lengths = np.diff(np.concatenate((starts, [flat.size]))) * 4  # RGBA: 4 equal values per pixel
    values = flat[starts]
    # runs longer than the largest field are split into full chunks plus the rest
    full, rest = np.divmod(lengths, _MAX_RUN)
    count = full + (rest > 0)
    values = np.repeat(values, count)
    ends = np.cumsum(count)
    chunk = np.full(int(ends[-1]), _MAX_RUN, dtype=np.int64)
    has_rest = rest > 0
    chunk[ends[has_rest] - 1] = rest[has_rest]
    index = np.searchsorted(np.array([1 << s for s in _SIZES]), chunk)  # smallest field that fits
    width = np.array(_SIZES)[index]
    nbits = 1 + 2 + width + _WORD
    codes = (1 << (nbits - 1)) | (index << (nbits - 3)) | ((chunk - 1) << _WORD) | values
    header_bits = 32 + 5 + 4 * len(_SIZES)
    header = (int(m.size) * 4 << (header_bits - 32)) | ((_WORD - 1) << (4 * len(_SIZES)))
    for i, size in enumerate(_SIZES):
        header |= (size - 1) << (4 * (len(_SIZES) - 1 - i))
    bits = np.concatenate((_bits([header], [header_bits]), _bits(codes, nbits)))
    pad = np.zeros(8 - bits.size % 8, np.uint8)  # 1-8 zero bits, as Label Studio's SDK pads
    return np.packbits(np.concatenate((bits, pad))).tolist()


def _bits(codes, widths, chunk: int = 1 << 16) -> np.ndarray:
    """The low ``widths[i]`` bits of ``codes[i]``, most significant first, concatenated.

    Worked in chunks of blocks, so a mask with millions of runs needs a few MB at a time.
    """
    codes = np.asarray(codes, dtype=np.uint64)
    widths = np.asarray(widths, dtype=np.int64)
    top = int(widths.max())
    shifts = np.arange(top - 1, -1, -1, dtype=np.uint64)
    parts = []
    for i in range(0, codes.size, chunk):
        c, w = codes[i:i + chunk], widths[i:i + chunk]
        table = ((c[:, None] >> shifts[None, :]) & np.uint64(1)).astype(np.uint8)
        parts.append(table[np.arange(top)[None, :] >= (top - w)[:, None]])
    return np.concatenate(parts)


def decode_rle(rle, expected_values: int) -> np.ndarray:
    """The values of an RLE list (for a brush: ``H * W * 4`` RGBA bytes).

    ``expected_values`` (from the result's ``original_width/height``) bounds the
    output before anything is allocated: a header that declares another count, a
    block that runs past it, or a stream that ends early raises :class:`RLEError`.
    """
    try:
        data = np.asarray(rle, dtype=np.int64)
    except (TypeError, ValueError):
        raise RLEError("'rle' must be a list of byte values (0-255).") from None
    if data.ndim != 1 or data.size < 7 or data.min() < 0 or data.max() > 255:
        raise RLEError("'rle' must be a list of at least 7 byte values (0-255).")
    bits = np.unpackbits(data.astype(np.uint8)).tobytes().translate(bytes.maketrans(b"\0\1", b"01")).decode()
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        if pos + n > len(bits):
            raise RLEError("The RLE data ends in the middle of a block (truncated).")
        value = int(bits[pos:pos + n], 2)
        pos += n
        return value

    num = read(32)
    if num != expected_values:
        raise RLEError(f"The RLE data holds {num} values; an image of this size needs {expected_values} "
                       "(original_width x original_height x 4).")
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(num, dtype=np.uint8 if word <= 8 else np.uint16 if word <= 16 else np.uint32)
    i = 0
    while i < num:
        repeat = read(1)
        j = i + 1 + read(sizes[read(2)])
        if j > num:
            raise RLEError(f"An RLE block runs past the {num} values the header declares.")
        if repeat:
            out[i:j] = read(word)
        else:
            out[i:j] = [read(word) for _ in range(j - i)]
        i = j
    return out


def mask_from_rle(rle, width: int, height: int, max_pixels: int | None = None) -> np.ndarray:
    """``(height, width)`` bool mask of a BrushLabels result: alpha of 128 or more is painted.

    ``max_pixels`` (default: :func:`napari_cass.io.max_pixels_limit`) refuses a result
    that declares a huge image before its mask is allocated.
    """
    from ..io import check_pixel_limit

    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        raise RLEError(f"original_width/original_height must be positive integers, got {width!r} x {height!r}.")
    check_pixel_limit("The brush result", width, height, max_pixels)
    values = decode_rle(rle, width * height * 4)
    return values.reshape(height, width, 4)[:, :, 3] >= 128
