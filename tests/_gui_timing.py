"""How long the GUI thread blocks during a run, and how memory grows over re-runs.

Shared by the scale tests and ``benchmarks/bench_gui_scale.py``. A 20 ms
``QTimer`` ticks on the GUI thread for the whole run, from the click on
Segment to the shown result; the longest gap between two ticks is the longest
the GUI was frozen (a user's click or repaint waits that long).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication

TICK_MS = 20


def rss_mb() -> float:
    """Resident set size now, in MB (10^6 bytes)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


@dataclass
class RunTiming:
    seconds: float
    max_gap_s: float
    rss_mb: float
    progress: list[int] = field(default_factory=list)


def timed_run(widget: Any, timeout_s: float = 900.0, cancel_after_s: float | None = None) -> RunTiming:
    """Click Segment and wait for the shown result, ticking a 20 ms timer meanwhile.

    With ``cancel_after_s`` Cancel is clicked that long after the start;
    ``seconds`` then ends when the run has stopped.
    """
    ticks: list[float] = []
    progress: list[int] = []
    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    on_progress = lambda value, _message: progress.append(int(value))  # noqa: E731
    widget.runner.progressed.connect(on_progress)
    timer.start()
    QApplication.processEvents()
    start = time.perf_counter()
    ticks.append(start)
    widget.segment_btn.click()
    cancelled = False
    while widget.is_running and time.perf_counter() - start < timeout_s:
        QApplication.processEvents()
        if cancel_after_s is not None and not cancelled and time.perf_counter() - start > cancel_after_s:
            widget.cancel_btn.click()
            cancelled = True
            start_cancel = time.perf_counter()
        time.sleep(0.002)
    QApplication.processEvents()
    end = time.perf_counter()
    ticks.append(end)
    timer.stop()
    widget.runner.progressed.disconnect(on_progress)
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    gc.collect()
    seconds = end - (start_cancel if cancelled else start)
    return RunTiming(seconds, max(gaps) if gaps else 0.0, rss_mb(), progress)
