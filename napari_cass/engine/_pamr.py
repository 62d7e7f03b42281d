"""PAMR: pixel-adaptive mask refinement (Araslanov & Roth 2020), tile by tile with a halo.

The authors' CASS code can refine its upsampled logits with PAMR before the final argmax
(``pamr_steps=10, pamr_stride=(8, 16)``). Per pixel, PAMR compares the image with its 8
neighbours at each dilation ``d`` (16 neighbours for dilations 8 and 16), turns the
colour differences into affinity weights, and replaces every class's logit by the
weighted mean of the neighbours' logits, 10 times. Boundaries move to colour edges.

The arithmetic, per pixel ``p`` and neighbour ``n`` (offset ``d * (dy, dx)``, positions
outside the image clamped to the edge, i.e. replicate padding):

- ``std_c(p)``: sample standard deviation (``/ 17``) of channel ``c`` over the 18 values
  "centre and its 8 neighbours" for each dilation (the centre counted once per dilation);
- ``a_n(p) = mean_c -|x_c(p) - x_c(n)| / (1e-8 + 0.1 std_c(p))``, softmax over the 16 ``n``;
- ``m(p) <- sum_n a_n(p) m(n)`` per class, ``iterations`` times (the centre is not a term).

The reference builds ``(classes, 16, H, W)`` tensors at once (24 MP with 5 classes: ~8 GB).
Here the 16 affinity maps are computed once per tile and queries are refined a few at a
time, accumulating one neighbour at a time. A tile is extended by a halo: after ``T``
iterations the value at ``p`` depends on logits within ``T * max(d)`` pixels of ``p``
(each iteration reads one neighbour at most ``max(d)`` away) and on affinities computed
within ``(T - 1) * max(d)`` of ``p``, which read the image at most ``max(d)`` further.
A tile edge that is not an image edge replicates wrong values, and the error travels at
most ``max(d)`` pixels per iteration inwards, so a halo of ``T * max(d)`` pixels (160 for
the reference's 10 iterations and dilation 16) leaves the tile's core exact. Every step
is an element-wise operation in a fixed order (no convolution, no library softmax or
reduction whose blocking depends on the tensor's shape), so the tiled result is
bit-identical to the untiled one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

__all__ = [
    "PAMR_DILATIONS", "PAMR_ITERATIONS", "REFINE_CHOICES", "Pamr", "check_refine", "pamr_affinity",
    "pamr_iterate", "refine_pamr", "tiles",
]

PAMR_ITERATIONS = 10
PAMR_DILATIONS = (8, 16)
#: Accepted values of the ``refine`` setting.
REFINE_CHOICES = ("none", "pamr")

# Neighbour offsets in the reference's kernel order (row-major 3 x 3 without the centre).
_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def check_refine(refine: str | None) -> str:
    """``"pamr"`` or ``"none"`` (``None`` and ``False`` mean none); raises saying what is accepted."""
    if refine is None or refine is False:
        return "none"
    if isinstance(refine, str) and refine.strip().lower() in REFINE_CHOICES:
        return refine.strip().lower()
    raise ValueError(f"Unknown refine={refine!r}: choose one of {', '.join(REFINE_CHOICES)} (or None).")


@dataclass(frozen=True)
class Pamr:
    """PAMR's settings: the reference's 10 iterations with dilations 8 and 16 by default."""

    iterations: int = PAMR_ITERATIONS
    dilations: tuple[int, ...] = PAMR_DILATIONS

    def __post_init__(self):
        if int(self.iterations) < 0 or not self.dilations or min(int(d) for d in self.dilations) < 1:
            raise ValueError(
                f"PAMR needs iterations >= 0 and dilations >= 1, got {self.iterations!r} and {self.dilations!r}."
            )

    @property
    def halo(self) -> int:
        """Pixels a tile is extended by on each side so that its core is exact (module docstring)."""
        return int(self.iterations) * max(int(d) for d in self.dilations)


def _neighbours(dilations) -> list[tuple[int, int]]:
    return [(dy * d, dx * d) for d in dilations for (dy, dx) in _OFFSETS]


def _view(padded: torch.Tensor, pad: int, dy: int, dx: int, h: int, w: int) -> torch.Tensor:
    """The ``(..., h, w)`` window of ``padded`` shifted by ``(dy, dx)``: the neighbour's values."""
    return padded[..., pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def _replicate(x: torch.Tensor, pad: int) -> torch.Tensor:
    return F.pad(x[None], [pad] * 4, mode="replicate")[0]


def pamr_affinity(image: torch.Tensor, dilations=PAMR_DILATIONS) -> torch.Tensor:
    """``(len(dilations) * 8, h, w)`` affinity weights of an image ``(C, h, w)`` (softmax over dim 0).

    Positions outside the image are clamped to its edge. The weights do not change when a
    channel is scaled or shifted (the difference is divided by the channel's local spread),
    so 0..255 pixels and normalised ones give the same weights but for the ``1e-8`` guard.
    """
    c, h, w = image.shape
    pad = max(int(d) for d in dilations)
    xp = _replicate(image.float(), pad)  # the centre values are its interior: no second copy
    offsets = _neighbours(dilations)
    # sample std over, per dilation, the centre and its 8 neighbours (18 values, / 17);
    # one channel at a time, so the temporaries are single maps
    values = [(0, 0) if i % 9 == 0 else offsets[i - 1 - i // 9] for i in range(9 * len(dilations))]
    denom = torch.empty((c, h, w), dtype=xp.dtype, device=xp.device)
    for ch in range(c):
        total = torch.zeros((h, w), dtype=xp.dtype, device=xp.device)
        for dy, dx in values:
            total += _view(xp[ch], pad, dy, dx, h, w)
        mean = total.div_(len(values))
        var = torch.zeros_like(mean)
        for dy, dx in values:
            dev = _view(xp[ch], pad, dy, dx, h, w) - mean
            var += dev.mul_(dev)
        denom[ch] = var.div_(len(values) - 1).sqrt_().mul_(0.1).add_(1e-8)
        del total, mean, var, dev
    aff = torch.empty((len(offsets), h, w), dtype=xp.dtype, device=xp.device)
    for n, (dy, dx) in enumerate(offsets):
        # mean over channels of -|x - x_n| / denom, summed in channel order
        acc = aff[n]
        for ch in range(c):
            diff = (_view(xp[ch], pad, 0, 0, h, w) - _view(xp[ch], pad, dy, dx, h, w)).abs_().div_(denom[ch])
            if ch == 0:
                torch.neg(diff, out=acc)
            else:
                acc -= diff
        acc /= c
    del xp, denom
    # softmax over the neighbours, element-wise in a fixed order (shape-independent rounding)
    top = aff[0].clone()
    for n in range(1, len(offsets)):
        torch.maximum(top, aff[n], out=top)
    aff.sub_(top).exp_()
    norm = aff[0].clone()
    for n in range(1, len(offsets)):
        norm += aff[n]
    return aff.div_(norm)


def pamr_iterate(logits: torch.Tensor, affinity: torch.Tensor, iterations: int, dilations=PAMR_DILATIONS) -> torch.Tensor:
    """``iterations`` PAMR steps of ``(Q, h, w)`` logits with :func:`pamr_affinity` weights.

    Each step replaces every logit by the affinity-weighted sum of its 16 neighbours'
    (edge-clamped), one neighbour at a time: two ``(Q, h, w)`` buffers and one padded copy, never 16.
    """
    pad = max(int(d) for d in dilations)
    offsets = _neighbours(dilations)
    q, h, w = logits.shape
    mask = logits.float()
    out = torch.empty_like(mask)
    for _ in range(int(iterations)):
        padded = _replicate(mask, pad)
        out.zero_()
        for n, (dy, dx) in enumerate(offsets):
            out.addcmul_(_view(padded, pad, dy, dx, h, w), affinity[n])
        del padded
        mask, out = out, (mask if mask is not logits else torch.empty_like(mask))
    return mask


def tiles(height: int, width: int, tile: int, halo: int) -> Iterator[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """``(core, extended)`` rectangles ``(y0, y1, x0, x1)`` covering the image row-major.

    Cores are ``tile x tile`` (smaller at the bottom and right); each extended rectangle
    is its core grown by ``halo`` on every side, clipped to the image.
    """
    if tile < 1 or halo < 0:
        raise ValueError(f"tile must be >= 1 and halo >= 0, got {tile} and {halo}.")
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            y1, x1 = min(height, y0 + tile), min(width, x0 + tile)
            yield (y0, y1, x0, x1), (max(0, y0 - halo), min(height, y1 + halo), max(0, x0 - halo), min(width, x1 + halo))


def refine_pamr(
    image: torch.Tensor,
    logits: torch.Tensor,
    pamr: Pamr = Pamr(),
    *,
    tile: int | None = None,
    halo: int | None = None,
) -> torch.Tensor:
    """PAMR of full-size ``(Q, H, W)`` logits guided by the ``(C, H, W)`` image, tile by tile.

    ``tile=None`` refines the whole image at once. ``halo`` defaults to :attr:`Pamr.halo`,
    the smallest that makes the tiled result equal the untiled one; a smaller one is
    accepted for tests that show why. The engine uses the same tiles without ever holding
    the full-size logits (:mod:`._pamr_finish`).
    """
    if image.shape[-2:] != logits.shape[-2:]:
        raise ValueError(f"Image {tuple(image.shape)} and logits {tuple(logits.shape)} differ in size.")
    h, w = logits.shape[-2:]
    halo = pamr.halo if halo is None else int(halo)
    out = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    for (y0, y1, x0, x1), (a0, a1, b0, b1) in tiles(h, w, tile or max(h, w), halo):
        aff = pamr_affinity(image[:, a0:a1, b0:b1], pamr.dilations)
        refined = pamr_iterate(logits[:, a0:a1, b0:b1], aff, pamr.iterations, pamr.dilations)
        out[:, y0:y1, x0:x1] = refined[:, y0 - a0 : y1 - a0, x0 - b0 : x1 - b0]
    return out
