"""Benchmark metrics: mmsegmentation's IoUMetric definition, streamed over images.

Per-class pixel counts are summed over the whole dataset before dividing (a
dataset-level IoU, not a mean of per-image IoUs), so memory stays constant in the
number of images and the numbers match the published tables.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["IoUAccumulator", "intersect_and_union", "iou_from_counts"]


def intersect_and_union(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class pixel counts of one image, exactly as mmseg's ``intersect_and_union``.

    Pixels whose ground truth equals ``ignore_index`` are dropped. Ground-truth
    values outside ``[0, num_classes)`` (other than the ignore index) are not
    counted as labelled but their predictions still count, like mmseg's histogram.

    Returns
    -------
    area_intersect, area_union, area_pred_label, area_label : numpy.ndarray
        ``(num_classes,)`` int64 each.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(
            f"Prediction shape {pred.shape} differs from ground truth shape {gt.shape}: "
            "predict at the ground truth's resolution."
        )
    if not np.issubdtype(pred.dtype, np.integer) or not np.issubdtype(gt.dtype, np.integer):
        raise ValueError(
            f"Prediction and ground truth must be integer label maps, got {pred.dtype} and {gt.dtype}."
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}.")
    keep = gt != ignore_index
    p = pred[keep].astype(np.int64, copy=False)
    g = gt[keep].astype(np.int64, copy=False)
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(
            f"Prediction holds labels outside 0..{num_classes - 1} "
            f"(min {p.min()}, max {p.max()}): the class list and the model output disagree."
        )

    def hist(values: np.ndarray) -> np.ndarray:
        values = values[(values >= 0) & (values < num_classes)]
        return np.bincount(values, minlength=num_classes).astype(np.int64)

    area_intersect = hist(p[p == g])
    area_pred = hist(p)
    area_label = hist(g)
    area_union = area_pred + area_label - area_intersect
    return area_intersect, area_union, area_pred, area_label


def iou_from_counts(intersect: np.ndarray, union: np.ndarray) -> np.ndarray:
    """Per-class IoU; NaN for a class absent from both prediction and ground truth."""
    intersect = np.asarray(intersect, dtype=np.float64)
    union = np.asarray(union, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, intersect / np.where(union > 0, union, 1), np.nan)


class IoUAccumulator:
    """Streaming per-class intersection / union / prediction / label pixel counts.

    Parameters
    ----------
    num_classes : int
        Number of classes; predictions must lie in ``[0, num_classes)``.
    ignore_index : int
        Ground-truth value of pixels that do not count (255 in every benchmark).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}.")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.intersect = np.zeros(self.num_classes, dtype=np.int64)
        self.union = np.zeros(self.num_classes, dtype=np.int64)
        self.pred_area = np.zeros(self.num_classes, dtype=np.int64)
        self.label_area = np.zeros(self.num_classes, dtype=np.int64)
        self.num_images = 0

    def update(
        self, pred: np.ndarray, gt: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Add one image; returns its own counts (for the per-image cache)."""
        counts = intersect_and_union(pred, gt, self.num_classes, self.ignore_index)
        self.add_counts(*counts)
        return counts

    def add_counts(
        self,
        intersect: np.ndarray,
        union: np.ndarray,
        pred_area: np.ndarray,
        label_area: np.ndarray,
    ) -> None:
        """Add one image's counts computed earlier (a cached, resumed image)."""
        arrays = [np.asarray(a, dtype=np.int64) for a in (intersect, union, pred_area, label_area)]
        for a in arrays:
            if a.shape != (self.num_classes,):
                raise ValueError(
                    f"Counts have shape {a.shape}, expected ({self.num_classes},): "
                    "the cached results belong to another class list."
                )
        self.intersect += arrays[0]
        self.union += arrays[1]
        self.pred_area += arrays[2]
        self.label_area += arrays[3]
        self.num_images += 1

    @property
    def per_class_iou(self) -> np.ndarray:
        """``(num_classes,)`` IoU, NaN where a class is in neither prediction nor truth."""
        return iou_from_counts(self.intersect, self.union)

    @property
    def per_class_acc(self) -> np.ndarray:
        """``(num_classes,)`` recall (mmseg's "Acc"), NaN where a class has no labelled pixel."""
        return iou_from_counts(self.intersect, self.label_area)

    @property
    def miou(self) -> float:
        """Mean IoU over classes present in prediction or ground truth (NaN-mean)."""
        iou = self.per_class_iou
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    @property
    def macc(self) -> float:
        """Mean per-class accuracy (NaN-mean)."""
        acc = self.per_class_acc
        return float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")

    @property
    def pacc(self) -> float:
        """Pixel accuracy: correct pixels / labelled pixels (mmseg's aAcc)."""
        total = int(self.label_area.sum())
        return float(self.intersect.sum() / total) if total else float("nan")

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state, to resume an interrupted evaluation."""
        return {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "num_images": self.num_images,
            "intersect": self.intersect.tolist(),
            "union": self.union.tolist(),
            "pred_area": self.pred_area.tolist(),
            "label_area": self.label_area.tolist(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> IoUAccumulator:
        """Rebuild from :meth:`state_dict` output."""
        try:
            acc = cls(int(state["num_classes"]), int(state.get("ignore_index", 255)))
            for key in ("intersect", "union", "pred_area", "label_area"):
                arr = np.asarray(state[key], dtype=np.int64)
                if arr.shape != (acc.num_classes,):
                    raise ValueError(f"'{key}' has shape {arr.shape}, expected ({acc.num_classes},)")
                setattr(acc, key, arr.copy())
            acc.num_images = int(state.get("num_images", 0))
        except (KeyError, TypeError) as err:
            raise ValueError(f"Not an IoUAccumulator state: missing or bad field {err}.") from None
        return acc

    def __repr__(self) -> str:
        return (
            f"IoUAccumulator(num_classes={self.num_classes}, images={self.num_images}, "
            f"mIoU={self.miou:.4f}, pAcc={self.pacc:.4f})"
        )
