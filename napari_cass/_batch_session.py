"""Batch mode, Qt-free: a folder of images, their saved masks and the resume point.

:class:`BatchSession` lists the images, knows where each mask is saved (the
dataset layout of :func:`napari_cass.io.export_dataset_item`: ``images/``,
``masks/``, ``classes.json``) and keeps ``progress.json`` in the output folder so
a session resumes where the user left off. It imports no Qt: the Qt panel in
:mod:`napari_cass._batch` and the widget call it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ._classes import LabelClasses

__all__ = ["IMAGE_SUFFIXES", "PROGRESS_FILE", "BatchSession"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
PROGRESS_FILE = "progress.json"
_FORMAT = "napari-cass/batch@1"


class BatchSession:
    """Images of one folder, their saved masks, and the resume point.

    Raises ``FileNotFoundError`` / ``ValueError`` with what to do when a folder
    is missing, holds no image, or the output folder belongs to another batch.
    """

    def __init__(self, image_dir: str | Path, output_dir: str | Path) -> None:
        from napari_cass.io import safe_filename

        self.image_dir = Path(image_dir).expanduser()
        self.output_dir = Path(output_dir).expanduser()
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"Image folder not found: {self.image_dir}")
        if self.output_dir.resolve() == self.image_dir.resolve():
            raise ValueError("Choose an output folder different from the image folder.")
        self.images = sorted(
            p for p in self.image_dir.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not self.images:
            raise ValueError(
                f"No image in {self.image_dir} (looked for {', '.join(IMAGE_SUFFIXES)})."
            )
        self.stems: list[str] = []
        seen: set[str] = set()
        for p in self.images:  # a.png and a.jpg must not share one mask
            stem = safe_filename(p.stem)
            if stem.casefold() in seen:
                stem = safe_filename(f"{p.stem}_{p.suffix.lstrip('.')}")
            seen.add(stem.casefold())
            self.stems.append(stem)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.index = 0
        self.saved: set[str] = set()
        self._load_progress()

    # -------------------------------------------------------------- progress
    @property
    def progress_path(self) -> Path:
        return self.output_dir / PROGRESS_FILE

    def _load_progress(self) -> None:
        path = self.progress_path
        if not path.is_file():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(
                f"{path} is unreadable ({err}); delete it or choose another output folder."
            ) from None
        recorded = data.get("image_dir")
        if recorded and Path(recorded).resolve() != self.image_dir.resolve():
            raise ValueError(
                f"{self.output_dir} holds the batch of another image folder ({recorded}); "
                "choose another output folder."
            )
        names = [p.name for p in self.images]
        current = data.get("current")
        if current in names:
            self.index = names.index(current)
        else:
            self.index = int(np.clip(int(data.get("index", 0)), 0, len(self.images) - 1))
        self.saved = {n for n in data.get("saved", []) if n in names}

    def save_progress(self) -> Path:
        """Remember the current image (written atomically; this file is ours to replace)."""
        from napari_cass.io import atomic_write

        doc = {
            "format": _FORMAT,
            "image_dir": str(self.image_dir.resolve()),
            "index": self.index,
            "current": self.images[self.index].name,
            "saved": sorted(self.saved),
            "total": len(self.images),
        }
        with atomic_write(self.progress_path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(doc, indent=2), encoding="utf-8")
        return self.progress_path

    # ---------------------------------------------------------------- images
    def __len__(self) -> int:
        return len(self.images)

    @property
    def current(self) -> Path:
        return self.images[self.index]

    def mask_path(self, index: int | None = None) -> Path | None:
        """The saved mask of an image (``masks/<stem>.png`` or ``.tif``), or None."""
        stem = self.stems[self.index if index is None else index]
        for suffix in (".png", ".tif"):
            p = self.output_dir / "masks" / f"{stem}{suffix}"
            if p.is_file():
                return p
        return None

    def read_image(self, index: int | None = None) -> np.ndarray:
        path = self.images[self.index if index is None else index]
        try:
            if path.suffix.lower() in (".tif", ".tiff"):
                import tifffile

                return np.asarray(tifffile.imread(path))
            import imageio.v3 as iio

            return np.asarray(iio.imread(path))
        except Exception as err:  # noqa: BLE001 - any decoder error becomes one clear message
            raise ValueError(f"Cannot read {path.name}: {err}") from None

    def load_mask(self, index: int | None = None) -> np.ndarray | None:
        from napari_cass.io import read_label_image

        path = self.mask_path(index)
        return None if path is None else np.asarray(read_label_image(path))

    def saved_classes(self) -> dict[str, Any] | None:
        from napari_cass.io import read_classes_json

        path = self.output_dir / "classes.json"
        return read_classes_json(path) if path.is_file() else None

    def save(self, image: np.ndarray, labels: np.ndarray, classes: LabelClasses,
             index: int | None = None) -> dict[str, Path]:
        """Save (or re-save) one image's corrected mask into the dataset folder.

        Re-saving the mask of the same image is the auto-save the user expects;
        a ``classes.json`` listing other classes is refused by the exporter.
        """
        from napari_cass.io import export_dataset_item

        i = self.index if index is None else index
        paths = export_dataset_item(
            self.output_dir, self.stems[i], image, labels, classes.names, classes.colors,
            overwrite=True, synonyms=classes.synonyms,
        )
        self.saved.add(self.images[i].name)
        self.save_progress()
        return paths

    def go(self, step: int) -> bool:
        """Move by ``step`` images; False at either end of the folder."""
        target = self.index + step
        if not 0 <= target < len(self.images):
            return False
        self.index = target
        self.save_progress()
        return True
