"""An output folder of a segmentation run: never lost, never mixed.

The folder holds ``classes.json`` and, per image, a mask and a quick-look overlay (names
from :func:`napari_cass.io.plan_outputs`). Invariants, kept by the functions below:

- ``classes.json`` is written before the first mask, so masks are never without a table.
- Every mask beside a ``classes.json`` was made with the classes and settings it records;
  a run with another class list refuses, or (``overwrite``) first removes the outputs it
  will replace, and refuses if other masks would stay behind.
- Files appear whole (:func:`napari_cass.io.atomic_write`); the temporary files of a
  killed run are removed by the next run, which holds a lock on the folder meanwhile.
- A re-run resumes: an image whose mask and overlay exist (and are newer than the image,
  with the image's size) is done. A mask whose overlay is missing (a run stopped between
  the two, or the quick look deleted) is kept, never segmented again: it may hold
  corrections; :func:`write_missing_overlays` draws the overlay from it.

Order of use: :class:`RunLock` -> :func:`check_output_folder` -> load models ->
:func:`start_run` -> :func:`write_image_outputs` per image (any process or machine
sharing the folder; :func:`image_done` tells what is left). A runner in a few lines::

    plan = plan_outputs(["photos/"], "masks")              # names; refuses a bad folder
    classes = RunClasses.from_prompts(prompts)             # prompts: background first, if any
    settings = {"method": "cass", "preset": "interactive"}
    with RunLock(plan.out_dir):
        clean_temp_files(plan.out_dir)
        decision = check_output_folder(plan, classes, settings, overwrite=False)
        segmenter = ...                                    # only now: load the models
        start_run(plan, classes, settings, decision)       # classes.json before any mask
        for item in decision.todo(plan):                   # workers may share this part
            image = read_image(item.source)
            write_image_outputs(item, image, segmenter.segment(image, prompts), classes)
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_write
from ._classes_json import read_classes_json, write_classes_json
from ._images import image_size
from ._lock import OutputConflictError, RunLock
from ._masks import write_indexed_png, write_label_tiff
from ._overlay import overlay_labels
from ._palette import label_palette
from ._plan import OutputPlan, PlannedImage

__all__ = [
    "FolderDecision",
    "OutputConflictError",
    "RunClasses",
    "RunLock",
    "check_output_folder",
    "clean_temp_files",
    "image_done",
    "image_state",
    "start_run",
    "write_image_outputs",
    "write_missing_overlays",
]

# atomic_write's temporary files: ".<stem>.<8 random>.tmp<suffix>"
_TEMP = re.compile(r"^\..*\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")
_MASK_SUFFIXES = (".png", ".tif", ".tiff")


@dataclass(frozen=True)
class RunClasses:
    """The mask values of a run: value ``k`` is ``names[k]``, described by ``words[k]``.

    Value 0 is "background": the background class when ``has_background``, else a
    word-less row for unlabelled pixels (the plugin's mask convention).
    """

    names: tuple[str, ...]
    words: tuple[tuple[str, ...], ...]
    has_background: bool

    @classmethod
    def from_prompts(cls, prompts: Sequence[Any]) -> RunClasses:
        """From the engine's class prompts (``.name``, ``.queries``), background first if any."""
        prompts = list(prompts)
        has_bg = bool(prompts) and prompts[0].name.strip().casefold() == "background"
        rows = [(p.name, tuple(p.queries)) for p in prompts]
        if not has_bg:
            rows.insert(0, ("background", ()))
        return cls(tuple(n for n, _ in rows), tuple(w for _, w in rows), has_bg)

    @property
    def colors(self) -> np.ndarray:
        return label_palette(len(self.names))

    def differences(self, doc: Mapping[str, Any]) -> str | None:
        """How a ``classes.json`` document differs from these classes (``None``: same)."""
        rows = [(c["name"], tuple(c.get("synonyms") or ())) for c in doc["classes"]]
        theirs_bg = bool(doc.get("has_background", bool(rows and rows[0][1])))
        if rows == list(zip(self.names, self.words)) and theirs_bg == self.has_background:
            return None
        return f"{_describe(rows)} there, {_describe(list(zip(self.names, self.words)))} in this run"


def _describe(rows: Sequence[tuple[str, Sequence[str]]]) -> str:
    parts = [name + (f" ({', '.join(words)})" if words and list(words) != [name] else "")
             for name, words in rows[:6]]
    return "[" + "; ".join(parts) + ("; ..." if len(rows) > 6 else "") + "]"


_MISSING = object()


def _settings_differences(doc: Mapping[str, Any], settings: Mapping[str, Any]) -> list[str]:
    """Every setting that differs; one recorded on one side only differs too.

    A setting nobody recorded cannot be vouched for (a folder made by a server run that
    recorded no models, resumed locally with ``--random-weights``), so it is a difference,
    not a match. Tables written before ``"run"`` existed are compared on what they have.
    """
    old = doc.get("run")
    if not isinstance(old, Mapping):  # written before "run" existed: compare what it has
        old = {k: doc[k] for k in ("method", "preset", "random_weights") if k in doc}
        keys = [k for k in settings if k in old]
    else:
        keys = [*settings, *(k for k in old if k not in settings)]

    def shown(value: Any) -> str:
        return "not recorded" if value is _MISSING else repr(value)

    return [f"{k} {shown(old.get(k, _MISSING))} there, {shown(settings.get(k, _MISSING))} in this run"
            for k in keys if old.get(k, _MISSING) != settings.get(k, _MISSING)]


@dataclass
class FolderDecision:
    """What :func:`check_output_folder` decided.

    Attributes
    ----------
    done : set of str
        Names of images whose outputs are complete: skip them (resume).
    remove : list of Path
        Outputs made with another class list that this run replaces: :func:`start_run`
        deletes them before it writes the new ``classes.json``.
    resumed : bool
        The folder already held this run's ``classes.json``.
    overlays : list of PlannedImage
        Images (among ``done``) whose mask exists but whose overlay does not: their masks
        are kept; :func:`write_missing_overlays` draws the overlays from them.
    """

    done: set[str] = field(default_factory=set)
    remove: list[Path] = field(default_factory=list)
    resumed: bool = False
    overlays: list[PlannedImage] = field(default_factory=list)

    def todo(self, plan: OutputPlan) -> list[PlannedImage]:
        return [item for item in plan.images if item.name not in self.done]


def _listing(paths: Sequence[Path], limit: int = 5) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" (and {len(paths) - limit} more)" if len(paths) > limit else "")


def image_state(item: PlannedImage) -> str:
    """Where ``item``'s outputs stand: ``"done"``, ``"no_overlay"``, ``"missing"``,
    ``"partial"`` or ``"stale"``.

    Call it only where ``classes.json`` matches the run (:func:`check_output_folder`):
    the files are then known to hold these classes. Files appear whole (atomic writes), so
    existence means complete. ``"no_overlay"``: the mask exists, its overlay does not (a
    run stopped between the two, or the overlay was deleted): the mask is kept, as it may
    hold corrections, and only the overlay is drawn again. ``"partial"``: only the overlay
    exists (redo the image). ``"stale"``: the mask does not have the image's size
    (header-only check) or is older than the image (the image changed since): it may hold
    someone's corrections, so only ``overwrite`` replaces it.
    """
    has_mask, has_overlay = item.mask.is_file(), item.overlay.is_file()
    if not has_mask:
        return "partial" if has_overlay else "missing"
    try:
        written = min(p.stat().st_mtime_ns for p in (item.mask, item.overlay) if p.is_file())
        if written < item.source.stat().st_mtime_ns:
            return "stale"
        if image_size(item.mask) != image_size(item.source):
            return "stale"
    except (OSError, ValueError):
        return "stale"
    return "done" if has_overlay else "no_overlay"


def image_done(item: PlannedImage) -> bool:
    """True when ``item``'s mask and overlay are complete and current (:func:`image_state`)."""
    return image_state(item) == "done"


def check_output_folder(plan: OutputPlan, classes: RunClasses, settings: Mapping[str, Any],
                        overwrite: bool = False) -> FolderDecision:
    """Decide, before models load, what a run may do with its output folder.

    - No ``classes.json``: a fresh folder; planned outputs that exist already (files
      napari-cass cannot vouch for) are refused unless ``overwrite``.
    - ``classes.json`` with the same classes and settings: resume (finished images are
      skipped; results older than their image, or of another size, are refused), or redo
      everything with ``overwrite``.
    - ``classes.json`` with other classes or settings: refused unless ``overwrite``; with
      it, refused too if masks not in this run would be left beside the new table, else
      the planned outputs that exist are marked for removal.

    Raises
    ------
    OutputConflictError
        With a message naming the files or the differences and what to do.
    """
    existing = [p for p in plan.output_paths() if p.exists()]
    path = plan.classes_path
    if not path.exists():
        if existing and not overwrite:
            raise OutputConflictError(
                f"{len(existing)} output file(s) exist already and {path.name} in {plan.out_dir} is "
                f"missing, so nothing says what they are: {_listing(existing)}. Use --overwrite "
                "(overwrite=True) to replace them, or another output folder."
            )
        return FolderDecision()
    try:
        doc = read_classes_json(path)
    except (ValueError, OSError) as exc:
        raise OutputConflictError(
            f"{path} is not a napari-cass class table ({exc}); segment into another folder."
        ) from None
    differences = classes.differences(doc)
    changed = ([f"classes: {differences}"] if differences else []) + _settings_differences(doc, settings)
    if not changed:
        if overwrite:
            return FolderDecision(resumed=True)
        states = {item.name: image_state(item) for item in plan.images}
        stale = [item.mask for item in plan.images if states[item.name] == "stale"]
        if stale:
            raise OutputConflictError(
                f"{len(stale)} result(s) in {plan.out_dir} do not match their image any more (the "
                f"image is newer, or of another size): {_listing(stale)}. They may hold corrections, "
                "so they are kept: use --overwrite (overwrite=True) to segment those images again, "
                "or move the results away."
            )
        done = {name for name, state in states.items() if state in ("done", "no_overlay")}
        overlays = [item for item in plan.images if states[item.name] == "no_overlay"]
        return FolderDecision(done=done, resumed=True, overlays=overlays)
    what = "; ".join(changed)
    if not overwrite:
        raise OutputConflictError(
            f"{plan.out_dir} holds results made differently ({what}). Mask values there would "
            "mean other classes than this run's. Segment into another folder, or use "
            "--overwrite (overwrite=True) to replace them."
        )
    planned = {p.resolve() for p in plan.output_paths()}
    others = sorted(p for p in plan.out_dir.iterdir()
                    if p.is_file() and p.suffix.lower() in _MASK_SUFFIXES
                    and not p.name.startswith(".") and p.resolve() not in planned)
    if others:
        raise OutputConflictError(
            f"{plan.out_dir} holds {len(others)} other result file(s) made differently ({what}): "
            f"{_listing(others)}. Replacing classes.json would leave them described by the new "
            "classes. Include their images in this run, move them away, or segment into "
            "another folder."
        )
    return FolderDecision(remove=existing)


def clean_temp_files(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files that a killed run left in ``out_dir``; returns them.

    Only names of :func:`napari_cass.io.atomic_write`'s pattern (``.<name>.<8 chars>.tmp...``)
    are removed. Hold the folder's :class:`RunLock` while calling this, so that no running
    writer's temporary file is taken.
    """
    folder = Path(out_dir)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in sorted(folder.iterdir()):
        if p.is_file() and _TEMP.match(p.name):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def start_run(plan: OutputPlan, classes: RunClasses, settings: Mapping[str, Any],
              decision: FolderDecision, extra: Mapping[str, Any] | None = None) -> Path:
    """Prepare the folder and write ``classes.json``: call after the models load, before any mask.

    Removes the outputs ``decision`` marked (made with other classes), then writes the
    class table with ``settings`` under ``"run"`` (compared by the next run) and the
    name of every planned image's source under ``"images"`` (collision suffixes can be
    traced back; names of earlier runs not in this plan are kept), as a path relative
    to the output folder (:meth:`OutputPlan.recorded`: no absolute paths in a shared folder).
    """
    for p in decision.remove:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    images: dict[str, str] = {}
    if decision.resumed:
        images.update({name: plan.recorded(src) for src, name in plan.previous_names.items()})
    images.update(plan.names())
    doc_extra = dict(extra or {})
    doc_extra.update({"has_background": classes.has_background, "run": dict(settings), "images": images})
    return write_classes_json(plan.classes_path, list(classes.names), classes.colors,
                              [list(w) for w in classes.words], overwrite=True, extra=doc_extra)


def write_image_outputs(item: PlannedImage, image: np.ndarray, result: Any,
                        classes: RunClasses) -> tuple[Path, Path]:
    """Write one image's mask and overlay atomically from a ``SegmentationResult``.

    Uses ``result.mask()`` (value 0 = background / unlabelled) and checks that
    ``result.mask_classes`` are the run's classes, so no mask is written under a table
    that does not describe it. The mask comes first, the overlay second: an image is done
    (:func:`image_done`) only when both exist. Returns ``(mask, overlay)``.
    """
    from PIL import Image

    names = tuple(c.name for c in result.mask_classes)
    if names != classes.names:
        raise ValueError(
            f"The result's classes {list(names)} are not the run's classes {list(classes.names)}; "
            "segment with the class list the run was started with."
        )
    labels = result.mask()
    colours = classes.colors
    if item.mask.suffix.lower() == ".png":
        write_indexed_png(item.mask, labels, colours, overwrite=True)
    else:
        write_label_tiff(item.mask, labels, overwrite=True)
    quick_look = overlay_labels(image, labels, colours, alpha=0.5, skip_zero=True)
    with atomic_write(item.overlay, overwrite=True) as tmp:
        Image.fromarray(quick_look).save(tmp, format="PNG")
    return item.mask, item.overlay


def write_missing_overlays(decision: FolderDecision, classes: RunClasses,
                           max_pixels: int | None = None) -> list[tuple[PlannedImage, str]]:
    """Draw the overlays of ``decision.overlays`` from their existing masks (no models).

    The masks are read, never written; values no class describes (255, "ignore", painted
    by an annotator) are left uncoloured. Returns the images whose overlay could not be
    drawn, each with the reason (an unreadable mask or image); their masks stay as they are.
    """
    from PIL import Image

    from ._images import read_image
    from ._masks import read_label_image

    failed: list[tuple[PlannedImage, str]] = []
    colours = classes.colors
    for item in decision.overlays:
        try:
            labels = read_label_image(item.mask)
            quick_look = overlay_labels(read_image(item.source, max_pixels=max_pixels or 0),
                                        np.where(labels < len(classes.names), labels, 0), colours,
                                        alpha=0.5, skip_zero=True)
            with atomic_write(item.overlay, overwrite=True) as tmp:
                Image.fromarray(quick_look).save(tmp, format="PNG")
        except (OSError, ValueError) as exc:
            failed.append((item, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
    return failed
