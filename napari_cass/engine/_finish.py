"""From merged low-resolution logits to labels and confidence, in bands of rows (spec 1, step 6).

The last step of the pipeline resizes the logits ``(h, w, Q)`` of the resized image to
the original ``H x W``, multiplies by the logit scale, takes the softmax over queries,
the max over each class's synonyms and the argmax. Done at once, it materialises
``(classes, H, W)`` floats: 90 MB per class for a 6000 x 4000 image. The labels and the
winning probability need none of that: this module evaluates the resize a band of
output rows at a time, so the memory beyond the ``(H, W)`` outputs and the low-resolution
logits is bounded by ``band_elements`` floats whatever the number of classes (a band
holds at least one row: ``2 Q W`` floats with very many classes).

Per pixel, with ``z`` the scaled logits and ``m = max_q z_q``: the winning class is the
class of the first query reaching ``m`` (the same as the argmax over classes of the
max over synonyms, since synonyms are contiguous and in class order), and its
probability is ``exp(m - m) / sum_q exp(z_q - m) = 1 / sum_q exp(z_q - m)``, the value
the softmax gives.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ._windows import bilinear_taps, resize_rows_band_channels_last

__all__ = ["BAND_ELEMENTS", "Finished", "finish_logits", "query_groups", "release_freed_heap"]

#: Floats (4 bytes each) a band may use: its resized logits ``(rows, W, Q)`` and one
#: temporary of that size, plus per-pixel indices and sums (counted as 6 floats a
#: pixel). A band holds at least one row. 2M floats: 8 MB.
BAND_ELEMENTS = 2_000_000
_PER_PIXEL_FLOATS = 6


@dataclass
class Finished:
    """Outputs at the original resolution."""

    labels: np.ndarray  # (H, W) int32
    confidence: np.ndarray  # (H, W) float32
    probabilities: np.ndarray | None  # (C, ceil(H / stride), ceil(W / stride)) float32


def _all_finite(x: torch.Tensor) -> bool:
    """``torch.isfinite(x).all()`` a block of rows at a time.

    ``isfinite`` of a float tensor makes a float temporary of its size (``abs``) and a
    boolean one: 130 MB for 150 classes' logits, checked in blocks of ~1M elements.
    """
    step = max(1, BAND_ELEMENTS // 2 // max(1, x[0].numel()))
    return all(bool(torch.isfinite(x[i : i + step]).all()) for i in range(0, x.shape[0], step))


def release_freed_heap() -> bool:
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim``); True if it ran.

    The stages before the finish (whole-image CLIP pass, text tower, window merge) free
    many temporaries of a few to 30 MB that glibc keeps in the process's heap (measured:
    +70-230 MB resident with 150 classes on a 6000 x 4000 image). The two ``(H, W)`` outputs are new mappings
    that cannot reuse those pages, so returning them first lowers the peak. Nothing
    else changes: no live memory is touched. A no-op off glibc (macOS, Windows, musl).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim`` from the running process, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library Python itself runs on
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def query_groups(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """``[start, stop)`` query ranges of classes with ``sizes`` synonyms each."""
    groups, start = [], 0
    for n in sizes:
        groups.append((start, start + int(n)))
        start += int(n)
    return groups


def finish_logits(
    logits: torch.Tensor,
    size: tuple[int, int],
    groups: Sequence[tuple[int, int]],
    *,
    logit_scale: float,
    prob_thd: float = 0.0,
    return_probabilities: bool = False,
    probability_stride: int = 1,
    band_elements: int | None = None,
    on_band: Callable[[int, int], None] | None = None,
    guide=None,
    pamr=None,
) -> Finished:
    """Labels and winning probability of every pixel of the original image.

    Parameters
    ----------
    logits : torch.Tensor
        ``(h, w, Q)`` merged patch-query logits on the resized image (unscaled,
        channels last so that the reductions over queries run on contiguous memory).
    size : (int, int)
        The original ``(H, W)``.
    groups : list of (int, int)
        Query range of each class (:func:`query_groups`), in label order.
    logit_scale : float
        Multiplies the logits before the softmax (40 in every preset).
    prob_thd : float
        Pixels whose winning probability is below it get class 0 (0 disables).
    return_probabilities : bool
        Also return the class probabilities (softmax, then max over synonyms).
    probability_stride : int
        With ``return_probabilities``, keep every ``stride``-th row and column
        (``[::stride, ::stride]`` of the full array), to bound its memory.
    band_elements : int, optional
        Floats per band (default :data:`BAND_ELEMENTS`).
    on_band : callable, optional
        ``on_band(rows_done, rows)`` after each band: progress through the
        full-resolution stage, and the place to cancel it (raise from it).
    guide : callable, optional
        With it, PAMR refines the logits first, tile by tile, following this image
        (:func:`._pamr_finish.finish_refined`, with ``pamr`` its settings;
        ``on_band(tiles_done, tiles)`` then follows the tiles).

    Raises
    ------
    FloatingPointError
        If the logits hold NaN or infinity: no NaN ever leaves the engine.
    """
    if not _all_finite(logits):
        bad = int((~torch.isfinite(logits)).sum())
        raise FloatingPointError(
            f"The segmentation produced {bad} non-finite (NaN or infinite) logits out of "
            f"{logits.numel()}; no result is returned rather than a wrong one. This is a bug: "
            "please report it with the method, preset and image shape. Another method "
            "(e.g. method='cass') may work meanwhile."
        )
    stride = int(probability_stride)
    if stride < 1:
        raise ValueError(f"probability_stride must be a positive integer, got {probability_stride!r}.")
    h, w, q = logits.shape
    h0, w0 = (int(s) for s in size)
    if groups[-1][1] != q:
        raise ValueError(f"The class groups cover {groups[-1][1]} queries but there are {q} logits.")
    device = logits.device
    release_freed_heap()  # before the (H, W) outputs are mapped: see its docstring
    budget = int(band_elements or BAND_ELEMENTS)
    band = max(1, min(h0, budget // ((2 * q + _PER_PIXEL_FLOATS) * w0)))
    query_class = torch.cat(
        [torch.full((b - a,), i, dtype=torch.int32) for i, (a, b) in enumerate(groups)]
    ).to(device)
    probs = None
    if return_probabilities:
        probs = np.empty((len(groups), -(-h0 // stride), -(-w0 // stride)), np.float32)
    if guide is not None:
        from ._pamr import Pamr
        from ._pamr_finish import finish_refined

        labels, confidence = finish_refined(
            logits, (h0, w0), groups, guide, pamr=pamr or Pamr(), logit_scale=logit_scale, prob_thd=prob_thd,
            probs=probs, probability_stride=stride, on_tile=on_band,
        )
        return Finished(labels=labels, confidence=confidence, probabilities=probs)
    labels = np.empty((h0, w0), np.int32)
    confidence = np.empty((h0, w0), np.float32)
    rows_all = bilinear_taps(h0, h, device)
    cols = bilinear_taps(w0, w, device)
    for r0 in range(0, h0, band):
        r1 = min(h0, r0 + band)
        z = resize_rows_band_channels_last(logits, tuple(t[r0:r1] for t in rows_all), cols)  # (b, W, Q)
        z.mul_(logit_scale)
        top, best_query = z.max(dim=-1)
        z.sub_(top[..., None]).exp_()
        total = z.sum(dim=-1)
        best = total.reciprocal()
        lab = query_class[best_query]  # int32
        del top, best_query
        if prob_thd > 0:
            lab.masked_fill_(best < prob_thd, 0)
        labels[r0:r1] = lab.cpu().numpy()
        confidence[r0:r1] = best.cpu().numpy()
        if probs is not None:
            keep = torch.arange(r0, r1, device=device)
            keep = keep[keep % stride == 0] - r0
            if keep.numel():
                soft = z[keep, ::stride] / total[keep, ::stride, None]  # (k, W', Q)
                index = query_class.long().expand_as(soft)
                cls = soft.new_zeros(*soft.shape[:2], len(groups)).scatter_reduce_(-1, index, soft, reduce="amax")
                first = (r0 + int(keep[0])) // stride
                probs[:, first : first + keep.numel()] = cls.permute(2, 0, 1).cpu().numpy()
        if on_band is not None:
            on_band(r1, h0)
    return Finished(labels=labels, confidence=confidence, probabilities=probs)
