"""Input images: validation, conversion to RGB, and the resize of spec section 1."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ACCEPTED_IMAGES", "RgbImage", "as_rgb_float", "load_rgb", "pad_pixels", "padded_size", "resize_image", "resized_size",
]

# Floats of one band of rows converted at a time by resize_image (16 MB).
_RESIZE_BAND_ELEMENTS = 4_000_000

ACCEPTED_IMAGES = (
    "a 2-D (H x W) grey image, or H x W x 3 (RGB) or H x W x 4 (RGBA, alpha is dropped), "
    "at least 2 x 2 pixels, of dtype uint8, uint16 or float (scaled to its own range), without NaN"
)


class RgbImage:
    """A validated image as an ``(H, W, 3)`` view, converted to 0..255 float32 on demand.

    A 6000 x 4000 photo is 72 MB as uint8 but 288 MB as float32: the resize converts
    and shrinks it a band of rows at a time instead (:func:`resize_image`), so the
    float copy never exists whole. Built by :func:`load_rgb`.
    """

    def __init__(self, pixels: np.ndarray, mode: str = "as_is", lo: float = 0.0, hi: float = 255.0):
        self.pixels = pixels  # (H, W, 3), any accepted dtype; may be a read-only view
        self.mode, self.lo, self.hi = mode, lo, hi

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape)

    def rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` as ``(n, W, 3)`` float32 on the 0..255 scale (a new array)."""
        block = self.pixels[start:stop]
        if self.mode == "as_is":
            return block.astype(np.float32)
        if self.mode == "zero":
            return np.zeros(block.shape, np.float32)
        data = block.astype(np.float64)
        if self.mode == "unit":
            return (data * 255.0).astype(np.float32)
        return ((data - self.lo) / (self.hi - self.lo) * 255.0).astype(np.float32)

    def to_float(self) -> np.ndarray:
        """The whole image as ``(H, W, 3)`` float32 on the 0..255 scale."""
        return self.rows()


def load_rgb(image) -> RgbImage:
    """Validate ``image`` and return it as an :class:`RgbImage` (no float copy yet).

    uint8 is taken as is. uint16 and other integers are min-max scaled to the range
    they use (12-bit microscopy data would otherwise look black), as napari's default
    contrast limits do; floats already in 0..1 or 0..255 keep their scale, other floats
    are min-max scaled.
    Raises ``ValueError`` saying what is accepted.
    """
    if hasattr(image, "__array__") and not isinstance(image, np.ndarray):
        image = np.asarray(image)
    if not isinstance(image, np.ndarray):
        raise ValueError(f"Expected an image array, got {type(image).__name__}: {ACCEPTED_IMAGES}.")
    if image.dtype == bool or not (
        np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    ):
        raise ValueError(f"Unsupported image dtype {image.dtype}: {ACCEPTED_IMAGES}.")
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        rgb = image[..., :3]
    elif image.ndim == 3 and image.shape[-1] == 1:
        rgb = np.broadcast_to(image, (*image.shape[:2], 3))
    elif image.ndim == 2:
        rgb = np.broadcast_to(image[..., None], (*image.shape, 3))
    else:
        raise ValueError(
            f"Unsupported image shape {image.shape}: {ACCEPTED_IMAGES}. "
            "For a stack, pass one 2-D slice at a time."
        )
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise ValueError(f"Image of shape {image.shape} is too small: {ACCEPTED_IMAGES}.")
    if image.dtype == np.uint8:
        return RgbImage(rgb)
    # min and max are exact in float64 for every accepted dtype, and NaN / inf show in them
    lo, hi = float(rgb.min()), float(rgb.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"The image contains NaN or infinite values: {ACCEPTED_IMAGES}.")
    if np.issubdtype(image.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        return RgbImage(rgb, "unit")
    if np.issubdtype(image.dtype, np.floating) and lo >= 0.0 and hi <= 255.0 and hi > 1.0:
        return RgbImage(rgb)
    if hi == lo:
        return RgbImage(rgb, "zero")
    return RgbImage(rgb, "minmax", lo, hi)


def as_rgb_float(image) -> np.ndarray:
    """Validate ``image`` and return it as ``(H, W, 3)`` float32 on the 0..255 scale.

    The conversion rules are those of :func:`load_rgb`, which the engine uses to
    avoid the whole float copy. Raises ``ValueError`` saying what is accepted.
    """
    return load_rgb(image).to_float()


def resized_size(height: int, width: int, short_side: int, long_side_max: int = 2048) -> tuple[int, int]:
    """Size after the keep-ratio rescale (mmcv's rule: short side to ``short_side``, long side capped).

    Each side is at least one pixel: a 3 x 20000 line scan scales its short side to 0.3
    when the long side is capped, and a resize to zero rows cannot run.
    """
    scale = min(short_side / min(height, width), long_side_max / max(height, width))
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def padded_size(height: int, width: int, min_side: int) -> tuple[int, int]:
    """Size of the resized image after padding each side to at least ``min_side``.

    Very elongated images (kymographs, line scans: aspect above ~128:1) keep a short
    side below one patch after the long side is capped, and a patch embedding cannot
    run on them. Padding to one patch of both encoders lets every image of at least
    2 x 2 pixels segment; other images are unchanged.
    """
    return max(int(height), int(min_side)), max(int(width), int(min_side))


def pad_pixels(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pad ``(3, h, w)`` pixels at the bottom and right to ``size`` by repeating the edge.

    Repeating the last row/column keeps the padding looking like the image (no black
    bar a class could latch on to); results are cut back to ``(h, w)`` afterwards.
    """
    h, w = pixels.shape[-2:]
    if (h, w) == tuple(size):
        return pixels
    return F.pad(pixels[None], (0, size[1] - w, 0, size[0] - h), mode="replicate")[0]


def resize_image(
    rgb: np.ndarray | RgbImage, size: tuple[int, int], reference_quirks: bool = False
) -> torch.Tensor:
    """Resize ``(H, W, 3)`` 0..255 pixels to ``size``; returns ``(3, h, w)`` float32.

    Default: bilinear with antialiasing (large photos shrink without aliasing). The
    filter is separable, so a large image is resized along its rows a band at a time
    (converted to float per band), then along its columns: the same numbers as one
    call, without a float copy of the whole image.
    ``reference_quirks``: OpenCV's INTER_LINEAR (bilinear, half-pixel centres, no
    antialiasing), bit-exact for uint8 input as the reference pipeline feeds it.
    """
    img = rgb if isinstance(rgb, RgbImage) else RgbImage(np.asarray(rgb))
    height, width = img.shape[:2]
    if tuple(size) == (height, width):
        return torch.from_numpy(img.to_float()).permute(2, 0, 1)
    if reference_quirks:
        full = img.to_float()
        if np.all(full == np.round(full)) and full.min() >= 0 and full.max() <= 255:
            out = _opencv_linear_uint8(full.astype(np.uint8), size)
            return torch.from_numpy(out).permute(2, 0, 1).float()
        t = torch.from_numpy(full).permute(2, 0, 1)[None]
        return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0]
    band = max(1, _RESIZE_BAND_ELEMENTS // (3 * width))
    if band >= height:
        t = torch.from_numpy(img.to_float()).permute(2, 0, 1)[None]
        return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    parts = []
    for start in range(0, height, band):
        t = torch.from_numpy(img.rows(start, start + band)).permute(2, 0, 1)[None]
        parts.append(F.interpolate(t, size=(t.shape[-2], size[1]), mode="bilinear", align_corners=False, antialias=True))
    rows_done = torch.cat(parts, dim=2)
    return F.interpolate(rows_done, size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def _opencv_taps(dst: int, src: int):
    """OpenCV's INTER_LINEAR source indices and 11-bit fixed-point weights along one axis."""
    f = ((np.arange(dst) + 0.5) * (src / dst) - 0.5).astype(np.float32)
    s0 = np.floor(f).astype(np.int64)
    f = (f - s0).astype(np.float32)
    low, high = s0 < 0, s0 >= src - 1
    f[low | high] = 0
    s0[low] = 0
    s0[high] = src - 1
    w0 = np.rint((np.float32(1) - f) * 2048).astype(np.int64)
    w1 = np.rint(f * 2048).astype(np.int64)
    return s0, np.minimum(s0 + 1, src - 1), w0, w1


def _opencv_linear_uint8(src: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(src, (w, h), interpolation=cv2.INTER_LINEAR)`` for uint8, bit-exact.

    Horizontal pass in 11-bit fixed point, vertical pass with the rounding of
    OpenCV's SIMD kernel (checked against OpenCV's output in the parity data).
    """
    x0, x1, a0, a1 = _opencv_taps(size[1], src.shape[1])
    y0, y1, b0, b1 = _opencv_taps(size[0], src.shape[0])
    s = src.astype(np.int64)
    horiz = s[:, x0] * a0[None, :, None] + s[:, x1] * a1[None, :, None]
    top = ((horiz[y0] >> 4) * b0[:, None, None]) >> 16
    bottom = ((horiz[y1] >> 4) * b1[:, None, None]) >> 16
    return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)
