"""Sliding windows over the resized image and the merge of their logits (spec section 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "window_coords", "bilinear_taps", "resize_rows_band", "resize_rows_band_channels_last", "resize_bilinear",
    "merge_windows",
]


def window_coords(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """``(y1, y2, x1, x2)`` of each crop, row-major.

    The last window in each direction is moved back to end at the image edge; an
    image smaller than a crop in a direction gets one window covering it.
    """
    def starts(size: int) -> list[tuple[int, int]]:
        n = max(size - crop + stride - 1, 0) // stride + 1
        out = []
        for i in range(n):
            end = min(i * stride + crop, size)
            out.append((max(end - crop, 0), end))
        return out

    return [(y1, y2, x1, x2) for (y1, y2) in starts(height) for (x1, x2) in starts(width)]


def bilinear_taps(out_size: int, in_size: int, device=None):
    """Source indices and weights of 1-D bilinear interpolation, ``align_corners=False``.

    Same taps as ``F.interpolate(mode="bilinear")`` (half-pixel centres, negative
    source coordinates clamped to 0). Returns ``(i0, i1, lam)``: output ``o`` is
    ``(1 - lam[o]) * x[i0[o]] + lam[o] * x[i1[o]]``, so a large resize can be
    evaluated in bands of output rows.
    """
    scale = in_size / out_size
    dst = torch.arange(out_size, dtype=torch.float64)
    src = ((dst + 0.5) * scale - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp_max(in_size - 1)
    i1 = (i0 + 1).clamp_max(in_size - 1)
    lam = (src - i0).float()
    return i0.to(device), i1.to(device), lam.to(device)


def resize_rows_band(x: torch.Tensor, rows, cols) -> torch.Tensor:
    """Bilinear resize of ``(C, h, w)`` for a band of output rows.

    ``rows`` and ``cols`` are :func:`bilinear_taps` results (``rows`` already cut to
    the band). Returns ``(C, band, W)``.
    """
    r0, r1, rl = rows
    c0, c1, cl = cols
    t = x[:, r0] * (1 - rl)[:, None] + x[:, r1] * rl[:, None]
    out = t[:, :, c0].mul_(1 - cl)  # in place: two band-sized buffers at a time, not four
    return out.add_(t[:, :, c1].mul_(cl))


def merge_windows(
    window_logits: torch.Tensor, windows: list[tuple[int, int, int, int]], size: tuple[int, int]
) -> torch.Tensor:
    """Average the logits of overlapping windows on a canvas of ``size``.

    ``window_logits`` is ``(n_windows, Q, gh, gw)`` on each window's patch grid; each is
    resized bilinearly to its window before the average. Returns ``(H, W, Q)``
    (channels last: the final step reduces over the queries of each pixel, which is
    several times faster on contiguous memory).
    """
    if len(windows) == 1 and tuple(windows[0]) == (0, size[0], 0, size[1]):
        return resize_bilinear(window_logits[0], tuple(size)).permute(1, 2, 0).contiguous()
    q = window_logits.shape[1]
    canvas = torch.zeros(*size, q, device=window_logits.device, dtype=window_logits.dtype)
    count = torch.zeros(*size, 1, device=window_logits.device, dtype=window_logits.dtype)
    for (y1, y2, x1, x2), logit in zip(windows, window_logits):
        canvas[y1:y2, x1:x2] += resize_bilinear(logit, (y2 - y1, x2 - x1)).permute(1, 2, 0)
        count[y1:y2, x1:x2] += 1
    return canvas.div_(count)


def resize_rows_band_channels_last(x: torch.Tensor, rows, cols) -> torch.Tensor:
    """Bilinear resize of ``(h, w, C)`` for a band of output rows: ``(band, W, C)``.

    :func:`resize_rows_band` for channels-last data (same taps, same arithmetic).
    """
    r0, r1, rl = rows
    c0, c1, cl = cols
    t = x[r0] * (1 - rl)[:, None, None] + x[r1] * rl[:, None, None]
    out = t[:, c0].mul_((1 - cl)[:, None])  # in place: two band-sized buffers at a time, not four
    return out.add_(t[:, c1].mul_(cl[:, None]))


def resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(C, h, w)`` -> ``(C, H, W)`` bilinear, ``align_corners=False``."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
