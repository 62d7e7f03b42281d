"""Turn napari layers into engine inputs: 2-D slices, display scaling, regions.

No Qt here: these functions take napari layers (or the proxies napari hands a
plugin) and plain values, so they are easy to test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "STACK_ALL",
    "STACK_CHOOSE",
    "STACK_CURRENT",
    "WHOLE_IMAGE",
    "as_display_uint8",
    "engine_image",
    "image_slices",
    "region_mask",
]

STACK_CHOOSE = "choose for stacks…"
STACK_CURRENT = "current slice"
STACK_ALL = "all slices"
WHOLE_IMAGE = "whole image"
_AREA_SHAPES = ("rectangle", "polygon", "ellipse")


def as_display_uint8(image: np.ndarray, contrast_limits: Sequence[float] | None) -> np.ndarray:
    """The image as the user sees it: scaled by the layer's contrast limits to uint8.

    A float image in [0, 0.05] shown with limits (0, 0.05) must not be segmented
    as black. uint8 images shown with the full (0, 255) range pass unchanged.
    """
    image = np.asarray(image)
    if contrast_limits is None:
        return image
    lo, hi = (float(v) for v in contrast_limits)
    if image.dtype == np.uint8 and lo <= 0 and hi >= 255:
        return image
    if not hi > lo:
        hi = lo + 1.0
    scaled = (image.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _refuse_non_finite(data: np.ndarray, name: str, rgb: bool) -> None:
    """Raise ``ValueError`` when ``data`` holds NaN or infinite values.

    Why refuse rather than guess: a NaN pixel has no colour, so the model would see
    whatever number the cast happens to produce, and its label would look as
    trustworthy as any other. The message says how many pixels and how to fix them.
    """
    if not np.issubdtype(data.dtype, np.floating):
        return
    bad = ~np.isfinite(data)
    if not bad.any():
        return
    nan = np.isnan(data)
    if rgb:  # a pixel is bad when any of its channels is
        bad, nan = bad.any(axis=-1), nan.any(axis=-1)
    n_bad, n_nan = int(np.count_nonzero(bad)), int(np.count_nonzero(nan))
    raise ValueError(
        f"Layer {name!r} has {n_bad:,} pixel(s) (of {bad.size:,}) that are NaN or infinite "
        f"({n_nan:,} NaN, {n_bad - n_nan:,} infinite): they have no colour, so CASS would only "
        "guess their labels. Replace them with numbers first, e.g. in napari's console: "
        f"`layer = viewer.layers[{name!r}]; layer.data = numpy.nan_to_num(layer.data, nan=0.0, "
        "posinf=0.0, neginf=0.0)`, then try again."
    )


def engine_image(data: Any, contrast_limits: Sequence[float] | None, name: str,
                 rgb: bool = False) -> np.ndarray:
    """One 2-D image (grey, RGB or RGBA) of a layer as the engine gets it, and as export writes it.

    Refuses NaN / infinite values (:func:`_refuse_non_finite`), then scales by the
    layer's contrast limits to uint8 (:func:`as_display_uint8`): the segmentation
    and the dataset image see the same picture the user sees.
    """
    arr = np.asarray(data)
    _refuse_non_finite(arr, name, rgb)
    return as_display_uint8(arr, contrast_limits)


def image_slices(
    layer: Any, stack_mode: str, world_point: Sequence[float]
) -> tuple[list[tuple[int, ...]], list[np.ndarray]]:
    """The 2-D images to segment and their leading (slice) indices.

    Raises ``ValueError`` saying what to choose when the layer is a stack and
    ``stack_mode`` does not say which slices.
    """
    data = layer.data[0] if layer.multiscale else layer.data
    spatial = data.ndim - (1 if layer.rgb else 0)
    if layer.rgb and data.shape[-1] not in (3, 4):
        raise ValueError(f"Layer {layer.name!r}: colour images need 3 or 4 channels.")
    if spatial < 2:
        raise ValueError(f"Layer {layer.name!r} has shape {data.shape}: it is not an image.")
    limits = getattr(layer, "contrast_limits", None)
    if spatial == 2:
        return [()], [engine_image(data, limits, layer.name, layer.rgb)]
    n_lead = spatial - 2
    if stack_mode == STACK_CHOOSE:
        raise ValueError(
            f"Layer {layer.name!r} is a stack of shape {tuple(data.shape)}: choose "
            f"'{STACK_CURRENT}' or '{STACK_ALL}' in 'Stacks' (Image section)."
        )
    if stack_mode == STACK_ALL:
        if n_lead != 1:
            raise ValueError(
                f"Layer {layer.name!r} has {n_lead} slice axes (shape {tuple(data.shape)}): "
                f"'{STACK_ALL}' only walks one axis (3-D stacks). Choose '{STACK_CURRENT}'."
            )
        return (
            [(z,) for z in range(data.shape[0])],
            [engine_image(data[z], limits, layer.name, layer.rgb) for z in range(data.shape[0])],
        )
    point = np.asarray(world_point)[-layer.ndim:]
    pos = np.round(np.asarray(layer.world_to_data(point))).astype(int)[:n_lead]
    lead = tuple(int(np.clip(p, 0, data.shape[i] - 1)) for i, p in enumerate(pos))
    return [lead], [engine_image(data[lead], limits, layer.name, layer.rgb)]


def region_mask(shapes: Any, image: Any, hw: tuple[int, int]) -> np.ndarray:
    """Union of a Shapes layer's rectangles, polygons and ellipses on the image's pixel grid.

    Vertices are moved from the Shapes layer's grid to the image's (scale and
    translate of the last two axes), then napari's ``Shapes.to_masks`` draws
    them (rotated rectangles and ellipses included).
    """
    from napari.layers import Shapes

    scale_s = np.asarray(shapes.scale)[-2:]
    trans_s = np.asarray(shapes.translate)[-2:]
    scale_i = np.asarray(image.scale)[-2:]
    trans_i = np.asarray(image.translate)[-2:]
    verts, kinds = [], []
    for v, kind in zip(shapes.data, shapes.shape_type):
        if kind in _AREA_SHAPES:
            verts.append((np.asarray(v)[:, -2:] * scale_s + trans_s - trans_i) / scale_i)
            kinds.append(kind)
    mask = np.zeros(hw, dtype=bool)
    if verts:
        masks = Shapes(verts, shape_type=kinds).to_masks(mask_shape=hw)
        mask = np.asarray(masks, dtype=bool).any(axis=0)
    if not mask.any():
        raise ValueError(
            f"The Shapes layer {shapes.name!r} has no rectangle, polygon or ellipse over the "
            f"image: draw one, or choose '{WHOLE_IMAGE}' as the region."
        )
    return mask
