"""Reader for a folder exported by napari-cass (or written by hand in the same layout)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from ..engine import DEFAULT_PRESET, ClassPrompt
from ._base import Sample, SegDataset

__all__ = ["FolderDataset", "IMAGE_SUFFIXES", "MASK_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MASK_SUFFIXES = (".png", ".tif", ".tiff")


class FolderDataset(SegDataset):
    """A folder written by napari-cass (or by hand): images, index masks, classes.json.

    ``root/images/<stem>.(png|jpg|...)``, ``root/masks/<stem>.png`` (or ``.tif``;
    255 = ignore in PNG masks, a class in TIFF masks of more than 255 classes),
    ``root/classes.json``. A class 0 named "background" makes it a background class.
    Evaluated with the interactive preset unless another one is chosen. ``root`` is
    the exported folder itself.
    """

    name = "folder"
    title = "Labelled folder"
    preset_name = DEFAULT_PRESET
    check_values = True

    def required(self) -> list[str]:
        return ["images", "masks", "classes.json"]

    def layout_help(self) -> str:
        return (
            "Expected layout (what napari-cass exports; ROOT is that folder itself):\n"
            "  ROOT/images/<stem>.png|jpg|tif\n"
            "  ROOT/masks/<stem>.png   (index mask, 255 = ignore; .tif for > 255 classes, "
            "where 255 is a class)\n"
            '  ROOT/classes.json       ({"classes": [{"id": 0, "name": ..., "synonyms": [...]}, ...]})'
        )

    @staticmethod
    def _by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, list[Path]]:
        found: dict[str, list[Path]] = defaultdict(list)
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix.lower() in suffixes:
                found[p.stem].append(p)
        return found

    def _refuse_duplicates(self, sub: str, groups: dict[str, list[Path]], what: str) -> None:
        dups = {stem: paths for stem, paths in groups.items() if len(paths) > 1}
        if not dups:
            return
        lines = [
            f"  {sub}/" + f" and {sub}/".join(p.name for p in paths)
            for paths in list(dups.values())[:10]
        ]
        more = f"\n  ... and {len(dups) - 10} more" if len(dups) > 10 else ""
        raise ValueError(
            f"{self.root / sub}: {len(dups)} name(s) are used by more than one {what} file; "
            f"{what}s are matched by file name without its extension, so these are "
            "ambiguous:\n" + "\n".join(lines) + more + "\n"
            f"Keep one {what} per name: rename or remove the others "
            f"(e.g. move {sub}/{next(iter(dups.values()))[-1].name} elsewhere)."
        )

    def _scan(self) -> list[Sample]:
        img_dir, mask_dir = self.root / "images", self.root / "masks"
        images = self._by_stem(img_dir, IMAGE_SUFFIXES)
        masks = self._by_stem(mask_dir, MASK_SUFFIXES)
        self._refuse_duplicates("images", images, "image")
        self._refuse_duplicates("masks", {s: masks[s] for s in images if s in masks}, "mask")
        samples, missing = [], []
        for stem, (img,) in sorted(images.items()):
            if stem in masks:
                samples.append(Sample(stem, img, masks[stem][0]))
            else:
                missing.append(f"masks/{stem}.png")
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
        ignore = [i for i, item in enumerate(items) if isinstance(item, dict) and item.get("ignore") is True]
        if len(ignore) > 1:
            raise ValueError(f"{path}: classes {ignore} are all marked \"ignore\"; mark one class at most.")
        self.ignore_class = ignore[0] if ignore else None
        for expected_id, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise ValueError(f"{path}: class #{expected_id} needs a string 'name'.")
            if item.get("id", expected_id) != expected_id:
                raise ValueError(
                    f"{path}: class ids must be 0, 1, 2, ... in order (the mask values); "
                    f"entry #{expected_id} has id {item.get('id')!r}."
                )
            if expected_id == self.ignore_class:
                continue  # never predicted; its pixels are not scored (map_gt)
            syn = [s for s in item.get("synonyms", []) or [] if isinstance(s, str) and s != item["name"]]
            prompts.append(ClassPrompt.from_words([item["name"], *syn], name=item["name"]))
        names = [p.name.casefold() for p in prompts]
        if len(set(names)) != len(names):
            raise ValueError(f"{path}: class names must be unique.")
        first = items[1] if self.ignore_class == 0 and len(items) > 1 else items[0]
        raw_words = [s for s in first.get("synonyms", []) or [] if s != first["name"]]
        if names[0] == "background" and not raw_words and len(prompts) > 1:
            # Label 0 without background words is "unlabelled" (what the plugin and the CLI
            # write when no --background was given): ignore it, as VOC20 / Context59 do.
            self.reduce_zero_label = True
            return prompts[1:]
        return prompts

    #: Mask value of the class marked ``"ignore": true`` in classes.json (None: no such class).
    ignore_class: int | None = None

    @property
    def raw_num_classes(self) -> int:
        """Mask values on disk: the scored classes, plus the ignore class if there is one."""
        return super().raw_num_classes + (0 if self.ignore_class is None else 1)

    def map_gt(self, raw, sample: Sample):
        """The ignore class's pixels are not scored; the classes after it move down by one.

        In PNG masks the ignore class is written as 255 (ignored anyway); in TIFF masks it
        has its own value, the class's id.
        """
        k = self.ignore_class
        if k is None:
            return super().map_gt(raw, sample)
        import numpy as np

        gt = np.asarray(raw).astype(np.int64)
        skip = gt == k
        gt = np.where((gt > k) & (gt < self.raw_num_classes), gt - 1, gt)
        gt = super().map_gt(gt, sample)
        gt[skip] = self.ignore_index
        return gt
