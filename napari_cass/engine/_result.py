"""What a segmentation returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._prompts import ClassPrompt

__all__ = ["SegmentationResult", "SegmentationCancelled"]


class SegmentationCancelled(Exception):
    """Raised inside :meth:`Segmenter.segment` when the ``cancel`` callback says so."""


@dataclass
class SegmentationResult:
    """Labels and class probabilities at the original image resolution.

    Attributes
    ----------
    labels : numpy.ndarray
        ``(H, W)`` int32, class index per pixel (0 is the background class when
        ``has_background``).
    probabilities : numpy.ndarray
        ``(num_classes, H, W)`` float32, after the softmax and the max over synonyms.
    classes : list of ClassPrompt
        The classes, in label order.
    has_background : bool
        Whether class 0 is a background class (``prob_thd`` rule applied).
    timings : dict
        Seconds per stage (``vision``, ``text``, ``similarity``, ``total``...).
    from_cache : bool
        True when the vision side came from the per-image cache.
    """

    labels: np.ndarray
    probabilities: np.ndarray
    classes: list[ClassPrompt]
    has_background: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    from_cache: bool = False

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def confidence(self) -> np.ndarray:
        """``(H, W)`` float32: the winning probability per pixel."""
        return self.probabilities.max(axis=0)
