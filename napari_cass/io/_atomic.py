"""Atomic, non-clobbering file writes shared by every exporter."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["atomic_write", "check_targets"]



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
