"""The wire format shared by the server and the client (no FastAPI, no HTTP here).

An image travels once, keyed by the SHA-256 of its payload: the exact bytes of a
PNG/JPEG file, or of an ``.npy`` file (sent zlib-compressed, ``Content-Encoding:
deflate``). Later requests name the image by that key only, so a prompt edit sends no
pixels. Labels come back as a PNG (8-bit up to 256 classes, else 16-bit), the winning
probability optionally as an 8-bit PNG (value ``round(p * 255)``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import zlib
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "API_PREFIX",
    "ERROR_CODES",
    "IMAGE_TYPES",
    "Limits",
    "PayloadError",
    "decode_confidence",
    "decode_labels",
    "decode_payload",
    "decoded_peak_bytes",
    "encode_array",
    "encode_confidence",
    "encode_labels",
    "is_image_key",
    "npy_bytes",
    "is_job_id",
]

API_PREFIX = "/v1"
NPY_TYPE = "application/x-npy"
IMAGE_TYPES = ("image/png", "image/jpeg", NPY_TYPE)
# dtypes the engine accepts (napari_cass.engine._image.as_rgb_float), native or not.
_ALLOWED_KINDS = {"u": (1, 2, 4, 8), "i": (1, 2, 4, 8), "f": (2, 4, 8)}
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_JOB_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")

# Machine-readable "code" values of the JSON errors ({"error": {"code", "message"}}).
ERROR_CODES = (
    "unauthorized", "need_pixels", "too_large", "bad_request", "bad_image", "hash_mismatch",
    "too_many_classes", "prompt_too_long", "busy", "memory_full", "cancelled", "not_found",
    "internal_error", "server_stopped", "unsupported_type", "cross_origin", "timeout",
)


class PayloadError(ValueError):
    """A request body that cannot be accepted; ``status`` and ``code`` go into the reply."""

    def __init__(self, message: str, status: int = 400, code: str = "bad_image"):
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server; every limit answers with a clear 4xx.

    Parameters
    ----------
    max_upload_bytes : int
        Bytes of one request body as sent (compressed), images included.
    max_image_bytes : int
        Bytes of an image payload after decompression (a zlib bomb stops here).
    max_pixels : int
        Height x width of one image.
    max_classes : int
        Classes per request (background included).
    max_queries : int
        Words (names and synonyms) per request.
    max_word_chars : int
        Characters of one word.
    max_json_bytes : int
        Bytes of a JSON request body.
    """

    max_upload_bytes: int = 64 * 2**20
    max_image_bytes: int = 256 * 2**20
    max_pixels: int = 40_000_000
    max_classes: int = 512
    max_queries: int = 2048
    max_word_chars: int = 200
    max_json_bytes: int = 256 * 2**10

    def as_dict(self) -> dict:
        return asdict(self)


def is_image_key(text: str) -> bool:
    """True for a lower-case hex SHA-256 (the only form an image key may take)."""
    return isinstance(text, str) and bool(_KEY_RE.match(text))


def is_job_id(text: str) -> bool:
    """True for a client-chosen job id: 8-64 letters, digits, ``-`` or ``_``."""
    return isinstance(text, str) and bool(_JOB_RE.match(text))


# --------------------------------------------------------------------------- images in
def encode_array(image: np.ndarray, level: int = 1) -> tuple[str, bytes]:
    """``(key, body)`` for an array: SHA-256 of its ``.npy`` bytes, and those bytes deflated."""
    raw = npy_bytes(image)
    return hashlib.sha256(raw).hexdigest(), zlib.compress(raw, level)


def npy_bytes(image: np.ndarray) -> bytes:
    """The ``.npy`` file of ``image`` (C order): what an array's key is the SHA-256 of."""
    arr = np.ascontiguousarray(np.asarray(image))
    if arr.dtype.kind not in _ALLOWED_KINDS or arr.dtype.hasobject:
        raise ValueError(
            f"Cannot send an image of dtype {arr.dtype}: give a uint8, uint16 or float array."
        )
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def decode_payload(
    body: bytes, content_type: str, content_encoding: str | None, key: str, limits: Limits
) -> np.ndarray:
    """Check and decode an uploaded image; raises :class:`PayloadError` saying what is wrong.

    Nothing is executed or unpickled: ``.npy`` headers are read and validated before
    ``np.load(..., allow_pickle=False)``, PNG/JPEG go through Pillow with only those two
    formats enabled and the pixel count checked before decoding.
    """
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype not in IMAGE_TYPES:
        raise PayloadError(
            f"Unsupported Content-Type {content_type!r}: send {', '.join(IMAGE_TYPES)}.", 415
        )
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "deflate":
        limit = limits.max_image_bytes
        if ctype == NPY_TYPE:  # never inflate more than the header promises
            limit = min(limit, _npy_file_size(body, True, limits))
        raw = _inflate(body, limit)
    elif encoding == "identity":
        raw = body
    else:
        raise PayloadError(f"Unsupported Content-Encoding {content_encoding!r}: use deflate or none.", 415)
    if len(raw) > limits.max_image_bytes:
        raise PayloadError(f"The image is {len(raw)} bytes; this server accepts at most "
                           f"{limits.max_image_bytes}.", 413, "too_large")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != key:
        raise PayloadError(
            f"The image bytes hash to {digest}, not to the key {key} they were sent under: "
            "the upload was corrupted or the client hashed something else.", 400, "hash_mismatch"
        )
    return _decode_npy(raw, limits) if ctype == NPY_TYPE else _decode_picture(raw, limits)


def decoded_peak_bytes(body: bytes, content_type: str, content_encoding: str | None, limits: Limits) -> int:
    """Bytes :func:`decode_payload` may hold at once for ``body``, from its header only.

    An upper bound, read without decoding the pixels, so the server can count the memory
    before it is used: for ``.npy``, the inflated file plus the array; for PNG/JPEG,
    Pillow's decoded image (4 bytes per pixel for any multi-band mode), its converted copy
    and the final array. Raises :class:`PayloadError` for what :func:`decode_payload` would
    refuse on its header (type, size), so a hopeless upload costs nothing.
    """
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype not in IMAGE_TYPES:
        raise PayloadError(f"Unsupported Content-Type {content_type!r}: send {', '.join(IMAGE_TYPES)}.", 415)
    encoding = (content_encoding or "identity").strip().lower()
    if encoding not in ("deflate", "identity"):
        raise PayloadError(f"Unsupported Content-Encoding {content_encoding!r}: use deflate or none.", 415)
    if ctype == NPY_TYPE:
        size = _npy_file_size(body, encoding == "deflate", limits)
        return 2 * size
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(body), formats=["PNG", "JPEG"]) as img:
            (w, h), mode = img.size, img.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise PayloadError(f"Cannot decode the image as PNG or JPEG ({exc}).") from None
    _check_shape((h, w), limits)
    decoded = 4 if len(mode) > 1 and not mode.startswith("I;16") else (2 if mode.startswith("I;16") else 1)
    decoded = 4 if mode in ("I", "F") else decoded
    return h * w * (decoded + 4 + 4)


def _npy_file_size(body: bytes, deflated: bool, limits: Limits) -> int:
    """Bytes of the ``.npy`` file in ``body`` (header + array), from its header only."""
    try:
        head = zlib.decompressobj().decompress(body, 1 << 16) if deflated else body[:1 << 16]
    except zlib.error as exc:
        raise PayloadError(f"The deflate-compressed body is corrupt ({exc}).") from None
    f = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_2_0 if version == (2, 0) else np.lib.format.read_array_header_1_0
        shape, _, dtype = reader(f)
    except (ValueError, EOFError) as exc:
        if deflated:
            _inflated_size(body, limits.max_image_bytes)  # a zlib bomb is "too large", not "invalid"
        raise PayloadError(f"Not a valid .npy array ({exc}).") from None
    _check_dtype(dtype)
    _check_shape(tuple(shape), limits)
    return f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _inflated_size(body: bytes, max_bytes: int) -> int:
    """Size of the inflated ``body`` (raises 413 beyond ``max_bytes``), keeping 1 MB at a time."""
    d, size, data = zlib.decompressobj(), 0, body
    try:
        while data and not d.eof:
            size += len(d.decompress(data, 1 << 20))
            data = d.unconsumed_tail
            if size > max_bytes:
                raise PayloadError(f"The image decompresses to more than {max_bytes} bytes, this server's "
                                   "limit.", 413, "too_large")
    except zlib.error as exc:
        raise PayloadError(f"The deflate-compressed body is corrupt ({exc}).") from None
    return size


def _inflate(body: bytes, max_bytes: int) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise PayloadError(f"The deflate-compressed body is corrupt ({exc}).") from None
    if len(out) > max_bytes or d.unconsumed_tail:
        raise PayloadError(f"The image decompresses to more than {max_bytes} bytes, this server's "
                           "limit.", 413, "too_large")
    if not d.eof:
        raise PayloadError("The deflate-compressed body is truncated.")
    return out


def _check_shape(shape: tuple, limits: Limits) -> None:
    ok_dims = len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4))
    if not ok_dims or min(shape[:2] or (0,)) < 2:
        raise PayloadError(
            f"Image shape {tuple(shape)} is not (H, W), (H, W, 3) or (H, W, 4) with H, W >= 2.", 422
        )
    if shape[0] * shape[1] > limits.max_pixels:
        raise PayloadError(f"The image has {shape[0]} x {shape[1]} pixels; this server accepts at "
                           f"most {limits.max_pixels}.", 413, "too_large")


def _check_dtype(dtype: np.dtype) -> None:
    if dtype.hasobject or dtype.kind not in _ALLOWED_KINDS or dtype.itemsize not in _ALLOWED_KINDS[dtype.kind]:
        raise PayloadError(f"Unsupported array dtype {dtype}: send uint8, uint16 or float pixels.", 422)


def _decode_npy(raw: bytes, limits: Limits) -> np.ndarray:
    f = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except ValueError as exc:
        raise PayloadError(f"Not a valid .npy array ({exc}).") from None
    _check_dtype(dtype)
    _check_shape(tuple(shape), limits)
    f.seek(0)
    try:
        arr = np.load(f, allow_pickle=False)
    except ValueError as exc:
        raise PayloadError(f"Not a valid .npy array ({exc}).") from None
    return arr


def _decode_picture(raw: bytes, limits: Limits) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(raw), formats=["PNG", "JPEG"])
        w, h = img.size
        _check_shape((h, w), limits)
        img.load()
    except PayloadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise PayloadError(f"Cannot decode the image as PNG or JPEG ({exc}).") from None
    if img.mode in ("P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        img = img.convert("RGBA" if "A" in img.mode or "transparency" in img.info else "RGB")
    elif img.mode == "LA":
        img = img.convert("L")
    return np.asarray(img)


# --------------------------------------------------------------------------- results out
def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _unpng(data: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data)), formats=["PNG"]))


def encode_labels(labels: np.ndarray, n_classes: int) -> str:
    """Base64 PNG of ``(H, W)`` class indices: 8-bit for up to 256 classes, else 16-bit."""
    dtype = np.uint8 if n_classes <= 256 else np.uint16
    return base64.b64encode(_png(np.ascontiguousarray(labels, dtype=dtype))).decode("ascii")


def decode_labels(data: str, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`encode_labels`, as int32 (the engine's label dtype)."""
    labels = _unpng(data).astype(np.int32)
    if labels.shape != tuple(shape):
        raise ValueError(f"The server sent labels of shape {labels.shape}, expected {tuple(shape)}.")
    return labels


def encode_confidence(confidence: np.ndarray) -> str:
    """Base64 8-bit PNG of ``round(p * 255)``: within 0.5/255 of the winning probability."""
    q = np.clip(np.rint(np.asarray(confidence, np.float32) * 255.0), 0, 255).astype(np.uint8)
    return base64.b64encode(_png(q)).decode("ascii")


def decode_confidence(data: str, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`encode_confidence`: float32 in 0..1, quantised to 1/255."""
    q = _unpng(data)
    if q.shape != tuple(shape):
        raise ValueError(f"The server sent a confidence map of shape {q.shape}, expected {tuple(shape)}.")
    return q.astype(np.float32) / np.float32(255.0)
