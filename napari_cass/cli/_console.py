"""What long commands show on the console while they work, shared by ``segment``, ``eval``
and the Ray driver.

On a terminal, a tqdm bar: images done, the stage of the image in progress (from the
engine's progress callback) and an ETA. Anywhere else (a log file, a batch scheduler's
output, a pipe) a bar's carriage returns make an unreadable log, and no output at all
looks like a hang (a CPU takes minutes per photo), so plain lines come instead, at most
one per :data:`PLAIN_INTERVAL_S` seconds. Every name shown goes through
:func:`napari_cass.io.printable`: a file name cannot drive the terminal.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

__all__ = ["PLAIN_INTERVAL_S", "Progress", "terminate_as_interrupt"]

#: Seconds between two plain progress lines (when the console is not a terminal).
PLAIN_INTERVAL_S = 30.0
_STAGE_CHARS = 60


def _printable(text: object, newlines: bool = False) -> str:
    from ..io import printable

    return printable(text, newlines=newlines)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed, or not a real stream
        return False


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Progress of a run over ``total`` items: a bar on a terminal, plain lines elsewhere.

    Parameters
    ----------
    total : int
        Items (images) the run will do.
    desc : str
        What is counted, e.g. ``"Images"`` or ``"eval voc21"``.
    enabled : bool
        False: show nothing (``--no-progress``); :meth:`write` still prints.
    file : text stream, optional
        Default ``sys.stderr`` (looked up when created, so a test's capture sees it).
    interval : float, optional
        Seconds between plain lines; default :data:`PLAIN_INTERVAL_S`.

    Use :meth:`stage` as the engine's ``progress`` callback, :meth:`advance` when an item
    is done, :meth:`write` for a message (it does not break the bar), :meth:`close` at the
    end (or ``with``).
    """

    def __init__(self, total: int, desc: str = "Images", *, enabled: bool = True,
                 file: TextIO | None = None, interval: float | None = None, unit: str = "img"):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.file = file if file is not None else sys.stderr
        self.interval = PLAIN_INTERVAL_S if interval is None else float(interval)
        self.done = 0
        self._fraction = 0.0  # of the item in progress, from its stage callback
        self._item = ""
        self._stage = ""
        self._note = ""
        self._began = time.monotonic()
        self._last_line: float | None = None
        self._bar: Any = None
        self._plain = False
        if enabled and self.total > 0:
            if _is_terminal(self.file):
                from tqdm.auto import tqdm

                self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.file, dynamic_ncols=True)
            else:
                self._plain = True
                self._line()

    def start_item(self, name: object) -> None:
        """The next item begins (``name``: its file name, shown escaped)."""
        self._item, self._stage, self._fraction = _printable(name), "", 0.0
        self._show(force=False)

    def stage(self, done: int, total: int, message: str) -> None:
        """The engine's progress callback: step ``done`` of ``total`` of the current item."""
        self._stage = _printable(message)
        self._fraction = min(max(done / total, 0.0), 1.0) if total > 0 else 0.0
        self._show(force=False)

    def advance(self, note: object = None) -> None:
        """One item done; ``note`` (e.g. a running mIoU) is shown after the count."""
        self.done += 1
        self._fraction, self._stage = 0.0, ""
        if note is not None:
            self._note = _printable(note)
        if self._bar is not None:
            self._bar.update(1)
        self._show(force=self.done >= self.total)

    def write(self, message: str) -> None:
        """Print a message line (escaped, newlines kept) without breaking the bar."""
        text = _printable(message, newlines=True)
        if self._bar is not None:
            self._bar.write(text, file=self.file)
        else:
            print(text, file=self.file, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def eta_seconds(self) -> float | None:
        """Seconds left, from the time per item so far (the current item's stage counted in part)."""
        units = self.done + self._fraction
        if units <= 0:
            return None
        elapsed = time.monotonic() - self._began
        return elapsed / units * max(self.total - units, 0.0)

    def _status(self) -> str:
        parts = [self._item, self._stage] if self._stage else [self._item]
        text = ": ".join(p for p in parts if p)
        if self._note:
            text = f"{text}, {self._note}" if text else self._note
        return text if len(text) <= _STAGE_CHARS else text[:_STAGE_CHARS - 1] + "…"

    def _show(self, force: bool) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(self._status(), refresh=True)
        elif self._plain:
            now = time.monotonic()
            if force or self._last_line is None or now - self._last_line >= self.interval:
                self._line()

    def _line(self) -> None:
        self._last_line = time.monotonic()
        elapsed = self._last_line - self._began
        eta = self.eta_seconds()
        status = self._status() if self.done < self.total else ""
        print(f"napari-cass: {self.desc}: {self.done}/{self.total} {self.unit} done"
              + (f" ({status})" if status else "")
              + f", {_duration(elapsed)} elapsed"
              + (f", about {_duration(eta)} left" if eta is not None and self.done < self.total else ""),
              file=self.file, flush=True)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a batch scheduler's time limit) stops the run like Ctrl-C.

    What is being written is then abandoned cleanly (its temporary file removed, the
    folder's lock file removed) and the exit code is 130. Only in the main thread, where
    Python can take signals; the previous handler comes back afterwards.
    """
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, AttributeError, OSError):  # not the main thread, or no SIGTERM
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
