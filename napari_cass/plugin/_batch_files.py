"""Batch mode's file rules, Qt-free: where a save may write, and what ``progress.json`` may say.

A batch output folder may be shared (a lab drive, a cloud folder): its
``progress.json`` and sub-folders are input from whoever wrote there last. So

* a mask name recorded in ``progress.json`` is used only if it is already a safe
  file name (:func:`napari_cass.io.safe_filename` leaves it unchanged: the rule the
  CLI applies to ``classes.json``); anything else is dropped with a warning;
* ``images/`` and ``masks/`` may not be symbolic links or lead outside the output
  folder, and every file is checked to lie directly in one of them before it is
  written or deleted (:func:`target_path`);
* an output folder whose ``images/`` or ``masks/`` holds an input image (the
  dataset root as output) is refused: the image copies would overwrite the inputs.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ._classes import LabelClasses

__all__ = [
    "SUBFOLDERS",
    "check_extends",
    "check_folders",
    "check_labels",
    "digest",
    "existing_stems",
    "match_recorded",
    "read_progress",
    "read_progress_doc",
    "read_saved_classes",
    "refuse_existing",
    "short_reason",
    "target_path",
    "update_classes",
]

SUBFOLDERS = ("images", "masks")
_MASK_SUFFIXES = (".png", ".tif")
# ~200 bytes per image: 64 MB is far more than a folder of 100,000 images needs.
_MAX_PROGRESS_BYTES = 64 << 20


def name_key(name: str) -> str:
    """The name an image is recorded under (NFC: macOS and Linux spell it alike)."""
    return unicodedata.normalize("NFC", name)


def _fold(name: str) -> str:
    """How a case-insensitive file system (Windows, macOS) compares two names."""
    return unicodedata.normalize("NFC", name).casefold()


def digest(labels: np.ndarray) -> str:
    """A fingerprint of a mask (dtype, shape and values): unchanged masks are not rewritten."""
    arr = np.ascontiguousarray(labels)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def is_safe_name(name: object) -> bool:
    """True for a text that :func:`napari_cass.io.safe_filename` leaves as it is."""
    from napari_cass.io import safe_filename

    return isinstance(name, str) and bool(name) and safe_filename(name) == name


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def check_subfolder(output_dir: Path, sub: str) -> Path:
    """``output_dir / sub`` if it is a real folder of the output folder (or not there yet).

    Raises ``ValueError`` for a symbolic link, or a folder that resolves elsewhere
    (a junction, a bind mount): a save there would replace or delete files outside.
    """
    folder = output_dir / sub
    if folder.is_symlink():
        raise ValueError(
            f"{folder} is a symbolic link (to {os.readlink(folder)}): batch mode writes and "
            f"deletes files in {sub}/ and will not follow it outside the output folder. "
            f"Replace it with a real folder, or choose another output folder."
        )
    if folder.exists():
        if not folder.is_dir():
            raise ValueError(f"{folder} is a file, not a folder: move it away or choose another "
                             "output folder.")
        if folder.resolve() != output_dir.resolve() / sub:
            raise ValueError(
                f"{folder} leads to {folder.resolve()}, outside the output folder: batch mode "
                "will not write there. Choose another output folder."
            )
    return folder


def check_folders(image_dir: Path, output_dir: Path, images: list[Path]) -> None:
    """Refuse sub-folders that escape the output folder, and outputs that hold the inputs.

    An output folder whose ``images/`` is (or contains) the image folder, or whose
    ``images/`` or ``masks/`` holds an input file (also through a symbolic link),
    would have its inputs overwritten by image copies and masks.
    """
    for sub in SUBFOLDERS:
        check_subfolder(output_dir, sub)
    real, real_in = output_dir.resolve(), image_dir.resolve()
    # a plain file of the image folder is where the folder is; only links need resolving
    where = [(p, p.resolve() if p.is_symlink() else real_in / p.name) for p in images]
    for sub in SUBFOLDERS:
        folder = real / sub
        clash = next((p for p, rp in where if _inside(rp, folder)), None)
        if clash is None and _inside(real_in, folder):
            clash = image_dir
        if clash is not None:
            raise ValueError(
                f"The output folder's {sub}/ holds the input images ({clash.name}): saving would "
                f"overwrite them. Choose an output folder outside the dataset, e.g. "
                f"{real.parent / (real.name + '-annotations')}."
            )


def target_path(output_dir: Path, sub: str, name: str) -> Path:
    """``output_dir/sub/name``, checked to lie directly in that sub-folder before a write or delete.

    Raises ``ValueError`` when ``name`` is not a plain safe file name, the sub-folder
    is a link or leads elsewhere, or the file itself is a symbolic link.
    """
    if not is_safe_name(name) or name in (".", ".."):
        raise ValueError(f"{name!r} is not a plain file name; batch mode writes only inside "
                         f"{output_dir / sub}.")
    folder = check_subfolder(output_dir, sub)
    path = folder / name
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link: batch mode did not create it and will not "
                         "replace or delete it. Remove it, or choose another output folder.")
    if path.resolve().parent != output_dir.resolve() / sub:
        raise ValueError(f"{path} resolves outside {output_dir / sub}; nothing was written.")
    return path


def existing_stems(output_dir: Path) -> set[str]:
    """Stems (case-folded) of the masks and image copies already in the output folder."""
    stems: set[str] = set()
    for sub in SUBFOLDERS:
        folder = output_dir / sub
        if not folder.is_dir() or folder.is_symlink():
            continue
        for p in folder.iterdir():
            if p.suffix.lower() in _MASK_SUFFIXES and not p.name.startswith("."):
                stems.add(_fold(p.stem))
    return stems


def read_progress(path: Path, image_dir: Path) -> dict[str, Any]:
    """``progress.json`` as a dict (empty if missing); refused if unreadable or another batch's."""
    import json

    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ValueError(f"{path} is a link or not a file: batch mode only reads a progress.json "
                         "it wrote. Remove it, or choose another output folder.")
    if not path.is_file():
        return {}
    try:
        if path.stat().st_size > _MAX_PROGRESS_BYTES:
            raise ValueError(f"{path.stat().st_size} bytes, more than a batch ever writes")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{path} is unreadable ({err}); choose another output folder, or move it away to "
            "start afresh (saved masks are kept; new masks get other names)."
        ) from None
    recorded = data.get("image_dir")
    if not isinstance(recorded, str) or not recorded:
        raise ValueError(
            f"{path} names no image folder (no \"image_dir\"): napari-cass did not write it. "
            "Choose another output folder, or move progress.json away to start afresh "
            "(saved masks are then kept, and new masks get other names)."
        )
    if Path(recorded).resolve() != image_dir.resolve():
        raise ValueError(
            f"{path.parent} holds the batch of another image folder ({recorded}); "
            "choose another output folder."
        )
    return data


def read_progress_doc(path: Path, data: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The usable ``{image name: mask name}`` records of a ``progress.json``, and warnings.

    Only mask names that are safe file names are kept, each at most once (compared
    as a case-insensitive file system does): a crafted ``"../../victim"``,
    ``"/home/u/thesis"`` or two images sharing one mask are dropped and reported.
    """
    masks = data.get("masks")
    if masks is None:
        return {}, []
    if not isinstance(masks, dict):
        return {}, [f"{path.name}: 'masks' is not an object; its records were ignored."]
    kept: dict[str, str] = {}
    used: set[str] = set()
    dropped: list[str] = []
    for image, mask in masks.items():
        if not isinstance(image, str) or not is_safe_name(mask) or _fold(mask) in used:
            dropped.append(repr(mask)[:80])
            continue
        kept[image] = mask
        used.add(_fold(mask))
    warnings = []
    if dropped:
        warnings.append(
            f"{path.name}: ignored {len(dropped)} mask name(s) that are not plain, distinct file "
            f"names ({', '.join(dropped[:3])}{'…' if len(dropped) > 3 else ''}); those images get "
            "new mask names. Was the folder edited by hand?"
        )
    return kept, warnings


def short_reason(err: BaseException, path: Path) -> str:
    """A one-line reason an image could not be read, without the folder's path."""
    try:
        if path.is_file() and path.stat().st_size == 0:
            return "empty file (0 bytes)"
    except OSError:
        pass
    text = str(err).replace(str(path), path.name).strip() or type(err).__name__
    return text.splitlines()[0][:200]


def check_extends(path: Path, old: list[str], new: list[str]) -> None:
    """Refuse a class list that is not ``old`` with classes appended, saying what differs."""
    if new[: len(old)] == old:
        return
    missing = [n for n in old if n not in new]
    moved = [f"'{n}' (label {old.index(n)} -> {new.index(n)})" for n in old
             if n in new and new.index(n) != old.index(n)]
    if missing:
        what = f"{', '.join(repr(n) for n in missing)} {'is' if len(missing) == 1 else 'are'} missing"
    elif moved:
        what = f"classes moved: {', '.join(moved)}"
    else:
        what = "the class order differs"
    raise ValueError(
        f"The class list does not match {path} ({what}): masks saved in this batch would "
        f"change meaning. Keep the saved classes in order ({', '.join(old)}) and add new "
        "classes at the end, or choose another output folder."
    )


def check_labels(labels: np.ndarray, image_shape: tuple[int, ...], n_labels: int,
                 name: str) -> np.ndarray:
    """The mask as an array, refused (with what to do) if its shape or values do not fit."""
    lab = np.asarray(labels)
    if lab.ndim != 2 or lab.shape != tuple(image_shape[:2]):
        raise ValueError(
            f"The mask of {name} has shape {lab.shape}, but the image is "
            f"{tuple(image_shape[:2])} (height, width): a batch mask is one 2-D label image "
            "of the image's size."
        )
    if lab.size:
        low, top = int(lab.min()), int(lab.max())
        if low < 0 or top >= n_labels:
            bad = low if low < 0 else top
            raise ValueError(
                f"The mask of {name} holds label {bad}, but the class list has labels "
                f"0..{n_labels - 1}: add a class for it or erase those pixels, then save."
            )
    return lab


def read_saved_classes(path: Path) -> dict[str, Any] | None:
    """The validated ``classes.json`` of a batch, or None before the first save (never a link)."""
    from napari_cass.io import read_classes_json

    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link: batch mode only reads a classes.json it "
                         "wrote. Remove it, or choose another output folder.")
    return read_classes_json(path) if path.is_file() else None


def update_classes(path: Path, classes: LabelClasses) -> Path | None:
    """Write ``classes.json`` if ``classes`` differs from it; refuse incompatible lists."""
    from napari_cass.io import write_classes_json

    doc = read_saved_classes(path)
    new_rows = list(zip(classes.names, classes.colors.astype(int).tolist(),
                        [list(s) for s in classes.synonyms]))
    extra: dict[str, Any] = {}
    if doc is not None:
        check_extends(path, [c["name"] for c in doc["classes"]], list(classes.names))
        rows = [(c["name"], list(c["color"]), list(c["synonyms"])) for c in doc["classes"]]
        if rows == new_rows:
            return None
        extra = {k: v for k, v in doc.items() if k not in ("format", "classes")}
    return write_classes_json(path, classes.names, classes.colors, classes.synonyms,
                              overwrite=True, extra=extra or None)


def match_recorded(records: dict[str, str], names: list[str]) -> dict[str, str]:
    """Re-key ``records`` whose image now has another Unicode spelling (NFD <-> NFC), in place.

    Returns the renames ``{recorded name: name in the folder}``.
    """
    present = set(names)
    orphans: dict[str, str] = {}
    for name in records:
        if name not in present:
            orphans.setdefault(name_key(name), name)
    renamed = {}
    for name in names:
        if name in records:
            continue
        old = orphans.pop(name_key(name), None)
        if old is not None:
            records[name] = records.pop(old)
            renamed[old] = name
    return renamed


def refuse_existing(name: str, paths: list[Path]) -> None:
    """Refuse to replace files of an image the batch has not saved yet (it did not write them)."""
    for p in paths:
        if p.exists():
            raise ValueError(
                f"{p} exists, but this batch did not write it ({name} is not saved in "
                "progress.json): it is left as it is. Move it away, or choose another output folder."
            )
