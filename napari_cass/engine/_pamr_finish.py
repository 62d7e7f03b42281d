"""The final step with PAMR: refined labels and confidence, a tile at a time.

:func:`~._finish.finish_logits` without refinement works on bands of output rows; PAMR
needs a neighbourhood of 160 pixels around every output pixel, so here the output is cut
into square tiles, each grown by PAMR's halo (:class:`._pamr.Pamr`). Per tile: the
affinities from the guide image, then the queries a few at a time (bilinear resize of the
low-resolution logits to the grown tile, PAMR, the tile's core kept), folded into a
running softmax (per pixel: the largest scaled logit so far, the first query reaching
it, and ``sum exp(z - max)`` rescaled when the max grows). Memory is bounded by
``elements`` floats whatever the image size and number of classes; work grows linearly
with pixels times queries (times ``(core + 2 halo)^2 / core^2`` for the halo).

The order of operations is the reference's: PAMR on the unscaled logits at the original
size, then x logit scale, softmax over queries, max over synonyms, argmax, ``prob_thd``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from ._encoder_inputs import clip_input
from ._image import RgbImage, load_rgb, resize_image
from ._pamr import Pamr, pamr_affinity, pamr_iterate, tiles
from ._windows import bilinear_taps, resize_rows_band

__all__ = [
    "PAMR_ELEMENTS", "ImageSource", "finish_refined", "guide_for", "original_guide", "refine_tile_size", "resized_guide",
]

#: Floats (4 bytes each) a tile may use: 48 MB.
PAMR_ELEMENTS = 12_000_000
# Floats per pixel of a grown tile: 16 affinity maps plus the temporaries of computing
# them (~7: the padded guide, the spreads, one difference), or 16 + ~3.5 per query refined
# at once (logits, next step, padded copy); 2 queries at a time. Measured on 6000 x 4000
# with 150 queries: see benchmarks/bench_pamr.py memory.
_PER_PIXEL = 24
_QUERIES_AT_ONCE = 2
_MIN_CORE = 64

#: ``guide(y0, y1, x0, x1) -> (C, y1 - y0, x1 - x0)`` float32: the image PAMR follows.
ImageSource = Callable[[int, int, int, int], torch.Tensor]


def original_guide(rgb: RgbImage, device=None) -> ImageSource:
    """The original image at full resolution (only the asked rectangle is converted to float)."""

    def guide(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        block = RgbImage(rgb.pixels[y0:y1, x0:x1], rgb.mode, rgb.lo, rgb.hi).rows()
        return torch.from_numpy(block).permute(2, 0, 1).to(device)

    return guide


def resized_guide(small: torch.Tensor, size: tuple[int, int], exact: bool = False) -> ImageSource:
    """The reference's guide: the ``(C, h, w)`` model input resized bilinearly to ``size``.

    ``exact``: resize the whole image once with ``F.interpolate``, as the reference does,
    and hand out its tiles. PAMR divides colour differences by the local spread, so in flat
    regions the last-bit noise of the resize decides the weights: parity needs the
    reference's own rounding (a full-size float copy of the guide: 12 bytes per pixel).
    """
    if exact:
        full = torch.nn.functional.interpolate(small[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
        return lambda y0, y1, x0, x1: full[:, y0:y1, x0:x1]
    rows = bilinear_taps(size[0], small.shape[-2], small.device)
    cols = bilinear_taps(size[1], small.shape[-1], small.device)

    def guide(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        return resize_rows_band(small, tuple(t[y0:y1] for t in rows), tuple(t[x0:x1] for t in cols))

    return guide


def guide_for(
    image, resized: tuple[int, int], size: tuple[int, int], reference_quirks: bool, device=None, source: str = "model"
) -> ImageSource:
    """The image PAMR follows for a segmentation of ``image`` (resized to ``resized`` for the models).

    ``source="model"`` (the default): as the authors' code, the model input (the image
    resized for the models, CLIP-normalised) resized back to the original ``size``;
    under ``reference_quirks`` with the reference's OpenCV resize and rounding. Measured
    on scenes with exact truth (benchmarks/bench_pamr.py) it beats the original image,
    whose fine texture PAMR follows into ragged edges. ``source="image"``: the original
    image at full resolution.
    """
    rgb = load_rgb(image)
    if source == "image":
        return original_guide(rgb, device)
    if source != "model":
        raise ValueError(f"source must be 'model' or 'image', got {source!r}.")
    small = clip_input(resize_image(rgb, tuple(resized), reference_quirks).to(device), reference_quirks)
    return resized_guide(small, tuple(size), exact=reference_quirks)


def refine_tile_size(pamr: Pamr, elements: int | None = None, size: tuple[int, int] | None = None) -> int:
    """Core side of a tile so that a grown tile stays within ``elements`` floats.

    An image of ``size`` that fits whole is one tile (no halo to pay for).
    """
    budget = max(1, int(elements or PAMR_ELEMENTS) // _PER_PIXEL)
    if size is not None and int(size[0]) * int(size[1]) <= budget:
        return max(int(size[0]), int(size[1]))
    return max(_MIN_CORE, math.isqrt(budget) - 2 * pamr.halo)


def finish_refined(
    logits: torch.Tensor,
    size: tuple[int, int],
    groups: Sequence[tuple[int, int]],
    guide: ImageSource,
    *,
    pamr: Pamr = Pamr(),
    logit_scale: float,
    prob_thd: float = 0.0,
    probs: np.ndarray | None = None,
    probability_stride: int = 1,
    elements: int | None = None,
    on_tile: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """PAMR-refined ``(labels, confidence)`` at the original ``size``; fills ``probs`` if given.

    ``logits`` are the ``(h, w, Q)`` low-resolution logits (channels last), ``groups``
    the query range of each class, ``probs`` a ``(classes, ceil(H / s), ceil(W / s))``
    array to fill with the class probabilities at stride ``s``. ``on_tile(done, tiles)``
    is called before and after every tile: it reports progress and may raise to cancel.
    """
    device = logits.device
    h0, w0 = (int(s) for s in size)
    q = logits.shape[-1]
    stride = int(probability_stride)
    query_class = torch.cat([torch.full((b - a,), i, dtype=torch.int32) for i, (a, b) in enumerate(groups)]).to(device)
    small = logits.permute(2, 0, 1)  # (Q, h, w) view
    rows_all = bilinear_taps(h0, logits.shape[0], device)
    cols_all = bilinear_taps(w0, logits.shape[1], device)
    labels = np.empty((h0, w0), np.int32)
    confidence = np.empty((h0, w0), np.float32)
    layout = list(tiles(h0, w0, refine_tile_size(pamr, elements, (h0, w0)), pamr.halo))
    for i, ((y0, y1, x0, x1), (a0, a1, b0, b1)) in enumerate(layout):
        if on_tile is not None:
            on_tile(i, len(layout))  # a cancel check before each tile's work
        aff = pamr_affinity(guide(a0, a1, b0, b1), pamr.dilations)
        rows = tuple(t[a0:a1] for t in rows_all)
        cols = tuple(t[b0:b1] for t in cols_all)
        keep_r = torch.arange(y0, y1, device=device)
        keep_r = keep_r[keep_r % stride == 0] - y0
        keep_c = torch.arange(x0, x1, device=device)
        keep_c = keep_c[keep_c % stride == 0] - x0
        top = total = best = None
        kept = []
        for q0 in range(0, q, _QUERIES_AT_ONCE):
            q1 = min(q, q0 + _QUERIES_AT_ONCE)
            z = resize_rows_band(small[q0:q1].contiguous(), rows, cols)  # (n, a1 - a0, b1 - b0)
            z = pamr_iterate(z, aff, pamr.iterations, pamr.dilations)
            z = z[:, y0 - a0 : y1 - a0, x0 - b0 : x1 - b0].mul(logit_scale)
            if probs is not None:
                kept.append(z[:, keep_r][:, :, keep_c])
            chunk_top, chunk_best = z.max(dim=0)
            if top is None:
                top, best = chunk_top, chunk_best.to(torch.int64)
                total = z.sub_(top).exp_().sum(dim=0)
                continue
            best = torch.where(chunk_top > top, chunk_best.to(torch.int64) + q0, best)
            new_top = torch.maximum(top, chunk_top)
            total = total.mul_(top.sub_(new_top).exp_()).add_(z.sub_(new_top).exp_().sum(dim=0))
            top = new_top
        del aff
        conf = total.reciprocal()
        lab = query_class[best]
        if prob_thd > 0:
            lab.masked_fill_(conf < prob_thd, 0)
        labels[y0:y1, x0:x1] = lab.cpu().numpy()
        confidence[y0:y1, x0:x1] = conf.cpu().numpy()
        if probs is not None and keep_r.numel() and keep_c.numel():
            soft = torch.cat(kept).sub_(top[keep_r][:, keep_c]).exp_().div_(total[keep_r][:, keep_c])
            r, c = -(-y0 // stride), -(-x0 // stride)
            for k, (a, b) in enumerate(groups):
                probs[k, r : r + keep_r.numel(), c : c + keep_c.numel()] = soft[a:b].amax(dim=0).cpu().numpy()
        if on_tile is not None:
            on_tile(i + 1, len(layout))
    return labels, confidence
