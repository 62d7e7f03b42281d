"""The vision side of one image, and its patch-query logits merged over the windows.

:class:`VisionFeatures` is what the per-image cache keeps: everything the text side
needs, so a prompt edit re-runs only :func:`merged_logits` (Eqs. 8-9 per window, then
the average of overlapping windows, spec section 1 step 5).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ._presence import adjust_text, cluster_leaders, object_similarity
from ._windows import merge_windows

__all__ = ["VisionFeatures", "merged_logits"]


@dataclass
class VisionFeatures:
    """Everything on the vision side of one image: reused when only the prompts change."""

    size: tuple[int, int]  # original
    resized: tuple[int, int]  # after the short-side rule
    padded: tuple[int, int]  # resized, padded to at least one patch (elongated images)
    windows: list[tuple[int, int, int, int]]  # on the padded image
    grid: tuple[int, int]
    features: torch.Tensor  # (n_windows, N, E) unit vectors
    crop_cls: torch.Tensor | None  # (n_windows, E), prior_from_crop presets
    image_cls: torch.Tensor | None  # (E,)
    timings: dict[str, float] = field(default_factory=dict)


def merged_logits(
    vision: VisionFeatures,
    text: torch.Tensor,
    clusters: np.ndarray,
    *,
    beta: float,
    alpha: float,
    prior_from_crop: bool = False,
    probe=None,
) -> torch.Tensor:
    """Merged patch-query logits ``(h, w, Q)`` on the resized image (unscaled, channels last).

    ``beta`` weighs the presence prior (Eq. 9, 0 switches it off), ``alpha`` the text
    adjustment (Eq. 8, 0 switches it off). Windows are merged on the padded image and
    the padding is cut off here, so only real pixels are labelled. ``probe`` (an
    ``EngineProbe``) records ``prior``, ``clusters``, ``text``, ``adjusted`` and
    ``patch_logits``.
    """
    prior = vision.crop_cls if prior_from_crop else vision.image_cls
    prior = prior @ text.T  # (Q,) or (n_windows, Q)
    feats = vision.features
    if alpha > 0:
        adjusted = adjust_text(text, feats, cluster_leaders(prior, clusters), alpha)
    else:
        adjusted = text.expand(feats.shape[0], -1, -1)
    sims = object_similarity(feats, adjusted, prior, beta)  # (B, N, Q)
    n_win, _, q = sims.shape
    patch_logits = sims.permute(0, 2, 1).reshape(n_win, q, *vision.grid)
    if probe is not None:
        probe.put(prior=prior, clusters=clusters, text=text, adjusted=adjusted, patch_logits=patch_logits)
    h, w = vision.resized
    merged = merge_windows(patch_logits, vision.windows, vision.padded)
    return merged if tuple(vision.padded) == (h, w) else merged[:h, :w].contiguous()
