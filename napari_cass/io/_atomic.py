"""Atomic, non-clobbering file writes shared by every exporter."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["atomic_write", "check_targets", "safe_filename"]

_RESERVED = {
    "CON", "PRN", "AUX", "NUL",
    *(f"COM{i}" for i in range(1, 10)),
    *(f"LPT{i}" for i in range(1, 10)),
}
_MAX_NAME = 120


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; outputs should get the usual permissions (0666 & ~umask).
_FILE_MODE = 0o666 & ~_umask()


def _exists_message(path: Path) -> str:
    return f"{path} exists; pass overwrite=True / --overwrite to replace it."


def check_targets(paths: Iterable[str | os.PathLike[str]], overwrite: bool = False,
                  max_listed: int = 5) -> None:
    """Raise ``FileExistsError`` listing the first existing targets (unless ``overwrite``).

    Exporters call this before doing any work so that a run never stops half way
    because its last output would clobber an existing file.
    """
    if overwrite:
        return
    existing = [Path(p) for p in paths if Path(p).exists()]
    if not existing:
        return
    if len(existing) == 1:
        raise FileExistsError(_exists_message(existing[0]))
    shown = ", ".join(str(p) for p in existing[:max_listed])
    more = f" (and {len(existing) - max_listed} more)" if len(existing) > max_listed else ""
    raise FileExistsError(
        f"{len(existing)} output files exist already: {shown}{more}; "
        "pass overwrite=True / --overwrite to replace them."
    )


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place when the block succeeds.

    Readers never see a half-written file: the temporary file lives in the same
    folder (so ``os.replace`` is atomic) and keeps the target's suffix (so writers
    that infer the format from the name still work). On error it is removed and the
    target is left untouched. Raises ``FileExistsError`` if the target exists and
    ``overwrite`` is false.
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a folder; give a file name to write to.")
    check_targets([target], overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.stem[:40]}.", suffix=f".tmp{target.suffix}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"Nothing was written for {target}.")
        # Check again: another process may have created the target meanwhile.
        check_targets([target], overwrite)
        mode = (target.stat().st_mode & 0o777) if target.exists() else _FILE_MODE
        with contextlib.suppress(OSError):  # e.g. file systems without permissions
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def safe_filename(name: str, max_length: int = _MAX_NAME) -> str:
    """Turn any text (a class name, an image layer name) into a portable file name.

    Keeps letters, digits, ``-``, ``_`` and ``.``; everything else becomes ``_``.
    No leading dots (hidden files), never empty, never a reserved Windows device
    name, and at most ``max_length`` characters.
    """
    if not isinstance(name, str):
        name = str(name)
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name.strip())
    cleaned = re.sub(r"\.{2,}", "_", cleaned)  # no ".." path fragments
    cleaned = re.sub(r"_+", "_", cleaned)
    cleaned = cleaned.strip("._ ")
    if not cleaned.strip("_"):
        cleaned = "unnamed"
    if cleaned.split(".")[0].upper() in _RESERVED:
        cleaned = f"_{cleaned}"
    if len(cleaned) > max_length:
        cleaned = cleaned[:max_length].rstrip(". ")
    return cleaned
