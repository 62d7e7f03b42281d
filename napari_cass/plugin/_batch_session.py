"""Batch mode, Qt-free: a folder of images, their saved masks and the resume point.

:class:`BatchSession` lists the images, knows where each mask is saved (the
dataset layout of :func:`napari_cass.io.export_dataset_item`: ``images/``,
``masks/``, ``classes.json``) and keeps ``progress.json`` in the output folder so
a session resumes where the user left off. It imports no Qt: the Qt panel in
:mod:`napari_cass.plugin._batch` and the widget call it.

* Mask names keep the letters of the image names (``猫.png`` -> ``masks/猫.png``),
  collision-free even on case-insensitive file systems; ``progress.json`` records
  each original name's mask name and a resume maps by it, so images added, removed
  or renamed between sessions never inherit another image's mask.
* Saving is cheap and atomic: the widget may call :meth:`BatchSession.save_if_changed`
  after every edit and on close; an unchanged mask is not rewritten.
* The class list may grow during a batch (classes appended): ``classes.json`` is
  updated and earlier masks keep their meaning. Renaming, reordering or removing
  saved classes is refused: saved pixel values would change meaning.
* A shared output folder is input too (:mod:`._batch_files`): recorded mask names
  must be safe file names, ``images/`` and ``masks/`` may not be links or hold the
  inputs, every write or delete is checked to stay inside them, and a file the
  batch did not write (an image not in ``saved``) is never replaced: new images
  get names no file in the folder has yet.
* An image that cannot be read is recorded in ``progress.json`` (``failed``, with a
  short reason) and nothing is ever saved under its name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._batch_files import (
    check_folders,
    check_labels,
    digest,
    existing_stems,
    match_recorded,
    read_progress,
    read_progress_doc,
    read_saved_classes,
    refuse_existing,
    short_reason,
    target_path,
    update_classes,
)

if TYPE_CHECKING:
    from ._classes import LabelClasses

__all__ = ["IMAGE_SUFFIXES", "PROGRESS_FILE", "BatchSession"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
PROGRESS_FILE = "progress.json"
CLASSES_FILE = "classes.json"
_FORMAT = "napari-cass/batch@2"
_MASK_SUFFIXES = (".png", ".tif")


class BatchSession:
    """Images of one folder, their saved masks, and the resume point.

    Parameters
    ----------
    image_dir : str or Path
        The folder of images (``IMAGE_SUFFIXES``; hidden files skipped).
    output_dir : str or Path
        The dataset folder: ``images/``, ``masks/``, ``classes.json`` and
        ``progress.json``. Created if missing. Temporary files left by a save
        that was killed are removed here.

    Raises
    ------
    FileNotFoundError, ValueError
        With what to do, when a folder is missing, holds no image, or the output
        folder belongs to another batch, or its ``images/`` / ``masks/`` are links,
        lead outside it or hold the input images.
    napari_cass.io.OutputConflictError
        While another napari-cass run writes into the output folder (also from
        the save methods).
    """

    def __init__(self, image_dir: str | Path, output_dir: str | Path) -> None:
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
        check_folders(self.image_dir, self.output_dir, self.images)  # before any write or delete
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.index = 0
        self.saved: set[str] = set()
        #: Images that could not be read: name -> short reason (kept in progress.json).
        self.failed: dict[str, str] = {}
        #: What was wrong with ``progress.json`` (records ignored); the panel shows them.
        self.warnings: list[str] = []
        # original image name -> mask stem; kept for images that left the folder too,
        # so their mask names are never handed to another image.
        self._mask_names: dict[str, str] = {}
        self._digests: dict[int, str] = {}
        self._image_written: set[int] = set()
        data = self._read_progress()  # first: refuses another batch's folder
        self.removed_temp_files = self._remove_temp_files()
        recorded = dict(self._mask_names)
        renamed = match_recorded(self._mask_names, [p.name for p in self.images])
        self._restore_position(data, renamed)
        self.stems = self._assign_new_stems()
        if self._mask_names != recorded:
            self.save_progress()  # every mask name is on record before a mask is written

    # ----------------------------------------------------------- bookkeeping
    def _remove_temp_files(self) -> list[Path]:
        """Remove what a killed save left (under the folder lock: no live writer's file)."""
        from napari_cass.io import RunLock, clean_temp_files

        with RunLock(self.output_dir):
            return [p for sub in ("", "images", "masks")
                    for p in clean_temp_files(self.output_dir / sub)]

    @property
    def progress_path(self) -> Path:
        """``progress.json`` in the output folder."""
        return self.output_dir / PROGRESS_FILE

    def _read_progress(self) -> dict[str, Any]:
        path = self.progress_path
        data = read_progress(path, self.image_dir)
        self._mask_names, self.warnings = read_progress_doc(path, data)
        failed = data.get("failed")
        if isinstance(failed, dict):
            self.failed = {str(k): str(v)[:200] for k, v in failed.items()}
        return data

    def _restore_position(self, data: dict[str, Any], renamed: dict[str, str]) -> None:
        names = [p.name for p in self.images]
        current = str(data.get("current", ""))
        current = renamed.get(current, current)
        try:
            index = int(data.get("index", 0))
        except (TypeError, ValueError):
            index = 0
        if current in names:
            self.index = names.index(current)
        elif data:
            self.index = int(np.clip(index, 0, len(self.images) - 1))
        listed = data.get("saved", [])
        saved = {renamed.get(str(n), str(n)) for n in (listed if isinstance(listed, list) else [])}
        # saved = written by this batch: only images whose mask name is on record
        self.saved = saved & set(names) & set(self._mask_names)
        self.failed = {n: r for n, r in self.failed.items() if n in names}

    def _assign_new_stems(self) -> list[str]:
        """Mask names: the recorded one for known images, new collision-free ones otherwise.

        A name is new when no file of the output folder has it yet: the batch never
        takes over a mask or image copy it did not write (an image not yet saved whose
        recorded name a file has meanwhile taken gets a new name too).
        """
        from napari_cass.io import unique_filenames

        on_disk = existing_stems(self.output_dir)
        for p in self.images:
            stem = self._mask_names.get(p.name)
            if stem is not None and p.name not in self.saved and stem.casefold() in on_disk:
                del self._mask_names[p.name]
        new = [p for p in self.images if p.name not in self._mask_names]
        fresh = unique_filenames([p.stem for p in new],
                                 taken=[*self._mask_names.values(), *on_disk])
        for p, stem in zip(new, fresh):
            self._mask_names[p.name] = stem
        return [self._mask_names[p.name] for p in self.images]

    def save_progress(self) -> Path:
        """Write ``progress.json`` atomically: resume point, saved images, mask names."""
        from napari_cass.io import atomic_write

        doc = {
            "format": _FORMAT,
            "image_dir": str(self.image_dir.resolve()),
            "index": self.index,
            "current": self.images[self.index].name,
            "saved": sorted(self.saved),
            "total": len(self.images),
            "masks": dict(sorted(self._mask_names.items())),
            "failed": dict(sorted(self.failed.items())),
        }
        with atomic_write(self.progress_path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
        return self.progress_path

    # ---------------------------------------------------------------- images
    def __len__(self) -> int:
        return len(self.images)

    @property
    def current(self) -> Path:
        """The image being annotated."""
        return self.images[self.index]

    def index_of(self, name: str) -> int | None:
        """The index of the image file called ``name`` (None: not in the folder)."""
        return next((i for i, p in enumerate(self.images) if p.name == name), None)

    def _i(self, index: int | None) -> int:
        i = self.index if index is None else int(index)
        if not 0 <= i < len(self.images):
            raise IndexError(f"Image index {i} is outside 0..{len(self.images) - 1}.")
        return i

    def mask_path(self, index: int | None = None) -> Path | None:
        """The saved mask of an image (``masks/<name>.png`` or ``.tif``), or None.

        If both exist (a save that changed format was killed), the newer one. Only
        masks this batch wrote count (the image is in ``saved``).
        """
        i = self._i(index)
        if self.images[i].name not in self.saved:
            return None
        stem = self.stems[i]
        found = [p for s in _MASK_SUFFIXES
                 if (p := target_path(self.output_dir, "masks", f"{stem}{s}")).is_file()]
        return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None

    def read_image(self, index: int | None = None) -> np.ndarray:
        """The pixels of an image (ValueError naming the file if it cannot be decoded).

        A failure is recorded in :attr:`failed` and ``progress.json`` (with a short
        reason); a later successful read clears it.
        """
        path = self.images[self._i(index)]
        from napari_cass.io import read_image

        try:
            data = read_image(path)  # refuses images above the pixel limit before decoding
        except Exception as err:  # noqa: BLE001 - any decoder error becomes one clear message
            self.mark_failed(path.name, short_reason(err, path))
            raise ValueError(f"Cannot read {path.name}: {self.failed[path.name]}") from None
        if self.failed.pop(path.name, None) is not None:
            self.save_progress()
        return data

    def mark_failed(self, name: str, reason: str) -> None:
        """Record that image ``name`` cannot be shown (nothing is saved under its name)."""
        self.failed[name] = reason[:200]
        self.save_progress()

    def load_mask(self, index: int | None = None) -> np.ndarray | None:
        """The saved mask as a writable, C-contiguous array (napari paints into it), or None."""
        from napari_cass.io import read_label_image

        i = self._i(index)
        path = self.mask_path(i)
        if path is None:
            return None
        mask = np.array(read_label_image(path), copy=True, order="C")
        self._digests[i] = digest(mask)
        return mask

    def saved_classes(self) -> dict[str, Any] | None:
        """The validated ``classes.json`` of the output folder, or None before the first save."""
        return read_saved_classes(self.output_dir / CLASSES_FILE)

    # ---------------------------------------------------------------- saving
    def save(self, image: np.ndarray, labels: np.ndarray, classes: LabelClasses,
             index: int | None = None) -> dict[str, Path]:
        """Save (or re-save) one image's mask into the dataset folder, atomically.

        Parameters
        ----------
        image : ndarray
            The image (copied to ``images/<name>.png``; :meth:`save` rewrites the copy
            once per session, :meth:`save_if_changed` only when it is missing).
        labels : ndarray
            The (H, W) mask; every value must be a label of ``classes``.
        classes : LabelClasses
            The class list; it may extend the saved ``classes.json`` (new classes
            at the end), which is then updated. Renamed, reordered or removed
            classes are refused with a ``ValueError`` saying what differs.
        index : int, optional
            The image (default: the current one).

        Returns
        -------
        dict
            ``{"image", "mask", "classes"}``: the paths of the dataset item.
        """
        return self._save(image, labels, classes, index, force=True)

    def needs_save(self, labels: np.ndarray, index: int | None = None) -> bool:
        """True when ``labels`` differ from the mask last saved or loaded for the image."""
        return self._digests.get(self._i(index)) != digest(np.asarray(labels))

    def save_if_changed(self, image: np.ndarray, labels: np.ndarray, classes: LabelClasses,
                        index: int | None = None) -> dict[str, Path]:
        """Like :meth:`save`, but write only what changed since the last save or load.

        Cheap enough to call after every edit and on close. Returns the paths
        written (``"mask"``, ``"classes"``, ``"image"``): empty when nothing changed.
        """
        return self._save(image, labels, classes, index, force=False)

    def _save(self, image: np.ndarray, labels: np.ndarray, classes: LabelClasses,
              index: int | None, force: bool) -> dict[str, Path]:
        from napari_cass.io import RunLock, mask_suffix_for

        i = self._i(index)
        name = self.images[i].name
        if name in self.failed:
            raise ValueError(f"{name} could not be read ({self.failed[name]}): nothing is saved "
                             "under its name.")
        lab = check_labels(labels, np.shape(image), classes.n_labels, name)
        stem, suffix = self.stems[i], mask_suffix_for(classes.n_labels)
        out = self.output_dir
        paths = {
            "image": target_path(out, "images", f"{stem}.png"),
            "mask": target_path(out, "masks", f"{stem}{suffix}"),
            "classes": out / CLASSES_FILE,
        }
        with RunLock(out):  # OutputConflictError while a CLI run writes here
            if name not in self.saved:  # never replace a file this batch did not write
                refuse_existing(name, [paths["image"], *(target_path(out, "masks", f"{stem}{s}")
                                                         for s in _MASK_SUFFIXES)])
            return self._write_item(i, image, lab, classes, paths, force)

    def _write_item(self, i: int, image: np.ndarray, lab: np.ndarray, classes: LabelClasses,
                    paths: dict[str, Path], force: bool) -> dict[str, Path]:
        from napari_cass.io import atomic_write, to_uint8_rgb, write_indexed_png, write_label_tiff

        stem, mask_suffix = self.stems[i], paths["mask"].suffix
        written: dict[str, Path] = {}
        if update_classes(self.output_dir / CLASSES_FILE, classes) is not None:  # first: classes.json covers every mask
            written["classes"] = paths["classes"]
        name = self.images[i].name
        if name not in self.saved:  # on record before the first file: a crash leaves it ours
            self.saved.add(name)
            try:
                self.save_progress()
            except OSError:
                self.saved.discard(name)
                raise
        fingerprint = digest(lab)
        if force or self._digests.get(i) != fingerprint or self.mask_path(i) != paths["mask"]:
            if mask_suffix == ".png":
                write_indexed_png(paths["mask"], lab, classes.colors, overwrite=True)
            else:
                write_label_tiff(paths["mask"], lab, overwrite=True)
            self._digests[i] = fingerprint
            written["mask"] = paths["mask"]
            for other in _MASK_SUFFIXES:  # e.g. .png -> .tif once a class list passes 256
                stale = target_path(self.output_dir, "masks", f"{stem}{other}")
                if other != mask_suffix and stale.is_file():
                    stale.unlink()
        # The image copy last: it costs seconds for a large photo, the mask is what matters.
        # It derives from the source file, so one from an earlier session is kept.
        if not paths["image"].is_file() or (force and i not in self._image_written):
            from PIL import Image

            rgb = to_uint8_rgb(image)
            with atomic_write(paths["image"], overwrite=True) as tmp:
                Image.fromarray(rgb).save(tmp, format="PNG")
            self._image_written.add(i)
            written["image"] = paths["image"]
        return paths if force else written

    def go(self, step: int) -> bool:
        """Move by ``step`` images; False at either end of the folder."""
        return self.go_to(self.index + step)

    def go_to(self, index: int) -> bool:
        """Make image ``index`` the current one (recorded in ``progress.json``)."""
        if not 0 <= index < len(self.images):
            return False
        if index != self.index:
            self.index = int(index)
            self.save_progress()
        return True

