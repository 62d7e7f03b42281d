"""Readers for the benchmark directory layouts, and the registry of every reader.

Each reader lists its samples when it is built, so a missing or malformed dataset
fails at once with a message naming the files that were expected, rather than
hours into a run. Layouts are those of mmsegmentation's dataset preparation guide;
``root`` may be the dataset folder itself or one of the folders of that guide's
layout above it, up to mmsegmentation's ``data`` folder (each reader's
``candidates``). No other folder is searched: a recursive search of a large tree
would be slow and could pick the wrong copy. When the dataset sits one folder
further down, the error names the ``--root`` to pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from ._base import IGNORE_INDEX, Sample, SegDataset, load_image, load_label_map
from ._folder import FolderDataset

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

_GUIDE = (
    "See mmsegmentation's dataset preparation guide "
    "(https://mmsegmentation.readthedocs.io/en/latest/user_guides/2_dataset_prepare.html)."
)


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

    def map_gt(self, raw: np.ndarray, sample: Sample) -> np.ndarray:
        gt = super().map_gt(raw, sample)
        if sample.gt_path.name.endswith("_gtFine_labelIds.png"):
            table = np.full(max(256, int(gt.max()) + 1), IGNORE_INDEX, dtype=np.int64)
            for label_id, train_id in _CITYSCAPES_ID_TO_TRAINID.items():
                table[label_id] = train_id
            gt = table[gt]
        return gt


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
