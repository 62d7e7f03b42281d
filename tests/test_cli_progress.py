"""What ``segment`` (and ``eval``) show while they work: a bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import os
import re
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from napari_cass import cli
from napari_cass.cli import _console
from napari_cass.cli._console import Progress


def _images(folder, n: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"img{i}.png")


def test_segment_prints_plain_progress_lines_off_a_terminal(tmp_path, cli_builds, capsys, monkeypatch) -> None:
    _images(tmp_path / "in", 2)
    monkeypatch.setattr(_console, "PLAIN_INTERVAL_S", 0.0)  # a line at every event, not every 30 s
    assert cli.main(["segment", str(tmp_path / "in"), "--classes", "cat, dog", "--out", str(tmp_path / "out")]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("napari-cass: Images:")]
    assert lines[0] == "napari-cass: Images: 0/2 img done, 0:00 elapsed"
    assert lines[-1].startswith("napari-cass: Images: 2/2 img done, ") and "left" not in lines[-1]
    # The stage of the image in progress (the engine's callback), and an estimate of what is left.
    stages = [ln for ln in lines if "(img0.png: " in ln]
    assert any("text embeddings" in ln for ln in stages), lines
    assert any(re.search(r"0/2 img done \(img0\.png: .*\), \d+:\d\d elapsed, about \d+:\d\d left$", ln)
               for ln in stages), lines
    assert not any("\r" in ln for ln in lines)  # no bar redraws in a log file


def test_plain_lines_come_at_most_once_per_interval(tmp_path, cli_builds, capsys) -> None:
    _images(tmp_path / "in", 1)
    assert cli.main(["segment", str(tmp_path / "in"), "--classes", "cat", "--out", str(tmp_path / "out")]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("napari-cass: Images:")]
    # The run takes seconds, far under PLAIN_INTERVAL_S: the first line and the last, no flood.
    assert len(lines) == 2 and lines[0].startswith("napari-cass: Images: 0/1") and "1/1" in lines[1]


def test_eta_counts_the_stage_of_the_image_in_progress(monkeypatch) -> None:
    now = [0.0]
    monkeypatch.setattr(_console.time, "monotonic", lambda: now[0])
    progress = Progress(4, "Images", enabled=False)  # began at 0 s
    assert progress.eta_seconds() is None  # nothing to go by yet
    now[0] = 10.0
    progress.stage(1, 2, "crop 1/2")  # half of the first image in 10 s: 3.5 images left
    assert progress.eta_seconds() == pytest.approx(10.0 / 0.5 * 3.5)
    now[0] = 20.0
    progress.advance()  # one image in 20 s: 3 left
    assert progress.eta_seconds() == pytest.approx(20.0 * 3)


def test_no_progress_shows_nothing_but_messages(capsys) -> None:
    with Progress(3, "eval voc21", enabled=False) as progress:
        progress.start_item("a.png")
        progress.stage(1, 2, "crop")
        progress.advance()
        progress.write("napari-cass: skipped b\x1b[2J.png")
    assert capsys.readouterr().err == "napari-cass: skipped b\\x1b[2J.png\n"


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_on_a_terminal_a_bar_shows_count_stage_and_eta(tmp_path, cli_builds, monkeypatch) -> None:
    _images(tmp_path / "in", 2)
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a new pty has 0 columns
    terminal = os.fdopen(slave, "w", encoding="utf-8")
    chunks: list[bytes] = []

    def drain() -> None:  # read while the run writes: a full pty buffer would block it
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the slave side closed
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    monkeypatch.setattr(sys, "stderr", terminal)
    try:
        code = cli.main(["segment", str(tmp_path / "in"), "--classes", "cat", "--out", str(tmp_path / "out")])
        terminal.flush()
    finally:
        terminal.close()
        reader.join(timeout=10)
        os.close(master)
    assert code == 0
    shown = b"".join(chunks).decode("utf-8", "replace")
    assert "Images: 100%" in shown and "2/2" in shown  # the count
    assert re.search(r"img1\.png: (text embeddings|crop|whole-image|done)", shown)  # the stage
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", shown)  # elapsed<remaining: tqdm's ETA
    assert "napari-cass: Images:" not in shown  # no plain lines on a terminal
