"""Boundary quality, measured: a boundary F-score and a synthetic set with exact masks.

Without real weights nothing can be said about real predictions, but what boundary
refinement (PAMR) does to CASS-like coarse labels can be measured: the truth is
averaged over the 16-pixel patch grid the models see and upsampled as the engine does,
and the result is scored against the exact truth before and after refinement. The
scenes: shapes and textured regions drawn with exact masks, and scikit-image's ``coins``
photo with a mask derived from it (Otsu threshold, holes filled, specks removed: the
coins lie on a flat background, so this mask follows their visible edges).

The boundary F-score (Csurka et al. 2013's BF, with a fixed tolerance): boundary pixels
are pixels with a 4-neighbour of another label; precision is the share of predicted
boundary pixels within ``tolerance`` pixels (Euclidean) of a true boundary pixel, recall
the converse, counts summed over a set before the ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["BoundaryCounts", "Scene", "boundary_counts", "boundary_map", "coarse_logits", "synthetic_scenes"]


def boundary_map(labels: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another label (both sides of every edge)."""
    b = np.zeros(labels.shape, bool)
    dy = labels[1:] != labels[:-1]
    dx = labels[:, 1:] != labels[:, :-1]
    b[1:] |= dy
    b[:-1] |= dy
    b[:, 1:] |= dx
    b[:, :-1] |= dx
    return b


@dataclass
class BoundaryCounts:
    """Matched and total boundary pixels, summed over images; ``f_score`` from the sums."""

    pred_matched: int = 0
    pred_total: int = 0
    truth_matched: int = 0
    truth_total: int = 0

    def add(self, other: BoundaryCounts) -> None:
        self.pred_matched += other.pred_matched
        self.pred_total += other.pred_total
        self.truth_matched += other.truth_matched
        self.truth_total += other.truth_total

    @property
    def f_score(self) -> float:
        p = self.pred_matched / self.pred_total if self.pred_total else 1.0
        r = self.truth_matched / self.truth_total if self.truth_total else 1.0
        return 2 * p * r / (p + r) if p + r else 0.0


def boundary_counts(pred: np.ndarray, truth: np.ndarray, tolerance: float = 2.0) -> BoundaryCounts:
    """Boundary pixels of ``pred`` near ``truth``'s and the converse (see the module docstring)."""
    if pred.shape != truth.shape:
        raise ValueError(f"Prediction {pred.shape} and truth {truth.shape} differ in shape.")
    bp, bt = boundary_map(pred), boundary_map(truth)
    near_truth = ndimage.distance_transform_edt(~bt) <= tolerance if bt.any() else np.zeros(bt.shape, bool)
    near_pred = ndimage.distance_transform_edt(~bp) <= tolerance if bp.any() else np.zeros(bp.shape, bool)
    return BoundaryCounts(int((bp & near_truth).sum()), int(bp.sum()), int((bt & near_pred).sum()), int(bt.sum()))


@dataclass
class Scene:
    """A test picture and its exact labels (0..classes-1)."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8
    truth: np.ndarray  # (H, W) int
    classes: int


def coarse_logits(truth: np.ndarray, classes: int, short_side: int = 336, patch: int = 16):
    """CASS-like logits ``(h, w, classes)`` on the resized image from exact labels.

    The one-hot truth is resized to the models' size (short side ``short_side``, as the
    engine resizes the image), averaged over each ``patch x patch`` cell of the patch grid
    (the remainder rows and columns dropped, as the patch embedding drops them) and
    upsampled bilinearly back to the resized size, as the engine upsamples patch logits.
    The engine's finish then resizes them to the original size (and refines them).
    """
    import torch
    import torch.nn.functional as F

    from ..engine._image import resized_size

    height, width = truth.shape
    h, w = resized_size(height, width, short_side)
    onehot = torch.from_numpy(np.eye(classes, dtype=np.float32)[truth]).permute(2, 0, 1)[None]
    small = F.interpolate(onehot, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    gh, gw = max(1, h // patch), max(1, w // patch)
    grid = F.adaptive_avg_pool2d(small[:, :, : gh * patch, : gw * patch], (gh, gw))
    up = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
    return up[0].permute(1, 2, 0).contiguous()


def _textured(rng, labels: np.ndarray, colours: np.ndarray, noise: float) -> np.ndarray:
    img = colours[labels].astype(np.float32)
    grain = ndimage.gaussian_filter(rng.normal(0, 1, labels.shape + (3,)), (1.5, 1.5, 0))
    img += noise * grain / grain.std()
    return np.clip(img, 0, 255).astype(np.uint8)


def _shapes(rng, size) -> Scene:
    from skimage.draw import disk, ellipse, polygon

    h, w = size
    truth = np.zeros(size, np.int64)
    for k in range(1, 5):
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        kind = k % 3
        if kind == 0:
            rr, cc = disk((cy, cx), rng.uniform(0.08, 0.18) * min(h, w), shape=size)
        elif kind == 1:
            rr, cc = ellipse(cy, cx, rng.uniform(0.06, 0.2) * h, rng.uniform(0.06, 0.2) * w, shape=size,
                             rotation=rng.uniform(0, np.pi))
        else:
            n = 5
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = rng.uniform(0.08, 0.2, n) * min(h, w)
            rr, cc = polygon(cy + rad * np.sin(ang), cx + rad * np.cos(ang), shape=size)
        truth[rr, cc] = k
    colours = rng.uniform(30, 225, (5, 3))
    return Scene("shapes", _textured(rng, truth, colours, 12.0), truth, 5)


def _waves(rng, size) -> Scene:
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    edge1 = 0.35 * h + 0.08 * h * np.sin(xx / w * 2 * np.pi * rng.uniform(1.5, 3) + rng.uniform(0, 6))
    edge2 = 0.7 * h + 0.06 * h * np.sin(xx / w * 2 * np.pi * rng.uniform(2, 5) + rng.uniform(0, 6))
    truth = (yy > edge1).astype(np.int64) + (yy > edge2)
    colours = rng.uniform(40, 215, (3, 3))
    return Scene("textures", _textured(rng, truth, colours, 25.0), truth, 3)


def _coins() -> Scene:
    from skimage import data, filters, morphology

    grey = data.coins()
    mask = grey > filters.threshold_otsu(grey)
    mask = ndimage.binary_fill_holes(morphology.remove_small_objects(mask, max_size=200))
    mask = ndimage.binary_opening(mask, iterations=2)
    return Scene("coins (photo)", np.repeat(grey[..., None], 3, axis=2), mask.astype(np.int64), 2)


def synthetic_scenes(count: int = 6, size: tuple[int, int] = (384, 512), seed: int = 0, photos: bool = True) -> list[Scene]:
    """``count`` drawn scenes (shapes and textured bands, alternating) plus the coins photo."""
    rng = np.random.default_rng(seed)
    scenes = [(_shapes if i % 2 == 0 else _waves)(rng, size) for i in range(count)]
    return scenes + ([_coins()] if photos else [])
