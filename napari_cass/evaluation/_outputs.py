"""Which files of an ``eval`` run folder a run may write, replace or delete.

A run folder (``<out>/<run name>/``) is often shared (a lab's results folder). Whoever can
write there could plant a ``worst`` or ``predictions`` symlink to another folder, so that
clearing the old drawings deletes files there and predictions land there, or leave a file
of their own where a prediction goes. So:

- the run folder, ``predictions/`` and ``worst/`` must be real folders inside ``--out``
  (not symbolic links, nothing escaping it), and the files a run appends to or reads back
  (``per_image.jsonl``, ``signature.json``, ``written.jsonl``) must not be links: refused,
  with a message, before any model loads;
- every file a run writes under ``predictions/`` or ``worst/`` is recorded in
  ``written.jsonl`` *before* it is written (so a killed run's files are known too);
- a run replaces or deletes only recorded files. A file there that no run recorded is
  never replaced: the run stops and names it.

Folders made before ``written.jsonl`` existed resume: the predictions of the images their
``per_image.jsonl`` lists and the drawings their ``results.json`` lists count as recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from ..io import atomic_write, safe_filename

__all__ = ["RECORD_FILE", "RunFolderError", "RunOutputs", "check_run_folder"]

#: The run folder's list of the files its runs wrote under ``predictions/`` and ``worst/``.
RECORD_FILE = "written.jsonl"
SUBFOLDERS = ("predictions", "worst")
_NO_LINKS = ("per_image.jsonl", "signature.json", RECORD_FILE, "results.json")


class RunFolderError(ValueError):
    """The run folder holds something a run may not write through, replace or delete."""


def _is_link(path: Path) -> bool:
    return path.is_symlink() or (hasattr(path, "is_junction") and path.is_junction())


def check_run_folder(out_dir: str | os.PathLike[str], run_dir: str | os.PathLike[str]) -> None:
    """Refuse a run folder (or its ``predictions/``, ``worst/``) that is a link or leads outside.

    ``out_dir`` itself is the user's choice and may be a link; below it, nothing may be.

    Raises
    ------
    RunFolderError
        Naming the entry, what it is, and what to do.
    """
    out, run = Path(out_dir), Path(run_dir)
    advice = "Remove it (or choose another --out folder): a run writes only into real folders under --out."
    if _is_link(run):
        raise RunFolderError(f"The run folder {run} is a symbolic link. {advice}")
    if run.exists() and not run.is_dir():
        raise RunFolderError(f"The run folder {run} is a file, not a folder. {advice}")
    if run.exists() and out.resolve() not in run.resolve().parents:
        raise RunFolderError(f"The run folder {run} leads outside {out}. {advice}")
    for name in SUBFOLDERS:
        sub = run / name
        if _is_link(sub):
            raise RunFolderError(f"{sub} is a symbolic link (to {os.readlink(sub)}); eval would write and "
                                 f"delete files where it points. {advice}")
        if sub.exists() and (not sub.is_dir() or sub.resolve().parent != run.resolve()):
            raise RunFolderError(f"{sub} is not a folder of the run folder. {advice}")
    for name in _NO_LINKS:
        path = run / name
        if _is_link(path) or (path.exists() and not path.is_file()):
            raise RunFolderError(f"{path} is not a regular file (a link, or a folder); eval reads and "
                                 f"appends to it. {advice}")


def _entry(value: object) -> str | None:
    """A record line's relative path, if it is one a run writes (``predictions/<name>``...)."""
    if not isinstance(value, str):
        return None
    parts = value.split("/")
    if len(parts) != 2 or parts[0] not in SUBFOLDERS:
        return None
    name = parts[1]
    return value if name and safe_filename(name) == name else None


class RunOutputs:
    """The files under ``predictions/`` and ``worst/`` a run folder's runs wrote.

    Parameters
    ----------
    run_dir : path-like
        The run folder; checked with :func:`check_run_folder` (against its parent).
    legacy : iterable of str
        Relative paths known to be a run's own without a record line (the predictions of
        the images ``per_image.jsonl`` lists, in folders older than ``written.jsonl``).
    """

    def __init__(self, run_dir: str | os.PathLike[str], legacy: Iterable[str] = ()):
        self.run_dir = Path(run_dir)
        check_run_folder(self.run_dir.parent, self.run_dir)
        self.record = self.run_dir / RECORD_FILE
        self.written: set[str] = set()
        for value in legacy:
            if (entry := _entry(value)) is not None:
                self.written.add(entry)
        self.written.update(self._read_record())
        self.written.update(self._read_legacy_worst())

    def _read_record(self) -> set[str]:
        entries: set[str] = set()
        with contextlib.suppress(OSError):
            for line in self.record.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError):
                    if (entry := _entry(json.loads(line))) is not None:
                        entries.add(entry)
        return entries

    def _read_legacy_worst(self) -> set[str]:
        """The drawings an older run listed in ``results.json`` (before ``written.jsonl``)."""
        try:
            worst = json.loads((self.run_dir / "results.json").read_text(encoding="utf-8")).get("worst")
        except (OSError, ValueError, AttributeError):
            return set()
        return {entry for w in worst or () if isinstance(w, dict) and (entry := _entry(w.get("file")))}

    def _relative(self, path: Path) -> str:
        entry = _entry(Path(path).relative_to(self.run_dir).as_posix())
        if entry is None:  # a programming error: runs write only predictions/<name>, worst/<name>
            raise ValueError(f"{path} is not a file of {self.run_dir}'s predictions/ or worst/ folder.")
        return entry

    def claim(self, path: str | os.PathLike[str]) -> Path:
        """Make ``path`` ready to be written: its folder real, its name recorded; returns it.

        Raises
        ------
        RunFolderError
            The folder became a link, or a file no run recorded is at ``path``.
        """
        path = Path(path)
        entry = self._relative(path)
        folder = path.parent
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder)  # never through a link: the run folder itself was checked
        check_run_folder(self.run_dir.parent, self.run_dir)  # again: the folder may have changed since
        if (path.exists() or _is_link(path)) and entry not in self.written:
            raise RunFolderError(
                f"{path} exists, but no eval run wrote it (it is not in {self.record.name}); eval "
                "replaces only its own files. Move it away, or choose another --out folder."
            )
        if entry not in self.written:
            self._append(entry)
            self.written.add(entry)
        return path

    def _append(self, entry: str) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.record, flags, 0o666)
        except OSError as exc:
            raise RunFolderError(f"Cannot record a file in {self.record}: {exc.strerror or exc}. "
                                 "It must be a regular file (not a link).") from None
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise RunFolderError(f"{self.record} is not a regular file; remove it.")
            fh.write(json.dumps(entry) + "\n")

    def remove(self, folder: str) -> list[Path]:
        """Delete the recorded files of ``folder`` (``"worst"``); files no run recorded stay."""
        removed: list[Path] = []
        for entry in sorted(e for e in self.written if e.startswith(folder + "/")):
            path = self.run_dir / entry
            if path.is_dir() and not _is_link(path):
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a link is removed itself, never what it points to
                removed.append(path)
            self.written.discard(entry)
        if removed:
            self._rewrite()
        return removed

    def _rewrite(self) -> None:
        """The record, one line per file still there (atomically: a link is replaced, not followed)."""
        kept = sorted(e for e in self.written if os.path.lexists(self.run_dir / e))
        with atomic_write(self.record, overwrite=True) as tmp:
            tmp.write_text("".join(json.dumps(e) + "\n" for e in kept), encoding="utf-8")
