"""Readers for the benchmark directory layouts and for napari-cass exported folders.

Each reader lists its samples when it is built, so a missing or malformed dataset
fails at once with a message naming the files that were expected, rather than
hours into a run. Layouts are those of mmsegmentation's dataset preparation guide;
``root`` may point at the dataset folder itself or at a folder above it (for
example mmsegmentation's ``data`` folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator

import numpy as np
from PIL import Image

from ..engine import DEFAULT_PRESET, ClassPrompt, Preset, benchmark_classes, get_preset

__all__ = [
    "DATASETS",
    "PAPER_DATASETS",
    "Sample",
    "SegDataset",
    "VOC21Dataset",
    "VOC20Dataset",
    "Context60Dataset",
    "Context59Dataset",
    "COCOStuffDataset",
    "COCOObjectDataset",
    "ADE20KDataset",
    "CityscapesDataset",
    "FolderDataset",
    "get_dataset",
    "load_image",
    "load_label_map",
]

IGNORE_INDEX = 255
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_GUIDE = (
    "See mmsegmentation's dataset preparation guide "
    "(https://mmsegmentation.readthedocs.io/en/latest/user_guides/2_dataset_prepare.html)."
)


@dataclass(frozen=True)
class Sample:
    """One evaluation item: where its image and its ground truth live."""

    image_id: str
    image_path: Path
    gt_path: Path


def load_image(path: Path) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 RGB, the input every benchmark uses."""
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I", "F"):
                arr = np.asarray(im, dtype=np.float64)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
                arr = arr.astype(np.uint8)
                return np.repeat(arr[..., None], 3, axis=2)
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
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = np.asarray(tifffile.imread(path))
        else:
            with Image.open(path) as im:
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


def _reduce_zero_label(gt: np.ndarray) -> np.ndarray:
    # mmseg's convention: 0 ("other"/background) is ignored, every class moves down by one.
    out = gt.astype(np.int64)
    ignore = (out == 0) | (out == IGNORE_INDEX)
    out = out - 1
    out[ignore] = IGNORE_INDEX
    return out


class SegDataset:
    """Common base: a list of samples, the class list, the preset and the label mapping.

    Iterating yields ``(image_id, image (H, W, 3) uint8, gt (H, W) int64)`` with 255
    marking ignored pixels; the reduce-zero-label mapping is already applied.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    preset_name: ClassVar[str] = DEFAULT_PRESET
    class_list: ClassVar[str | None] = None
    reduce_zero_label: bool = False  # per instance for folders (see FolderDataset)
    default_split: ClassVar[str] = "val"

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
        self._classes = self._load_classes()

    # -- what subclasses define -------------------------------------------------
    def candidates(self, root: Path) -> list[Path]:
        """Folders that may be the dataset folder, most specific last-resort first."""
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
    def _locate(self, root: Path) -> Path:
        required = self.required()
        best: tuple[int, Path, list[str]] | None = None
        for cand in self.candidates(root):
            missing = [r for r in required if not (cand / r).exists()]
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
            f"Missing under {where}: {', '.join(missing)}.\n{self.layout_help()}"
        )

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
        """Ground truth of one sample, label mapping applied, as int64 with 255 = ignore."""
        gt = load_label_map(sample.gt_path).astype(np.int64)
        if self.reduce_zero_label:
            gt = _reduce_zero_label(gt)
        return gt

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"


# -- PASCAL VOC 2012 ---------------------------------------------------------------
class VOC21Dataset(SegDataset):
    """PASCAL VOC 2012 val, 21 classes with background (index 0)."""

    name = "voc21"
    title = "PASCAL VOC 2012"
    preset_name = "voc21"
    class_list = "voc21"

    def candidates(self, root: Path) -> list[Path]:
        return [root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"]

    def required(self) -> list[str]:
        return ["JPEGImages", "SegmentationClass", f"ImageSets/Segmentation/{self.split}.txt"]

    def layout_help(self) -> str:
        return (
            "Expected layout (ROOT may be VOCdevkit/VOC2012, VOCdevkit or the folder above):\n"
            "  VOCdevkit/VOC2012/JPEGImages/<id>.jpg\n"
            "  VOCdevkit/VOC2012/SegmentationClass/<id>.png   (palette index masks, 255 = ignore)\n"
            f"  VOCdevkit/VOC2012/ImageSets/Segmentation/{self.split}.txt   (one id per line)\n"
            + _GUIDE
        )

    def _scan(self) -> list[Sample]:
        ids = self._read_split(self.root / f"ImageSets/Segmentation/{self.split}.txt")
        return self._check_exist([
            Sample(i, self.root / "JPEGImages" / f"{i}.jpg", self.root / "SegmentationClass" / f"{i}.png")
            for i in ids
        ])


class VOC20Dataset(VOC21Dataset):
    """PASCAL VOC 2012 val without background: label 0 ignored, 20 classes."""

    name = "voc20"
    preset_name = "voc20"
    class_list = "voc20"
    reduce_zero_label = True


# -- PASCAL Context ------------------------------------------------------------------
class Context60Dataset(SegDataset):
    """PASCAL Context val (VOC2010 images), 60 classes with background."""

    name = "context60"
    title = "PASCAL Context"
    preset_name = "context60"
    class_list = "context60"

    def candidates(self, root: Path) -> list[Path]:
        return [root, root / "VOC2010", root / "VOCdevkit" / "VOC2010"]

    def required(self) -> list[str]:
        return [
            "JPEGImages",
            "SegmentationClassContext",
            f"ImageSets/SegmentationContext/{self.split}.txt",
        ]

    def layout_help(self) -> str:
        return (
            "Expected layout (ROOT may be VOCdevkit/VOC2010, VOCdevkit or the folder above):\n"
            "  VOCdevkit/VOC2010/JPEGImages/<id>.jpg\n"
            "  VOCdevkit/VOC2010/SegmentationClassContext/<id>.png   (made from trainval_merged.json "
            "by mmsegmentation's tools/dataset_converters/pascal_context.py)\n"
            f"  VOCdevkit/VOC2010/ImageSets/SegmentationContext/{self.split}.txt\n" + _GUIDE
        )

    def _scan(self) -> list[Sample]:
        ids = self._read_split(self.root / f"ImageSets/SegmentationContext/{self.split}.txt")
        return self._check_exist([
            Sample(
                i,
                self.root / "JPEGImages" / f"{i}.jpg",
                self.root / "SegmentationClassContext" / f"{i}.png",
            )
            for i in ids
        ])


class Context59Dataset(Context60Dataset):
    """PASCAL Context val without background: label 0 ignored, 59 classes."""

    name = "context59"
    preset_name = "context59"
    class_list = "context59"
    reduce_zero_label = True


# -- COCO-Stuff 164k and COCO-Object ---------------------------------------------------
class COCOStuffDataset(SegDataset):
    """COCO-Stuff 164k val2017, 171 classes (``*_labelTrainIds.png``)."""

    name = "coco_stuff"
    title = "COCO-Stuff 164k"
    preset_name = "coco_stuff"
    class_list = "coco_stuff"
    default_split = "val2017"
    gt_suffix: ClassVar[str] = "_labelTrainIds.png"
    converter: ClassVar[str] = (
        "made by mmsegmentation's tools/dataset_converters/coco_stuff164k.py"
    )

    def candidates(self, root: Path) -> list[Path]:
        return [root, root / "coco_stuff164k"]

    def required(self) -> list[str]:
        return [f"images/{self.split}", f"annotations/{self.split}"]

    def layout_help(self) -> str:
        return (
            "Expected layout (ROOT may be coco_stuff164k or the folder above):\n"
            f"  coco_stuff164k/images/{self.split}/<id>.jpg\n"
            f"  coco_stuff164k/annotations/{self.split}/<id>{self.gt_suffix}   ({self.converter})\n"
            + _GUIDE
        )

    def _scan(self) -> list[Sample]:
        ann_dir = self.root / "annotations" / self.split
        img_dir = self.root / "images" / self.split
        gts = sorted(ann_dir.glob(f"*{self.gt_suffix}"))
        if not gts:
            raise FileNotFoundError(
                f"{self.title} ({self.name}): no *{self.gt_suffix} file in {ann_dir}.\n"
                + self.layout_help()
            )
        samples = []
        for gt in gts:
            stem = gt.name[: -len(self.gt_suffix)]
            samples.append(Sample(stem, img_dir / f"{stem}.jpg", gt))
        return self._check_exist(samples)


class COCOObjectDataset(COCOStuffDataset):
    """COCO-Object: COCO-Stuff 164k val2017 reduced to the 80 things + background."""

    name = "coco_object"
    title = "COCO-Object"
    preset_name = "coco_object"
    class_list = "coco_object"
    gt_suffix = "_instanceTrainIds.png"
    converter = (
        "object masks in the SCLIP/CASS convention: 0 = background, 1..80 = things, "
        "made by SCLIP's datasets/cvt_coco_object.py"
    )


# -- ADE20K -----------------------------------------------------------------------------
class ADE20KDataset(SegDataset):
    """ADE20K (ADEChallengeData2016) validation, 150 classes, label 0 ignored."""

    name = "ade20k"
    title = "ADE20K"
    preset_name = "ade20k"
    class_list = "ade20k"
    reduce_zero_label = True
    default_split = "validation"

    def candidates(self, root: Path) -> list[Path]:
        return [root, root / "ADEChallengeData2016", root / "ade" / "ADEChallengeData2016"]

    def required(self) -> list[str]:
        return [f"images/{self.split}", f"annotations/{self.split}"]

    def layout_help(self) -> str:
        return (
            "Expected layout (ROOT may be ADEChallengeData2016, ade or the folder above):\n"
            f"  ADEChallengeData2016/images/{self.split}/<id>.jpg\n"
            f"  ADEChallengeData2016/annotations/{self.split}/<id>.png\n" + _GUIDE
        )

    def _scan(self) -> list[Sample]:
        img_dir = self.root / "images" / self.split
        ann_dir = self.root / "annotations" / self.split
        imgs = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        return self._check_exist([Sample(p.stem, p, ann_dir / f"{p.stem}.png") for p in imgs])


# -- Cityscapes --------------------------------------------------------------------------
# Official cityscapesScripts labelId -> trainId table (19 evaluated classes, rest ignored).
_CITYSCAPES_ID_TO_TRAINID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}


class CityscapesDataset(SegDataset):
    """Cityscapes val, 19 classes (``*_gtFine_labelTrainIds.png``).

    When only the raw ``*_gtFine_labelIds.png`` are present they are mapped to train
    ids with the official table, so the conversion script is optional.
    """

    name = "cityscapes"
    title = "Cityscapes"
    preset_name = "cityscapes"
    class_list = "cityscapes"

    def candidates(self, root: Path) -> list[Path]:
        return [root, root / "cityscapes"]

    def required(self) -> list[str]:
        return [f"leftImg8bit/{self.split}", f"gtFine/{self.split}"]

    def layout_help(self) -> str:
        return (
            "Expected layout (ROOT may be cityscapes or the folder above):\n"
            f"  cityscapes/leftImg8bit/{self.split}/<city>/<name>_leftImg8bit.png\n"
            f"  cityscapes/gtFine/{self.split}/<city>/<name>_gtFine_labelTrainIds.png   "
            "(or the raw *_gtFine_labelIds.png)\n" + _GUIDE
        )

    def _scan(self) -> list[Sample]:
        img_dir = self.root / "leftImg8bit" / self.split
        gt_dir = self.root / "gtFine" / self.split
        samples = []
        for img in sorted(img_dir.glob("*/*_leftImg8bit.png")):
            stem = img.name[: -len("_leftImg8bit.png")]
            city = img.parent.name
            gt = gt_dir / city / f"{stem}_gtFine_labelTrainIds.png"
            if not gt.is_file():
                raw = gt_dir / city / f"{stem}_gtFine_labelIds.png"
                gt = raw if raw.is_file() else gt
            samples.append(Sample(stem, img, gt))
        if not samples:
            raise FileNotFoundError(
                f"Cityscapes: no <city>/*_leftImg8bit.png under {img_dir}.\n" + self.layout_help()
            )
        return self._check_exist(samples)

    def load_gt(self, sample: Sample) -> np.ndarray:
        gt = super().load_gt(sample)
        if sample.gt_path.name.endswith("_gtFine_labelIds.png"):
            table = np.full(max(256, int(gt.max()) + 1), IGNORE_INDEX, dtype=np.int64)
            for label_id, train_id in _CITYSCAPES_ID_TO_TRAINID.items():
                table[label_id] = train_id
            gt = table[gt]
        return gt


# -- napari-cass exported folder ---------------------------------------------------------
class FolderDataset(SegDataset):
    """A folder written by napari-cass (or by hand): images, index masks, classes.json.

    ``root/images/<stem>.(png|jpg|...)``, ``root/masks/<stem>.png`` (or ``.tif`` for
    more than 255 classes; 255 = ignore in PNGs), ``root/classes.json``. A class 0
    named "background" makes it a background class. Evaluated with the interactive
    preset unless another one is chosen.
    """

    name = "folder"
    title = "Labelled folder"
    preset_name = DEFAULT_PRESET

    def required(self) -> list[str]:
        return ["images", "masks", "classes.json"]

    def layout_help(self) -> str:
        return (
            "Expected layout (what napari-cass exports):\n"
            "  ROOT/images/<stem>.png|jpg|tif\n"
            "  ROOT/masks/<stem>.png   (index mask, 255 = ignore; .tif for > 255 classes)\n"
            '  ROOT/classes.json       ({"classes": [{"id": 0, "name": ..., "synonyms": [...]}, ...]})'
        )

    def _scan(self) -> list[Sample]:
        img_dir, mask_dir = self.root / "images", self.root / "masks"
        imgs = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        samples, missing = [], []
        for img in imgs:
            mask = next(
                (mask_dir / f"{img.stem}{s}" for s in (".png", ".tif", ".tiff")
                 if (mask_dir / f"{img.stem}{s}").is_file()),
                None,
            )
            if mask is None:
                missing.append(f"masks/{img.stem}.png")
            else:
                samples.append(Sample(img.stem, img, mask))
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image(s) in {img_dir} have no mask: expected "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}.\n" + self.layout_help()
            )
        return samples

    def _load_classes(self) -> list[ClassPrompt]:
        path = self.root / "classes.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        items = data.get("classes") if isinstance(data, dict) else None
        if not isinstance(items, list) or not items:
            raise ValueError(
                f'{path} must hold {{"classes": [{{"id": 0, "name": ...}}, ...]}} with at least one class.'
            )
        prompts: list[ClassPrompt] = []
        for expected_id, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise ValueError(f"{path}: class #{expected_id} needs a string 'name'.")
            if item.get("id", expected_id) != expected_id:
                raise ValueError(
                    f"{path}: class ids must be 0, 1, 2, ... in order (the mask values); "
                    f"entry #{expected_id} has id {item.get('id')!r}."
                )
            syn = [s for s in item.get("synonyms", []) or [] if isinstance(s, str) and s != item["name"]]
            prompts.append(ClassPrompt.from_words([item["name"], *syn], name=item["name"]))
        names = [p.name.casefold() for p in prompts]
        if len(set(names)) != len(names):
            raise ValueError(f"{path}: class names must be unique.")
        raw_words = [s for s in items[0].get("synonyms", []) or [] if s != items[0]["name"]]
        if names[0] == "background" and not raw_words and len(prompts) > 1:
            # Label 0 without background words is "unlabelled" (what the plugin and the CLI
            # write when no --background was given): ignore it, as VOC20 / Context59 do.
            self.reduce_zero_label = True
            return prompts[1:]
        return prompts


DATASETS: dict[str, type[SegDataset]] = {
    cls.name: cls
    for cls in (
        VOC21Dataset, VOC20Dataset, Context60Dataset, Context59Dataset,
        COCOObjectDataset, COCOStuffDataset, ADE20KDataset, CityscapesDataset, FolderDataset,
    )
}
# The eight benchmarks of the paper's Table 1, in its column order.
PAPER_DATASETS = (
    "voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k",
)


def get_dataset(name: str, root: str | Path, split: str | None = None) -> SegDataset:
    """Build a reader by registry name; unknown names get the list of known ones."""
    try:
        cls = DATASETS[name]
    except KeyError:
        raise ValueError(
            f"Unknown dataset {name!r}. Choose one of: {', '.join(DATASETS)}."
        ) from None
    return cls(root, split=split)
