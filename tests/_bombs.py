"""Decompression bombs, built byte by byte in the tests (no attack file is committed).

Each builder writes a small file whose naive decoding costs gigabytes: an animated PNG
of 200 full-size frames, TIFFs whose samples, tile or strip data are out of proportion
with the image. Deflate streams of zeros are assembled from one compressed block
(a full flush makes every block's bytes the same), so a gigabyte of zeros takes
milliseconds to "compress".
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

_BLOCK = 1 << 24  # 16 MiB of zeros per deflate block


def zeros_deflated(n: int) -> bytes:
    """A zlib stream that inflates to ``n`` zero bytes (``n`` a multiple of 16 MiB, or below it)."""
    if n <= _BLOCK:
        return zlib.compress(bytes(n), 9)
    assert n % _BLOCK == 0
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = raw.compress(bytes(_BLOCK)) + raw.flush(zlib.Z_FULL_FLUSH)
    end = raw.flush()
    adler = ((n % 65521) << 16) | 1  # Adler-32 of n zero bytes
    return b"\x78\xda" + block * (n // _BLOCK) + end + struct.pack(">I", adler)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def apng_bomb(path: Path, side: int = 2000, frames: int = 200) -> Path:
    """An RGB animated PNG: one full ``side`` x ``side`` frame, then ``frames - 1`` 1-pixel updates.

    Every frame decodes to a full canvas: 200 x 2000 x 2000 x 3 = 2.4 GB for a naive reader.
    """
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    first = zlib.compress(bytes((1 + 3 * side) * side), 9)  # filter byte 0 + black pixels per row
    one_pixel = zlib.compress(b"\0\xff\x00\x00", 9)

    def fctl(seq: int, w: int, h: int) -> bytes:
        return _png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, w, h, 0, 0, 1, 10, 0, 0))

    out = [b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", ihdr), _png_chunk(b"acTL", struct.pack(">II", frames, 0)),
           fctl(0, side, side), _png_chunk(b"IDAT", first)]
    seq = 1
    for _ in range(frames - 1):
        out += [fctl(seq, 1, 1), _png_chunk(b"fdAT", struct.pack(">I", seq + 1) + one_pixel)]
        seq += 2
    out.append(_png_chunk(b"IEND", b""))
    path.write_bytes(b"".join(out))
    return path


def tiff_file(path: Path, width: int, height: int, data: bytes, *, samples: int = 1, segments: int = 1,
              tile: int | None = None, rows_per_strip: int | None = None, compression: int = 8) -> Path:
    """A little-endian uint8 TIFF whose ``segments`` strips or tiles all point at ``data``."""
    entries: list[tuple[int, int, list[int]]] = [  # (tag, type: 3 SHORT / 4 LONG, values)
        (256, 4, [width]), (257, 4, [height]), (258, 3, [8] * samples), (259, 3, [compression]),
        (262, 3, [1]), (277, 3, [samples]), (284, 3, [1]),
    ]
    if tile is None:
        entries += [(273, 4, [0] * segments), (278, 4, [rows_per_strip or height]), (279, 4, [len(data)] * segments)]
    else:
        entries += [(322, 4, [tile]), (323, 4, [tile]), (324, 4, [0] * segments), (325, 4, [len(data)] * segments)]
    entries.sort()
    ifd_size = 2 + 12 * len(entries) + 4
    extra_at = 8 + ifd_size
    extra, blobs = b"", []
    for tag, kind, values in entries:
        packed = struct.pack(f"<{len(values)}{'H' if kind == 3 else 'I'}", *values)
        if len(packed) <= 4:
            blobs.append((tag, kind, len(values), packed.ljust(4, b"\0"), None))
        else:
            blobs.append((tag, kind, len(values), None, len(extra)))
            extra += packed + (b"\0" if len(packed) % 2 else b"")
    data_at = extra_at + len(extra)
    # the segment offsets all point at the one data block
    extra = bytearray(extra)
    fixed = []
    for tag, kind, count, packed, where in blobs:
        if tag in (273, 324):
            offsets = struct.pack(f"<{count}I", *([data_at] * count))
            if packed is not None:
                packed = offsets.ljust(4, b"\0")
            else:
                extra[where:where + len(offsets)] = offsets
        fixed.append((tag, kind, count, packed, where))
    ifd = struct.pack("<H", len(fixed))
    for tag, kind, count, packed, where in fixed:
        ifd += struct.pack("<HHI", tag, kind, count) + (packed if packed is not None
                                                         else struct.pack("<I", extra_at + where))
    ifd += struct.pack("<I", 0)
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + bytes(extra) + data)
    return path


def zeros_raw_deflated(n: int) -> bytes:
    """A raw deflate stream (no zlib header) of ``n`` zero bytes, ``n`` a multiple of 16 MiB."""
    assert n % _BLOCK == 0
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = raw.compress(bytes(_BLOCK)) + raw.flush(zlib.Z_FULL_FLUSH)
    return block * (n // _BLOCK) + raw.flush()


def zip_with_deflated_record(source: Path, target: Path, suffix: str, n: int) -> Path:
    """Copy the zip ``source`` to ``target``; the record ending in ``suffix`` becomes ``n`` deflated zeros.

    Written by hand (zipfile would have to compress the gigabyte itself): local headers,
    data, central directory, end record. The other records are stored as they were.
    """
    import zipfile

    with zipfile.ZipFile(source) as archive:
        records = [(info.filename, archive.read(info)) for info in archive.infolist()]
    crc = 0
    for _ in range(n // _BLOCK):
        crc = zlib.crc32(bytes(_BLOCK), crc)
    body, central = bytearray(), bytearray()
    for name, data in records:
        raw_name = name.encode("utf-8")
        if name.endswith(suffix):
            method, payload, size, check = 8, zeros_raw_deflated(n), n, crc
        else:
            method, payload, size, check = 0, data, len(data), zlib.crc32(data)
        offset = len(body)
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, check, len(payload), size,
                            len(raw_name), 0) + raw_name + payload
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, check, len(payload),
                               size, len(raw_name), 0, 0, 0, 0, 0, offset) + raw_name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(records), len(records), len(central), len(body), 0)
    target.write_bytes(bytes(body) + bytes(central) + end)
    return target
