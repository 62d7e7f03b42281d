"""The run lock of an output folder: one writer at a time, nothing left behind, no link followed."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

__all__ = ["LOCK_FILE", "OutputConflictError", "RunLock"]

LOCK_FILE = ".napari-cass.lock"


class OutputConflictError(FileExistsError):
    """The output folder holds files this run may not replace or leave as they are."""


class RunLock:
    """An exclusive lock on an output folder for the length of a run.

    Two runs into one folder would interleave class tables and remove each other's
    temporary files. The lock is an OS file lock on ``<out>/.napari-cass.lock`` (released
    by the OS even when the process is killed); ``release`` removes the file, so a run
    that ends (Ctrl-C and SIGTERM included: they unwind through ``release``) leaves
    nothing beside the masks. ``acquire`` creates the folder.

    The folder may be shared with people who should not write outside it: a planted
    ``.napari-cass.lock`` symlink is refused (opened with ``O_NOFOLLOW``, so no file is
    created where it points), and so is anything there that is not a regular file.
    """

    def __init__(self, out_dir: str | os.PathLike[str]):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_FILE
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None

    def acquire(self) -> RunLock:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(20):  # a finishing run may remove the file between our open and lock
            fd = self._open()
            try:
                _lock_fd(fd)
            except OSError:
                os.close(fd)
                raise OutputConflictError(
                    f"Another napari-cass run is writing into {self.out_dir} (it holds {self.path}); "
                    "wait for it to finish, or segment into another folder."
                ) from None
            opened = os.fstat(fd)
            try:
                now = os.lstat(self.path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino):
                self._fd, self._identity = fd, (opened.st_dev, opened.st_ino)
                return self
            os.close(fd)  # we locked a file the previous holder had removed: take the new one
        raise OutputConflictError(f"{self.path} keeps being replaced; is another program removing it?")

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        refuse = (f"{self.path} is not napari-cass's lock file ({{what}}); a run writes nothing "
                  "through it. Remove it, or segment into another folder.")
        if not hasattr(os, "O_NOFOLLOW") and self.path.is_symlink():  # Windows
            raise OutputConflictError(refuse.format(what="a symbolic link"))
        try:
            fd = os.open(self.path, flags | getattr(os, "O_NONBLOCK", 0), 0o666)
        except OSError as exc:
            if self.path.is_symlink():  # ELOOP: O_NOFOLLOW met a link
                raise OutputConflictError(refuse.format(what="a symbolic link")) from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device planted under the name
            os.close(fd)
            raise OutputConflictError(refuse.format(what="not a regular file"))
        return fd

    def release(self) -> None:
        """Remove the lock file (if it is still ours), then let the lock go."""
        if self._fd is None:
            return
        unlink_first = os.name != "nt"  # Windows cannot remove a file that is still open
        if unlink_first:
            self._remove_file()
        with contextlib.suppress(OSError):
            os.close(self._fd)  # closing releases the lock
        self._fd = None
        if not unlink_first:
            self._remove_file()

    def _remove_file(self) -> None:
        with contextlib.suppress(OSError):
            now = os.lstat(self.path)
            if (now.st_dev, now.st_ino) == self._identity:  # never another run's new lock file
                os.unlink(self.path)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock_fd(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
