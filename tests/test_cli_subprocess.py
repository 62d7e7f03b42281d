"""The CLI as a separate process: Ctrl-C, kill, kill -9, and a closed output pipe.

The child runs the real ``napari_cass.cli.main`` with the tiny random models in place of
the real ones (set in the child by the driver below, as ``tests/test_cli.py`` does in
process). To stop it at a known point, the driver makes PIL's ``save`` block on its N-th
call (mask and overlay are one save each), after writing a marker file: the run is then
inside ``atomic_write``, with its temporary file on disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_cass import cli
from napari_cass.cli import _segment as segment_command
from napari_cass.io import read_classes_json, read_label_image

DRIVER = """
import os, sys, time
import PIL.Image
from napari_cass.cli import _segment, main
from napari_cass.engine import Segmenter
from napari_cass.engine.testing import tiny_models

def build(args):
    return Segmenter.from_models(*tiny_models(), method=args.method, preset=args.preset, device="cpu")

_segment.build_segmenter = build
block_at, marker = int(os.environ["BLOCK_AT"]), os.environ["MARKER"]
original_save, calls = PIL.Image.Image.save, [0]

def save(self, fp, *args, **kwargs):
    calls[0] += 1
    if calls[0] == block_at:
        open(marker, "w").close()
        while True:
            time.sleep(0.05)
    return original_save(self, fp, *args, **kwargs)

PIL.Image.Image.save = save
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(cli.__file__).parents[2]), env.get("PYTHONPATH", "")])
    return env


def _images(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (24, 28, 3), dtype=np.uint8)).save(folder / f"img{i}.png")


def _run_until_blocked(tmp_path: Path, block_at: int) -> tuple[subprocess.Popen, Path]:
    marker = tmp_path / "blocked"
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, "segment", str(tmp_path / "in"), "--classes", "cat, dog",
         "--out", str(out)],
        env=_env(BLOCK_AT=str(block_at), MARKER=str(marker)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 180
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the run did not reach the blocking save: {proc.communicate()}")
        time.sleep(0.05)
    return proc, out


@pytest.fixture()
def tiny_in_process(monkeypatch: pytest.MonkeyPatch) -> list:
    from napari_cass.engine import Segmenter
    from napari_cass.engine.testing import tiny_models

    built: list = []

    def build(args):
        built.append(args)
        return Segmenter.from_models(*tiny_models(), method=args.method, preset=args.preset, device="cpu")

    monkeypatch.setattr(segment_command, "build_segmenter", build)
    return built


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["ctrl-c", "kill", "kill-9"])
def test_interrupted_run_is_consistent_and_a_rerun_finishes_it(tmp_path, tiny_in_process, capsys,
                                                               sig) -> None:
    _images(tmp_path / "in", 3)
    # Saves: img0 mask, img0 overlay, img1 mask, img1 overlay, img2 mask <- blocked here.
    proc, out = _run_until_blocked(tmp_path, block_at=5)
    temps = [p.name for p in out.iterdir() if ".tmp" in p.name]
    assert len(temps) == 1 and temps[0].startswith(".img2.")  # the mask being written
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == ["classes.json", "img0.png", "img0_overlay.png", "img1.png", "img1_overlay.png"]
    assert [c["name"] for c in read_classes_json(out / "classes.json")["classes"]] == [
        "background", "cat", "dog"]
    leftovers = [p.name for p in out.iterdir() if ".tmp" in p.name]
    if sig in (signal.SIGINT, signal.SIGTERM):  # SIGTERM stops the run like Ctrl-C
        assert proc.returncode == 130
        assert "interrupted: 2 of 3 image(s) are done" in err and "Traceback" not in err
        assert leftovers == []  # atomic_write removed its own temporary file
    else:
        assert proc.returncode == -signal.SIGKILL
        assert leftovers == temps  # nothing could clean up

    stamps = {name: (out / name).stat().st_mtime_ns for name in visible if name.startswith("img")}
    assert cli.main(["segment", str(tmp_path / "in"), "--classes", "cat, dog", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "resuming: 2 of 3" in captured.err and "Segmented 1 of 1 image(s)" in captured.out
    assert ("removed 1 temporary file" in captured.err) == (sig == signal.SIGKILL)
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps
    assert read_label_image(out / "img2.png").shape == (24, 28)


def test_weights_list_into_a_closed_pipe_says_nothing(tmp_path) -> None:
    """``napari-cass weights list | head``: the reader leaves early; no "Broken pipe" message."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_cass.cli", "weights", "list"],
        env=_env(NAPARI_CASS_CACHE=str(tmp_path / "cache")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # like head after its lines, before the child has printed anything
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert proc.returncode == 141, err
    assert err == ""
