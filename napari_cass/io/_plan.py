"""Planning a segmentation run's outputs before any model loads.

A run over a folder writes, for every image, ``<out>/<name><mask suffix>`` and
``<out>/<name>_overlay.png``, plus one ``<out>/classes.json``. Every name is decided here,
up front, so that no two outputs collide (``x.png`` and ``x_overlay.png`` in one folder,
``a.png`` and ``a.jpg``, ``Café`` and ``café`` on a case-insensitive disk), names keep
their letters (``café``, ``猫``), and a folder that cannot be written is refused before
minutes are spent loading models. The CLI, the Ray batch runner and the server client all
start from :func:`plan_outputs`.
"""

from __future__ import annotations

import json
import os
import tempfile
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ._images import IMAGE_SUFFIXES
from ._names import safe_filename, suffixed_filename, unique_filenames

__all__ = [
    "OVERLAY_SUFFIX",
    "OutputPlan",
    "PlannedImage",
    "check_writable_folder",
    "list_images",
    "plan_outputs",
    "record_source",
    "resolve_recorded",
]

#: What an image's quick-look file name adds to its mask's stem.
OVERLAY_SUFFIX = "_overlay"
CLASSES_FILE = "classes.json"


@dataclass(frozen=True)
class PlannedImage:
    """One input image and the files it will be written to.

    Attributes
    ----------
    source : Path
        The image file (absolute).
    name : str
        Output stem, unique in the run (case-insensitively, with the overlays).
    mask, overlay : Path
        ``<out>/<name><mask_suffix>`` and ``<out>/<name>_overlay.png``.
    renamed : bool
        True when ``name`` is not simply the safe form of the source's name (a collision
        suffix was added); recorded in ``classes.json`` under ``"images"``.
    """

    source: Path
    name: str
    mask: Path
    overlay: Path
    renamed: bool = False

    @property
    def outputs(self) -> tuple[Path, Path]:
        return (self.mask, self.overlay)


@dataclass(frozen=True)
class OutputPlan:
    """Every output of a run, decided before the models load (see :func:`plan_outputs`)."""

    out_dir: Path
    images: tuple[PlannedImage, ...]
    mask_suffix: str = ".png"
    previous_names: Mapping[str, str] = field(default_factory=dict)

    @property
    def classes_path(self) -> Path:
        return self.out_dir / CLASSES_FILE

    def names(self) -> dict[str, str]:
        """``{output name: source}`` for every planned image (run metadata, see :meth:`recorded`)."""
        return {item.name: self.recorded(item.source) for item in self.images}

    def recorded(self, source: str | os.PathLike[str]) -> str:
        """How ``classes.json`` records a source: its path relative to the output folder.

        Relative (``../photos/a.png``, ``/`` separators), so a folder that is shared does
        not carry the absolute paths of someone's disk, and input and output folders moved
        together still resume. Absolute only where no relative path exists (another drive).
        """
        return record_source(source, self.out_dir)

    def renamed(self) -> list[PlannedImage]:
        return [item for item in self.images if item.renamed]

    def output_paths(self) -> list[Path]:
        return [p for item in self.images for p in item.outputs]


def _key(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


def list_images(inputs: Iterable[str | os.PathLike[str]], recursive: bool = False,
                exclude: str | os.PathLike[str] | None = None,
                suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[tuple[Path, str]]:
    """Image files named by ``inputs`` (files or folders), each with the text its name comes from.

    Folders are scanned in sorted order (sub-folders with ``recursive``; their path parts
    joined by ``__``, so ``a/x.png`` is named from ``a__x``), hidden files and anything
    under ``exclude`` (the output folder) are skipped, a file given twice counts once.
    Raises ``FileNotFoundError`` / ``ValueError`` naming the input that is missing or empty.
    """
    excluded = Path(exclude).expanduser().resolve() if exclude is not None else None
    wanted = tuple(s.lower() for s in suffixes)
    found: dict[Path, str] = {}
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir() and excluded is not None and path.resolve() == excluded:
            raise ValueError(
                f"The output folder {path} is also an input folder: masks would mix with the "
                "images. Give another output folder (a sub-folder of it is fine)."
            )
        if path.is_dir():
            # Skip the output folder where it lies inside this input folder; an input folder
            # inside the output folder (``--out .``) is the user's images, never skipped.
            skip = excluded if excluded is not None and path.resolve() in excluded.parents else None
            files = sorted(
                p for p in path.glob("**/*" if recursive else "*")
                if p.is_file() and p.suffix.lower() in wanted and not p.name.startswith(".")
                and not (skip is not None and skip in p.resolve().parents)
            )
            if not files:
                hint = "" if recursive else " (use --recursive to search sub-folders)"
                raise ValueError(f"No images ({', '.join(wanted)}) in folder {path}{hint}.")
            for f in files:
                found.setdefault(f.resolve(), "__".join(f.relative_to(path).with_suffix("").parts))
        elif path.is_file():
            found.setdefault(path.resolve(), path.stem)
        else:
            raise FileNotFoundError(f"Input {path} does not exist; give image files or folders.")
    return list(found.items())


def record_source(source: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> str:
    """``source`` relative to ``out_dir`` (both resolved), ``/``-separated; absolute if none exists."""
    src = Path(source).expanduser().resolve()
    try:
        return Path(os.path.relpath(src, Path(out_dir).expanduser().resolve())).as_posix()
    except ValueError:  # Windows: another drive
        return str(src)


def resolve_recorded(recorded: str, out_dir: str | os.PathLike[str]) -> str:
    """The absolute source path of a ``classes.json`` record (relative to ``out_dir``, or absolute)."""
    return os.path.normpath(os.path.join(Path(out_dir).expanduser().resolve(), recorded))


def _previous_names(out_dir: Path) -> dict[str, str]:
    """``{absolute source: name}`` recorded by an earlier run in ``<out>/classes.json`` (if any)."""
    try:
        doc = json.loads((out_dir / CLASSES_FILE).read_text(encoding="utf-8"))
        images = doc.get("images") or {}
        return {resolve_recorded(src, out_dir): str(name) for name, src in images.items()
                if isinstance(name, str) and isinstance(src, str) and safe_filename(name) == name}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def _assign(bases: list[str], pinned: list[str | None], reserved: Sequence[str] = ()) -> list[str]:
    """Unique stems: names of earlier runs kept, then safe names, overlays never colliding.

    ``reserved`` names belong to images of earlier runs that are not in this one.
    """
    names: list[str | None] = [None] * len(bases)
    files: set[str] = set()  # keys of every stem and overlay stem handed out
    for stem in reserved:
        files.update((_key(stem), _key(stem + OVERLAY_SUFFIX)))

    def free(stem: str) -> bool:
        return _key(stem) not in files and _key(stem + OVERLAY_SUFFIX) not in files

    def take(i: int, stem: str) -> None:
        names[i] = stem
        files.update((_key(stem), _key(stem + OVERLAY_SUFFIX)))

    for i, stem in enumerate(pinned):
        if stem is not None and free(stem):
            take(i, stem)
    todo = [i for i in range(len(bases)) if names[i] is None]
    taken = [n for n in names if n is not None] + list(reserved)
    for i, stem in zip(todo, unique_filenames([bases[i] for i in todo], taken=taken)):
        base, n = stem, 1
        while not free(stem):  # x_overlay.png of image "x" vs the mask of image "x_overlay"
            n += 1
            stem = suffixed_filename(base, n)
        take(i, stem)
    return [n for n in names if n is not None]


def plan_outputs(inputs: Iterable[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *,
                 recursive: bool = False, mask_suffix: str = ".png",
                 suffixes: Sequence[str] = IMAGE_SUFFIXES) -> OutputPlan:
    """List the input images and give each its output files, before any model loads.

    Parameters
    ----------
    inputs : iterable of path-like
        Image files and folders (see :func:`list_images`).
    out_dir : path-like
        The output folder (need not exist yet); checked with
        :func:`check_writable_folder`.
    recursive : bool
        Also scan sub-folders.
    mask_suffix : str
        ``".png"`` (indexed, up to 255 mask values: 255 means "ignore" in PNG masks) or ``".tif"`` (uint16).
    suffixes : sequence of str
        Which files of a folder are images.

    Returns
    -------
    OutputPlan
        Names are the sources' names made safe (letters of every script kept, see
        :func:`napari_cass.io.safe_filename`); a collision gets ``_2``, ``_3``... in input
        order. A source that an earlier run into ``out_dir`` named (``classes.json``,
        ``"images"``) keeps that name, so a re-run over a grown folder resumes; names of
        earlier images that still exist but are not in this run are not reused, so their
        results are never taken for another image's.
    """
    out = Path(out_dir).expanduser()
    check_writable_folder(out)
    found = list_images(inputs, recursive=recursive, exclude=out, suffixes=suffixes)
    previous = _previous_names(out) if out.is_dir() else {}
    bases = [base for _, base in found]
    sources = {str(src) for src, _ in found}
    # Outputs of earlier runs whose images still exist keep their names; those of images
    # moved or deleted since may be taken (a moved folder then resumes by name).
    reserved = [name for src, name in previous.items() if src not in sources and Path(src).exists()]
    names = _assign(bases, [previous.get(str(src)) for src, _ in found], reserved)
    images = tuple(
        PlannedImage(source=src, name=name, mask=out / f"{name}{mask_suffix}",
                     overlay=out / f"{name}{OVERLAY_SUFFIX}.png",
                     renamed=_key(name) != _key(safe_filename(base)))
        for (src, base), name in zip(found, names)
    )
    _refuse_outputs_over_inputs(out, images)
    return OutputPlan(out_dir=out, images=images, mask_suffix=mask_suffix, previous_names=previous)


def _refuse_outputs_over_inputs(out: Path, images: Sequence[PlannedImage]) -> None:
    """An output that is an input image (``segment a.png --out .``) would replace the image.

    Also where the output's name is a link to an input (``out/a.png -> ../photos/a.png``):
    the session did not create that link, and writing would take the input's place.
    """
    folder = out.resolve()
    inputs = {_key(item.source.name): item.source for item in images if item.source.parent == folder}
    sources = {item.source for item in images}
    for item in images:
        for path in item.outputs:
            source = inputs.get(_key(path.name))
            if source is None and os.path.lexists(path) and path.resolve() in sources:
                source = path.resolve()
            if source is not None:
                raise ValueError(
                    f"The output {path} would replace the input image {source}. Segment into "
                    "another output folder (a sub-folder of the images' folder is fine)."
                )


def check_writable_folder(folder: str | os.PathLike[str]) -> None:
    """Refuse an output folder that cannot be created or written, without creating it.

    Raises ``NotADirectoryError`` when the folder, or a folder above it, is a regular
    file, and ``PermissionError`` when nothing can be written there; both name the
    folder. A probe file is created in the folder (or its nearest existing parent) and
    removed at once.
    """
    target = Path(folder).expanduser()
    probe_dir = target
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if probe_dir.exists() and not probe_dir.is_dir():
        where = "is a file" if probe_dir == target else f"is under {probe_dir}, which is a file"
        raise NotADirectoryError(f"The output folder {target} {where}, not a folder; give a folder path.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".napari-cass-probe-", dir=probe_dir)
    except OSError as exc:
        what = target if probe_dir == target else f"{target} (in {probe_dir})"
        raise PermissionError(
            f"Cannot write the output folder {what}: {exc.strerror or exc}. "
            "Choose a folder you can write to."
        ) from None
    os.close(fd)
    os.unlink(probe)
