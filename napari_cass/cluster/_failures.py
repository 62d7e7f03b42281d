"""The end of a Ray run: the count, and ``<out>/failed.json`` listing every image that failed.

The output folder is often shared (that is why a Ray run writes into it): the report holds
no absolute path of anyone's disk. Sources are recorded relative to the output folder, as
``classes.json`` records them, and so are the paths inside the error messages (a reader's
``Cannot read /home/u/photos/a.png`` becomes ``Cannot read ../photos/a.png``). The console,
seen only by whoever ran the command, names the full paths, escaped.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._worker import SEGMENT_ATTEMPTS

__all__ = ["FAILED_FILE", "WORKER_RETRIES", "relative_paths", "report_failures"]

#: The report of images that failed, written into the output folder (removed by a clean run).
FAILED_FILE = "failed.json"
#: How often an image whose worker process died (a segfault, out of memory) is tried again.
#: Ray restarts dead workers and re-runs their images for ever by default; the workers count
#: each image's starts at the run's gate and give up on it after this many retries.
WORKER_RETRIES = 2

# An absolute path inside a message: POSIX ("/a/b"; not "and/or", not a URL's "//host") or
# Windows ("C:\\a", "\\\\server\\share"). Paths with spaces are caught whole only when known.
_ABSOLUTE = re.compile(r"""(?<![\w./:~-])(?:/(?!/)|[A-Za-z]:[\\/]|\\\\)[^\s'"`,;()\[\]{}<>]*""")


def relative_paths(text: str, out_dir: str | os.PathLike[str], known: Iterable[str | os.PathLike[str]] = ()) -> str:
    """``text`` with every absolute path written relative to ``out_dir``.

    Parameters
    ----------
    text : str
        A message, e.g. a worker's error.
    out_dir : path-like
        The folder the paths become relative to.
    known : iterable of path-like
        Paths the message may hold (the image's source, its mask): replaced first, whole,
        even where they hold spaces; then anything else that looks like an absolute path.
    """
    from ..io._plan import record_source

    out = Path(out_dir).expanduser()
    spellings: dict[str, str] = {}
    for path in [*known, out]:
        for spelling in {os.path.abspath(path), str(Path(path).expanduser().resolve())}:
            spellings.setdefault(spelling, record_source(spelling, out))
    for spelling in sorted(spellings, key=len, reverse=True):  # longest first: a file before its folder
        text = text.replace(spelling, spellings[spelling])

    def relative(match: re.Match[str]) -> str:
        path = match.group()
        try:
            recorded = record_source(path, out)
        except (OSError, ValueError):
            return path
        if not os.path.isabs(path) or os.path.isabs(recorded):  # another system's path, another drive
            return re.split(r"[\\/]", path.rstrip("/\\"))[-1] or path
        return recorded

    return _ABSOLUTE.sub(relative, text)


def report_failures(plan: Any, decision: Any, todo: Sequence[Any], seen: set[str],
                    failed: Mapping[str, tuple[str, int]], missing: str) -> int:
    """Print the count; write (or, with no failure, remove) ``failed.json``; returns the exit code.

    Parameters
    ----------
    plan, decision, todo
        The run's output plan, resume decision and the images it set out to do.
    seen : set of str
        Names of the images a worker answered for.
    failed : mapping
        ``{name: (error, attempts)}`` of the images that failed.
    missing : str
        The error of an image no worker answered for (why the pipeline stopped).
    """
    from ..io import atomic_write, printable

    failures: list[dict[str, Any]] = []
    written = 0
    for item in todo:
        if item.name in seen and item.name not in failed:
            written += 1
            continue
        reason, attempts = failed.get(item.name, (missing, 0))
        known = (item.source, item.mask, item.overlay)
        failures.append({"name": item.name, "source": plan.recorded(item.source),
                         "error": relative_paths(reason, plan.out_dir, known),
                         "attempts": attempts, "_path": str(item.source), "_error": reason})
    print(f"Segmented {written} of {len(todo)} image(s) into {printable(plan.out_dir)}"
          + (f"; {len(decision.done)} more were already done." if decision.done else "."))
    report = Path(plan.out_dir) / FAILED_FILE
    if not failures:
        report.unlink(missing_ok=True)  # an earlier run's list: those images are done now
        return 0
    doc = {"format": "napari-cass failed images 1", "segment_attempts": SEGMENT_ATTEMPTS,
           "worker_retries": WORKER_RETRIES,
           "failed": [{k: v for k, v in f.items() if not k.startswith("_")} for f in failures]}
    with atomic_write(report, overwrite=True) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"napari-cass: {len(failures)} image(s) failed (listed in {printable(report)}):", file=sys.stderr)
    for failure in failures:
        print(f"  {printable(failure['_path'])}: {printable(failure['_error'], newlines=True)}", file=sys.stderr)
    return 1
