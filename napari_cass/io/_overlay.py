"""Quick-look overlays: the image with class colours blended on top."""

from __future__ import annotations

import numpy as np

__all__ = ["overlay_labels", "to_uint8_rgb"]


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """Convert a grey / RGB / RGBA image of any dtype to ``(H, W, 3)`` uint8 for display.

    uint8 is kept; floats within [0, 1] are scaled by 255; anything else is
    stretched from its minimum to its maximum, like a viewer's auto-contrast.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3]
    elif arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(
            f"Expected a grey (H, W), RGB (H, W, 3) or RGBA (H, W, 4) image, got shape {np.shape(image)}."
        )
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"Cannot display an image of dtype {arr.dtype}.")
    data = arr.astype(np.float64)
    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(arr.shape, dtype=np.uint8)
    data = np.where(finite, data, 0.0)
    lo, hi = float(data[finite].min()), float(data[finite].max())
    if np.issubdtype(arr.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    scaled = (data - lo) / (hi - lo) * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def overlay_labels(image: np.ndarray, labels: np.ndarray, palette: np.ndarray,
                   alpha: float = 0.5, skip_zero: bool = True) -> np.ndarray:
    """Blend palette colours over ``image`` -> ``(H, W, 3)`` uint8.

    With ``skip_zero`` (a run with a background class) label 0 stays unpainted;
    pass ``skip_zero=False`` when every label is a real class.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}.")
    rgb = to_uint8_rgb(image)
    lab = np.asarray(labels)
    if lab.shape != rgb.shape[:2]:
        raise ValueError(
            f"Labels of shape {lab.shape} do not match the image's height and width {rgb.shape[:2]}."
        )
    if lab.size and (not np.issubdtype(lab.dtype, np.integer) or lab.min() < 0):
        raise ValueError("Labels must be non-negative integer class indices.")
    pal = np.asarray(palette)
    if pal.ndim != 2 or pal.shape[1] != 3:
        raise ValueError(f"The palette must be an (n, 3) array, got shape {pal.shape}.")
    if lab.size and int(lab.max()) >= pal.shape[0]:
        raise ValueError(
            f"The labels go up to {int(lab.max())} but the palette has only {pal.shape[0]} colours; "
            "use label_palette(number_of_classes)."
        )
    colours = pal.astype(np.float64)[lab]
    blended = rgb.astype(np.float64) * (1.0 - alpha) + colours * alpha
    mask = lab > 0 if skip_zero else np.ones(lab.shape, dtype=bool)
    out = rgb.copy()
    out[mask] = np.clip(np.round(blended[mask]), 0, 255).astype(np.uint8)
    return out
