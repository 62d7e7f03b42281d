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
    def label_offset(self) -> int:
        """Mask value of class 0: 0 when it is the background, else 1.

        Masks (napari layers, CLI and dataset exports) keep value 0 for background or
        unlabelled pixels, so engine class ``k`` is written as ``k + label_offset``.
        """
        return 0 if self.has_background else 1

    def mask(self, dtype=np.int32) -> np.ndarray:
        """``(H, W)`` labels in the mask convention: 0 = background / unlabelled."""
        return self.labels.astype(dtype) + np.asarray(self.label_offset, dtype=dtype)

    @property
    def mask_classes(self) -> list[ClassPrompt]:
        """The class of every mask value, value 0 first (a word-less "background" if needed)."""
        if self.has_background:
            return list(self.classes)
        return [ClassPrompt(name="background", queries=()), *self.classes]

    @property
    def confidence(self) -> np.ndarray:
        """``(H, W)`` float32: the winning probability per pixel."""
        return self.probabilities.max(axis=0)
