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
    """Labels and the winning probability at the original image resolution.

    Attributes
    ----------
    labels : numpy.ndarray
        ``(H, W)`` int32, class index per pixel (0 is the background class when
        ``has_background``).
    probabilities : numpy.ndarray or None
        ``(num_classes, H, W)`` float32, after the softmax and the max over synonyms;
        ``None`` unless :meth:`Segmenter.segment` was called with
        ``return_probabilities=True`` (they cost 4 bytes per class and pixel). With a
        ``probability_stride`` s they are the ``[:, ::s, ::s]`` subsampling.
    classes : list of ClassPrompt
        The classes, in label order.
    has_background : bool
        Whether class 0 is a background class (``prob_thd`` rule applied).
    timings : dict
        Seconds per stage (``vision``, ``text``, ``similarity``, ``total``...).
    from_cache : bool
        True when the vision side came from the per-image cache.
    confidence : numpy.ndarray
        ``(H, W)`` float32: the winning probability per pixel (the largest class
        probability, also where ``prob_thd`` sent the pixel to the background).
        Computed from ``probabilities`` when those are given and it is not.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    classes: list[ClassPrompt]
    has_background: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    from_cache: bool = False
    confidence: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.confidence is None:
            if self.probabilities is None or self.probabilities.shape[1:] != self.labels.shape:
                raise ValueError(
                    "SegmentationResult needs the confidence (H, W), or full-resolution "
                    "probabilities (classes, H, W) to compute it from."
                )
            self.confidence = np.asarray(self.probabilities.max(axis=0), dtype=np.float32)

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
