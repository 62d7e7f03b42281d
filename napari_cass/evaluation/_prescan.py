"""Check every mask before any model loads, and fingerprint the files a result depends on.

A bad mask found after an hour of segmentation costs that hour; one found now costs
milliseconds. The scan reads image headers only (PIL opens lazily), mask headers
(PIL / tifffile page shapes) and the mask bytes, which it hashes: the digest is what
a cached per-image result is compared with, so a corrected mask is re-scored.
Datasets with ``check_values`` (hand-made folders) also have their masks decoded to
find values that are no class.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ._base import IGNORE_INDEX, Sample, SegDataset, is_tiff, load_label_map

__all__ = ["ScanResult", "BadSample", "scan_dataset", "file_digest", "blake2b_bytes", "format_bad"]

_LABEL_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N")
_MAX_LISTED = 50


def blake2b_bytes(data: bytes) -> str:
    """Short content hash (blake2b, 128 bits) of a file's bytes."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_digest(path: Path, name: str, data: bytes | None = None) -> dict[str, Any]:
    """``{"name", "size", "mtime_ns", "blake2b"}`` of one file (reads it unless ``data``)."""
    st = path.stat()
    if data is None:
        data = path.read_bytes()
    return {"name": name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "blake2b": blake2b_bytes(data)}


@dataclass(frozen=True)
class BadSample:
    """A sample that cannot be scored, and why."""

    sample: Sample
    file: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"image_id": self.sample.image_id, "file": self.file, "reason": self.reason}


@dataclass
class ScanResult:
    """Outcome of :func:`scan_dataset` over the first ``limit`` samples."""

    dataset: SegDataset
    good: list[Sample] = field(default_factory=list)
    bad: list[BadSample] = field(default_factory=list)
    gt_digests: dict[str, dict[str, Any]] = field(default_factory=dict)


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:  # lazy: reads the header only
        return im.size


def _mask_size(data: bytes, path: Path) -> tuple[int, int]:
    """(width, height) from the mask's header; ValueError says what is wrong."""
    if is_tiff(path):
        import tifffile

        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            if not tif.series:
                raise ValueError("holds no image")
            series = tif.series[0]
            if len(series.shape) != 2 or not np.issubdtype(series.dtype, np.integer):
                raise ValueError(
                    f"is not a 2-D integer index mask (shape {series.shape}, dtype {series.dtype})"
                )
            return int(series.shape[1]), int(series.shape[0])
    with Image.open(io.BytesIO(data)) as im:
        if im.mode not in _LABEL_MODES:
            raise ValueError(
                f"is a {im.mode} image; an index mask (palette or greyscale, one class "
                "index per pixel) is needed"
            )
        return im.size


def _value_problem(dataset: SegDataset, sample: Sample) -> str | None:
    raw = load_label_map(sample.gt_path)
    gt = dataset.map_gt(raw, sample)
    outside = (gt != dataset.ignore_index) & ((gt < 0) | (gt >= dataset.num_classes))
    if not outside.any():
        return None
    values = np.unique(raw[outside])
    shown = ", ".join(str(int(v)) for v in values[:8]) + (" ..." if values.size > 8 else "")
    lo = 1 if dataset.reduce_zero_label else 0
    allowed = f"classes {lo}-{dataset.raw_num_classes - 1}"
    if dataset.reduce_zero_label:
        allowed += ", 0 = unlabelled"
    if dataset.mask_ignores_255(sample):
        allowed += f", {IGNORE_INDEX} = ignore"
    return (
        f"has value(s) {shown} in {int(outside.sum())} pixel(s), which are no class "
        f"({allowed}; classes.json lists {dataset.raw_num_classes})"
    )


def _check(dataset: SegDataset, s: Sample, gt_name: str) -> tuple[str, str | dict[str, Any]]:
    """("ok", gt digest) or (file, reason) for one sample."""
    img_name = dataset.relative(s.image_path)
    try:
        img_size = _image_size(s.image_path)
    except Exception as err:  # PIL raises many types for a corrupt file
        return img_name, f"image unreadable ({err})"
    try:
        data = s.gt_path.read_bytes()
        digest = file_digest(s.gt_path, gt_name, data)
        mask_size = _mask_size(data, s.gt_path)
    except ValueError as err:
        return gt_name, f"mask {err}"
    except Exception as err:
        return gt_name, f"mask unreadable ({err})"
    if mask_size != img_size:
        return gt_name, (
            f"mask is {mask_size[0]}x{mask_size[1]} but its image {img_name} is "
            f"{img_size[0]}x{img_size[1]}; they must have the same size"
        )
    if dataset.check_values:
        try:
            problem = _value_problem(dataset, s)
        except Exception as err:
            return gt_name, f"mask unreadable ({err})"
        if problem:
            return gt_name, f"mask {problem}"
    return "ok", digest


def scan_dataset(dataset: SegDataset, limit: int | None = None) -> ScanResult:
    """Check the first ``limit`` samples (all when None) and fingerprint their masks."""
    result = ScanResult(dataset)
    for s in dataset.samples[: limit or None]:
        gt_name = dataset.relative(s.gt_path)
        where, outcome = _check(dataset, s, gt_name)
        if where == "ok":
            assert isinstance(outcome, dict)
            result.good.append(s)
            result.gt_digests[s.image_id] = outcome
        else:
            assert isinstance(outcome, str)
            result.bad.append(BadSample(s, where, outcome))
    return result


def format_bad(scans: Sequence[ScanResult]) -> str:
    """One message listing every bad sample of every dataset, and what to do."""
    bad = [(scan.dataset, b) for scan in scans for b in scan.bad]
    total = sum(len(scan.good) + len(scan.bad) for scan in scans)
    lines = [
        f"{len(bad)} of {total} image(s) cannot be scored (found before loading any model):"
    ]
    for ds, b in bad[:_MAX_LISTED]:
        lines.append(f"  {ds.root / b.file}: {b.reason}")
    if len(bad) > _MAX_LISTED:
        lines.append(f"  ... and {len(bad) - _MAX_LISTED} more")
    lines.append(
        "Fix or remove these masks (or images), or pass --skip-bad to evaluate the others "
        "without them (the skipped ones are listed in results.json)."
    )
    return "\n".join(lines)
