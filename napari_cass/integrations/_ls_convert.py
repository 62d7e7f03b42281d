"""Move work between napari-cass folders and Label Studio, offline.

- :func:`folder_to_label_studio`: a dataset folder (``images/``, ``masks/``,
  ``classes.json``) or a ``napari-cass segment`` output folder (masks + ``classes.json``
  naming every source image) into Label Studio tasks with predictions (BrushLabels,
  one result per class present) and the labeling config for those classes.
- :func:`label_studio_to_dataset`: a Label Studio JSON export (BrushLabels
  annotations, or predictions) into a dataset folder: value ``k`` of a mask is class
  ``k`` of ``classes.json``, 0 is background (unpainted); where brush strokes overlap,
  the later result wins.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from ._ls_config import brush_target, label_config_xml
from ._ls_rle import encode_rle, mask_from_rle

__all__ = ["folder_to_label_studio", "label_studio_to_dataset"]

_MASK_SUFFIXES = (".png", ".tif", ".tiff")


def _pairs(folder: Path, doc: dict) -> list[tuple[Path, Path]]:
    """``(image, mask)`` of a dataset folder or of a ``segment`` output folder."""
    from ..io._plan import resolve_recorded

    if (folder / "images").is_dir() and (folder / "masks").is_dir():
        pairs = []
        for image in sorted((folder / "images").iterdir()):
            masks = [folder / "masks" / f"{image.stem}{s}" for s in _MASK_SUFFIXES]
            mask = next((m for m in masks if m.is_file()), None)
            if image.is_file() and mask is not None:
                pairs.append((image, mask))
        return pairs
    images = doc.get("images")
    if not isinstance(images, dict):
        raise ValueError(f"{folder} is neither a dataset folder (images/, masks/, classes.json) nor a "
                         "'napari-cass segment' output folder (its classes.json lists no images).")
    pairs = []
    for name, source in sorted(images.items()):
        mask = next((folder / f"{name}{s}" for s in _MASK_SUFFIXES if (folder / f"{name}{s}").is_file()), None)
        if isinstance(source, str) and mask is not None:
            pairs.append((Path(resolve_recorded(source, folder)), mask))
    return pairs


def folder_to_label_studio(folder: str | os.PathLike[str], out: str | os.PathLike[str], *,
                           image_prefix: str = "/data/local-files/?d=",
                           document_root: str | os.PathLike[str] | None = None,
                           overwrite: bool = False) -> dict[str, Any]:
    """Write Label Studio tasks with predictions for every mask of ``folder`` to ``out``.

    Each task's image URL is ``image_prefix`` + the image's path relative to
    ``document_root`` (default: ``folder``), ``/``-separated: with the default prefix,
    Label Studio serves it from local storage when started with
    ``LOCAL_FILES_SERVING_ENABLED=true LOCAL_FILES_DOCUMENT_ROOT=<document_root>``.
    The labeling config for the classes is written next to ``out`` (``.xml``).
    Returns ``{"tasks", "skipped", "config"}``.
    """
    from ..io import atomic_write, check_targets, read_classes_json, read_label_image

    folder = Path(folder).expanduser()
    out = Path(out).expanduser()
    config_path = out.with_suffix(".xml")
    check_targets([out, config_path], overwrite)
    doc = read_classes_json(folder / "classes.json")
    classes = doc["classes"]
    names = [c["name"] for c in classes]
    first = 1 if names[0].strip().casefold() == "background" else 0  # value 0: background / unpainted
    labels = names[first:]
    root = Path(document_root).expanduser().resolve() if document_root is not None else folder.resolve()
    run = doc.get("run") if isinstance(doc.get("run"), dict) else {}
    version = "napari-cass " + "/".join(str(run[k]) for k in ("method", "preset") if run.get(k)) if run else \
        "napari-cass"
    tasks, skipped = [], []
    for image, mask_path in _pairs(folder, doc):
        try:
            rel = image.resolve().relative_to(root)
        except ValueError:
            raise ValueError(f"The image {image} is not under the document root {root}: give --document-root "
                             "a folder that holds every image.") from None
        mask = read_label_image(mask_path)
        height, width = mask.shape[:2]
        results = []
        for value in np.unique(mask):
            if value < first or value >= len(names):
                continue  # background, or a value no class describes (e.g. 255 "ignore")
            results.append({
                "id": f"cass-{int(value)}", "from_name": "tag", "to_name": "image", "type": "brushlabels",
                "original_width": int(width), "original_height": int(height), "image_rotation": 0,
                "value": {"format": "rle", "rle": encode_rle(mask == value), "brushlabels": [names[value]]},
            })
        if not results:
            skipped.append(str(mask_path))
        tasks.append({"data": {"image": image_prefix + rel.as_posix()},
                      "predictions": [{"model_version": version, "result": results}]})
    if not tasks:
        raise ValueError(f"{folder} holds no image with its mask.")
    words = [c.get("synonyms") or [c["name"]] for c in classes[first:]]
    colors = [c["color"] for c in classes[first:]]
    with atomic_write(out, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(tasks), encoding="utf-8")
    with atomic_write(config_path, overwrite=overwrite) as tmp:
        tmp.write_text(label_config_xml(labels, words, colors), encoding="utf-8")
    return {"tasks": len(tasks), "skipped": skipped, "config": config_path}


def _filename(url: str) -> str:
    """The file name a task URL points at (``?d=`` of local storage, else the path's last part)."""
    parts = urlsplit(url)
    local = parse_qs(parts.query).get("d")
    return Path(unquote(local[0] if local else parts.path)).name


def _without_upload_prefix(name: str) -> str:
    head, sep, tail = name.partition("-")  # uploads are stored as "<8 hex>-<original name>"
    if sep and tail and len(head) == 8 and all(c in "0123456789abcdef" for c in head):
        return tail
    return name


def _find_image(images_dir: Path, url: str) -> Path:
    name = _filename(url)
    candidates = list(dict.fromkeys([name, _without_upload_prefix(name)]))
    for candidate in candidates:
        path = images_dir / candidate
        if candidate and path.is_file():
            return path
    raise FileNotFoundError(f"No image {' or '.join(candidates)} in {images_dir} for the task image {url[:120]}.")


def _task_results(task: dict, source: str) -> list | None:
    """The result list of the task's last kept annotation (or first prediction), None if none."""
    if source == "annotations":
        kept = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
        return kept[-1].get("result") if kept else None
    preds = [p for p in task.get("predictions") or [] if isinstance(p, dict) and "result" in p]
    return preds[0]["result"] if preds else None


def label_studio_to_dataset(export: str | os.PathLike[str], out: str | os.PathLike[str], *,
                            images_dir: str | os.PathLike[str] | None = None,
                            fetch: Callable[[str], np.ndarray] | None = None,
                            label_config: str | None = None, source: str = "annotations",
                            overwrite: bool = False, max_pixels: int | None = None) -> dict[str, Any]:
    """Turn a Label Studio JSON export into a dataset folder ``out``.

    Images come from ``images_dir`` (matched by file name; Label Studio's upload prefix
    ``<8 hex>-`` may be left off) or from ``fetch(url)``. The classes are the labels of
    ``label_config`` in order (its ``prompts`` become synonyms) or else the labels in the
    order they first appear. ``source`` is ``"annotations"`` (the last one not cancelled)
    or ``"predictions"``. Returns ``{"images", "skipped", "classes"}``.
    """
    from ..io import export_dataset_item, label_palette, read_image, unique_filenames

    if source not in ("annotations", "predictions"):
        raise ValueError(f"source must be 'annotations' or 'predictions', not {source!r}.")
    if (images_dir is None) == (fetch is None):
        raise ValueError("Give the folder of the images (--images) or Label Studio's address (--label-studio).")
    try:
        tasks = json.loads(Path(export).expanduser().read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"Cannot read the Label Studio export {export}: {exc}") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise ValueError(f"{export} is not a Label Studio JSON export (a list of tasks).")
    target = brush_target(label_config) if label_config else None
    labels = list(target.labels) if target else []
    words = [list(w) for w in target.words] if target else []
    chosen = []
    for task in tasks:
        results = [r for r in _task_results(task, source) or [] if isinstance(r, dict)
                   and str(r.get("type", "")).lower() == "brushlabels"
                   and (target is None or r.get("from_name") == target.from_name)]
        key = target.data_key if target else next(iter(task.get("data") or {}), None)
        url = (task.get("data") or {}).get(key) if key else None
        chosen.append((task, results, url))
        for r in results:
            for label in (r.get("value") or {}).get("brushlabels") or []:
                if label not in labels:
                    if target is not None:
                        raise ValueError(f"Task {task.get('id')}: label {label!r} is not in the labeling config.")
                    labels.append(label)
                    words.append([label])
    if not labels:
        raise ValueError(f"{export} holds no BrushLabels {source}.")
    names = ["background", *labels]
    colors = label_palette(len(names))
    index = {label: i + 1 for i, label in enumerate(labels)}
    images_dir = Path(images_dir).expanduser() if images_dir is not None else None
    stems = unique_filenames([Path(_without_upload_prefix(_filename(u or f"task-{t.get('id')}"))).stem
                              for t, _, u in chosen])
    written, skipped = [], []
    for (task, results, url), stem in zip(chosen, stems):
        if not results or not isinstance(url, str):
            skipped.append(f"task {task.get('id')}: no BrushLabels {source}" if url else
                           f"task {task.get('id')}: no image URL")
            continue
        image = read_image(_find_image(images_dir, url), max_pixels) if images_dir else fetch(url)
        height, width = image.shape[:2]
        mask = np.zeros((height, width), np.uint16 if len(names) > 256 else np.uint8)
        for r in results:
            if (r.get("original_width"), r.get("original_height")) != (width, height):
                raise ValueError(f"Task {task.get('id')}: a result is for a {r.get('original_width')} x "
                                 f"{r.get('original_height')} image, the image is {width} x {height}.")
            painted = mask_from_rle((r.get("value") or {}).get("rle"), width, height, max_pixels)
            for label in (r.get("value") or {}).get("brushlabels") or []:
                mask[painted] = index[label]
        export_dataset_item(out, stem, image, mask, names, colors, overwrite=overwrite,
                            synonyms=[[], *words])
        written.append(stem)
    return {"images": written, "skipped": skipped, "classes": names}
