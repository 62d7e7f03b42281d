"""What every dataset reader shares: samples, image and mask decoding, label mapping.

Ground truth is returned as int64 with :attr:`SegDataset.ignore_index` marking the
pixels that do not count. In PNG masks 255 means "ignore" (the benchmarks' and the
exports' convention); in TIFF masks of a class list with more than 255 classes, 255
is an ordinary class and the internal ignore value is -1 instead.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator

import numpy as np

from ..engine import DEFAULT_PRESET, ClassPrompt, Preset, benchmark_classes, get_preset

__all__ = ["IGNORE_INDEX", "Sample", "SegDataset", "load_image", "load_label_map", "is_tiff"]

IGNORE_INDEX = 255
_TIFF_SUFFIXES = (".tif", ".tiff")
# Sub-folders looked into for a "did you mean --root ...?" hint when a dataset is not found.
_HINT_MAX_SUBDIRS = 200


def is_tiff(path: Path) -> bool:
    """Whether a mask is read as TIFF (by its suffix, as :func:`load_label_map` does)."""
    return path.suffix.lower() in _TIFF_SUFFIXES


@dataclass(frozen=True)
class Sample:
    """One evaluation item: where its image and its ground truth live."""

    image_id: str
    image_path: Path
    gt_path: Path


def _stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    """16-bit, 32-bit or float pixels to 0..255 by their own range (a constant image: 0)."""
    arr = np.asarray(arr, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    return ((arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)).astype(np.uint8)


def _tiff_rgb(path: Path) -> np.ndarray:
    """A TIFF as ``(H, W, 3)`` uint8, read through napari_cass.io's bounded reader."""
    from ..io import read_tiff

    arr = read_tiff(path)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return (arr if arr.dtype == np.uint8 else _stretch_to_uint8(arr))[..., :3].copy()
    if arr.ndim != 2:
        raise ValueError(f"shape {arr.shape} is not a grey (H, W) or colour (H, W, 3) image")
    return np.repeat((arr if arr.dtype == np.uint8 else _stretch_to_uint8(arr))[..., None], 3, axis=2)


def load_image(path: Path) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 RGB, the input every benchmark uses.

    Through napari_cass.io's readers: the pixel and decoded-byte limits apply, and an
    animated PNG gives its first frame.
    """
    from ..io import open_picture

    try:
        if is_tiff(path):
            return _tiff_rgb(path)
        with open_picture(path) as im:
            if im.mode in ("I;16", "I;16B", "I", "F"):
                return np.repeat(_stretch_to_uint8(np.asarray(im))[..., None], 3, axis=2)
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"Image file not found: {path}") from None
    except Exception as err:  # PIL raises many types for a corrupt file
        raise ValueError(f"Cannot read image {path}: {err}") from None


def load_label_map(path: Path) -> np.ndarray:
    """Read an index mask (palette/grey PNG or integer TIFF) as a 2-D integer array.

    Palette PNGs (VOC) are read as indices, never converted to colours.
    """
    try:
        if is_tiff(path):
            from ..io import read_tiff

            arr = read_tiff(path)
        else:
            from ..io import open_picture

            with open_picture(path) as im:
                if im.mode in ("RGB", "RGBA"):
                    raise ValueError(
                        f"Ground truth {path} is a colour ({im.mode}) image; an index mask is "
                        "needed (one class index per pixel, palette or greyscale PNG)."
                    )
                arr = np.asarray(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"Ground-truth file not found: {path}") from None
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(f"Cannot read ground truth {path}: {err}") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"Ground truth {path} must be a 2-D integer index mask, got shape {arr.shape} "
            f"and dtype {arr.dtype}."
        )
    return arr


class SegDataset:
    """Common base: a list of samples, the class list, the preset and the label mapping.

    Iterating yields ``(image_id, image (H, W, 3) uint8, gt (H, W) int64)`` with
    :attr:`ignore_index` marking ignored pixels; the reduce-zero-label mapping is
    already applied.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    preset_name: ClassVar[str] = DEFAULT_PRESET
    class_list: ClassVar[str | None] = None
    reduce_zero_label: bool = False  # per instance for folders (see FolderDataset)
    default_split: ClassVar[str] = "val"
    # Whether the pre-scan decodes every mask to find values that are no class. On for
    # hand-made folders; off for the benchmarks, whose masks follow mmseg's convention
    # (a value outside the classes counts as unlabelled) and are too many to decode on
    # every resumed run.
    check_values: ClassVar[bool] = False

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        root = Path(root).expanduser()
        self.split = split or self.default_split
        if not root.exists():
            raise FileNotFoundError(
                f"{self.title} ({self.name}): the folder {root} does not exist. "
                f"Pass --root pointing at the dataset.\n{self.layout_help()}"
            )
        self.root = self._locate(root)
        self._samples = self._scan()
        if not self._samples:
            raise ValueError(
                f"{self.title} ({self.name}) under {self.root} holds no sample for split "
                f"{self.split!r}.\n{self.layout_help()}"
            )
        self._check_unique_ids(self._samples)
        self._classes = self._load_classes()

    # -- what subclasses define -------------------------------------------------
    def candidates(self, root: Path) -> list[Path]:
        """Folders that may be the dataset folder: ``root`` itself and its standard children."""
        return [root]

    def required(self) -> list[str]:
        """Paths, relative to the dataset folder, that must exist."""
        raise NotImplementedError

    def layout_help(self) -> str:
        """Human-readable description of the expected layout."""
        raise NotImplementedError

    def _scan(self) -> list[Sample]:
        raise NotImplementedError

    def _load_classes(self) -> list[ClassPrompt]:
        assert self.class_list is not None
        return benchmark_classes(self.class_list)

    # -- shared machinery ----------------------------------------------------------
    def _matches(self, cand: Path) -> list[str]:
        return [r for r in self.required() if not (cand / r).exists()]

    def _locate(self, root: Path) -> Path:
        required = self.required()
        best: tuple[int, Path, list[str]] | None = None
        for cand in self.candidates(root):
            missing = self._matches(cand)
            if not missing:
                return cand
            present = len(required) - len(missing)
            if cand.is_dir() and (best is None or present > best[0]):
                best = (present, cand, missing)
        where = best[1] if best else root
        missing = best[2] if best else required
        tried = ", ".join(str(c) for c in self.candidates(root))
        raise FileNotFoundError(
            f"{self.title} ({self.name}) not found. Looked in: {tried}.\n"
            f"Missing under {where}: {', '.join(missing)}.\n"
            f"{self._deeper_hint(root)}{self.layout_help()}"
        )

    def _deeper_hint(self, root: Path) -> str:
        """A "did you mean" line when the dataset sits one folder further down."""
        try:
            subdirs = sorted(p for p in root.iterdir() if p.is_dir())[:_HINT_MAX_SUBDIRS]
        except OSError:
            return ""
        for sub in subdirs:
            for cand in self.candidates(sub):
                if not self._matches(cand):
                    return f"Found it one folder further down: pass --root {sub}\n"
        return ""

    def _read_split(self, split_file: Path) -> list[str]:
        ids = [ln.strip() for ln in split_file.read_text(encoding="utf-8").splitlines()]
        ids = [i for i in ids if i]
        if not ids:
            raise ValueError(f"Split file {split_file} is empty: it must list one image id per line.")
        return ids

    def _check_exist(self, samples: list[Sample]) -> list[Sample]:
        missing = [p for s in samples for p in (s.image_path, s.gt_path) if not p.is_file()]
        if missing:
            shown = "\n  ".join(str(p) for p in missing[:5])
            raise FileNotFoundError(
                f"{self.title} ({self.name}): {len(missing)} file(s) listed by the split are "
                f"missing, e.g.:\n  {shown}\n{self.layout_help()}"
            )
        return samples

    def _check_unique_ids(self, samples: list[Sample]) -> None:
        """Refuse two samples with one id: they would share a mask and a cache record."""
        by_id: dict[str, list[Sample]] = defaultdict(list)
        for s in samples:
            by_id[s.image_id].append(s)
        dups = {i: group for i, group in by_id.items() if len(group) > 1}
        if not dups:
            return
        lines = [
            f"  {i!r}: " + ", ".join(self.relative(s.image_path) for s in group)
            for i, group in list(dups.items())[:10]
        ]
        more = f"\n  ... and {len(dups) - 10} more" if len(dups) > 10 else ""
        raise ValueError(
            f"{self.title} ({self.name}) under {self.root}: {len(dups)} image name(s) are used "
            "by more than one image file; each would be scored against the same mask and "
            "share one cached result:\n" + "\n".join(lines) + more + "\n"
            "Keep one image per name (rename or remove the others, or list each id once in "
            "the split file)."
        )

    def relative(self, path: Path) -> str:
        """``path`` relative to the dataset folder (as written in messages and records)."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    @property
    def preset(self) -> Preset:
        """The CASS preset this benchmark is evaluated with."""
        return get_preset(self.preset_name)

    @property
    def classes(self) -> list[ClassPrompt]:
        """Class prompts in label order (index i of the prediction = class i)."""
        return list(self._classes)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self._classes]

    @property
    def num_classes(self) -> int:
        return len(self._classes)

    @property
    def raw_num_classes(self) -> int:
        """Number of distinct class values in the masks on disk (before reduce-zero-label)."""
        return self.num_classes + (1 if self.reduce_zero_label else 0)

    @property
    def ignore_index(self) -> int:
        """Value of ignored pixels in :meth:`load_gt`'s output: 255, or -1 when 255 is a class."""
        return IGNORE_INDEX if self.raw_num_classes <= IGNORE_INDEX else -1

    def mask_ignores_255(self, sample: Sample) -> bool:
        """Whether value 255 in this sample's mask means "ignore" (always, except TIFF masks
        of a class list with more than 255 classes, where 255 is a class)."""
        return not (is_tiff(sample.gt_path) and self.raw_num_classes > IGNORE_INDEX)

    @property
    def has_background(self) -> bool:
        """Whether class 0 is a background class (predicted by the background rule)."""
        return self._classes[0].name.casefold() == "background"

    @property
    def samples(self) -> list[Sample]:
        return list(self._samples)

    def __len__(self) -> int:
        return len(self._samples)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for i in range(len(self._samples)):
            yield self[i]

    def __getitem__(self, index: int) -> tuple[str, np.ndarray, np.ndarray]:
        s = self._samples[index]
        image, gt = load_image(s.image_path), self.load_gt(s)
        if gt.shape != image.shape[:2]:
            raise ValueError(
                f"Ground truth {s.gt_path} is {gt.shape[1]}x{gt.shape[0]} but its image "
                f"{s.image_path} is {image.shape[1]}x{image.shape[0]}: they must have the same size."
            )
        return s.image_id, image, gt

    def index_of(self, image_id: str) -> int:
        """Position of an image id (used to redraw the worst images after a run)."""
        for i, s in enumerate(self._samples):
            if s.image_id == image_id:
                return i
        raise KeyError(f"No image {image_id!r} in {self.name}.")

    def load_gt(self, sample: Sample) -> np.ndarray:
        """Ground truth of one sample, label mapping applied, int64, ignored = :attr:`ignore_index`."""
        return self.map_gt(load_label_map(sample.gt_path), sample)

    def map_gt(self, raw: np.ndarray, sample: Sample) -> np.ndarray:
        """Mask values on disk -> class indices (reduce-zero-label, ignore value)."""
        gt = np.asarray(raw).astype(np.int64)
        if self.mask_ignores_255(sample):
            ignored = gt == IGNORE_INDEX
        else:
            ignored = np.zeros(gt.shape, dtype=bool)
        if self.reduce_zero_label:
            # mmseg's convention: 0 ("other"/unlabelled) is ignored, every class moves down by one.
            ignored |= gt == 0
            gt = gt - 1
        gt[ignored] = self.ignore_index
        return gt

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"
