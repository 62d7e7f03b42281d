"""Shared folders that fight back: links planted in eval and CLI output folders, a planted lock,
file names that would drive the terminal, and ``failed.json`` without absolute paths.

Every hostile input is built here, in ``tmp_path``; each test checks both the refusal (its
message) and that nothing outside the chosen folder was written or deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from napari_cass import cli
from napari_cass.evaluation import _cli as eval_cli
from napari_cass.io import OutputConflictError, RunLock, printable

from test_eval_cli import FakeSegmenter

CLEAR_SCREEN = "\x1b[2J"
posix_only = pytest.mark.skipif(os.name == "nt", reason="symbolic links need privileges on Windows")


def make_voc(base: Path, n: int) -> None:
    """A tiny PASCAL VOC 2012 layout (real JPEG images, PNG masks)."""
    voc = base / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = [f"2007_{k:06d}" for k in range(n)]
    for image_id in ids:
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        Image.fromarray(rng.integers(0, 21, (24, 32)).astype(np.uint8)).save(voc / "SegmentationClass" / f"{image_id}.png")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")


def _images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / name)


def _victim(tmp_path: Path) -> dict[str, bytes]:
    """Someone else's folder with files a glob of ours would match; returns name -> content."""
    victim = tmp_path / "victim"
    victim.mkdir()
    files = {"001_thesis.png": b"not eval's", "2007_000001.png": b"a photo", "notes.txt": b"keep"}
    for name, data in files.items():
        (victim / name).write_bytes(data)
    return files


def _victim_intact(tmp_path: Path, files: dict[str, bytes]) -> None:
    assert sorted(p.name for p in (tmp_path / "victim").iterdir()) == sorted(files)
    for name, data in files.items():
        assert (tmp_path / "victim" / name).read_bytes() == data


# ---------------------------------------------------------------------------------------- eval


@pytest.fixture()
def fake_eval(monkeypatch: pytest.MonkeyPatch) -> FakeSegmenter:
    seg = FakeSegmenter()
    monkeypatch.setattr(eval_cli, "_build_segmenter", lambda args: seg)
    return seg


def _eval(tmp_path: Path, *extra: str) -> int:
    return cli.main(["eval", "--dataset", "voc21", "--root", str(tmp_path / "data"),
                     "--out", str(tmp_path / "out"), "--no-progress", "--worst", "2", *extra])


def _run_dir(tmp_path: Path) -> Path:
    (run_dir,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    return run_dir


@posix_only
@pytest.mark.parametrize("folder", ["worst", "predictions"])
def test_eval_refuses_a_linked_subfolder_and_touches_nothing_there(tmp_path, fake_eval, capsys, folder) -> None:
    make_voc(tmp_path / "data", n=3)
    assert _eval(tmp_path) == 0
    run_dir = _run_dir(tmp_path)
    files = _victim(tmp_path)
    real = run_dir / folder
    for old in real.iterdir():
        old.unlink()
    real.rmdir()
    real.symlink_to(tmp_path / "victim", target_is_directory=True)
    capsys.readouterr()

    assert _eval(tmp_path, "--no-resume") == 2
    err = capsys.readouterr().err
    assert f"{real} is a symbolic link" in err and "eval would write and delete files where it points" in err
    _victim_intact(tmp_path, files)
    assert not (run_dir / ".napari-cass.lock").exists()  # refused before the lock was taken


@posix_only
def test_eval_refuses_a_linked_run_folder(tmp_path, fake_eval, capsys) -> None:
    make_voc(tmp_path / "data", n=2)
    assert _eval(tmp_path) == 0
    run_dir = _run_dir(tmp_path)
    files = _victim(tmp_path)
    run_dir.rename(tmp_path / "moved")
    run_dir.symlink_to(tmp_path / "victim", target_is_directory=True)
    capsys.readouterr()
    assert _eval(tmp_path) == 2
    assert f"The run folder {run_dir} is a symbolic link" in capsys.readouterr().err
    _victim_intact(tmp_path, files)


def test_eval_replaces_and_deletes_only_what_a_run_recorded(tmp_path, fake_eval, capsys) -> None:
    make_voc(tmp_path / "data", n=3)
    assert _eval(tmp_path, "--limit", "1") == 0
    run_dir = _run_dir(tmp_path)
    record = [json.loads(line) for line in (run_dir / "written.jsonl").read_text().splitlines()]
    assert record == ["predictions/2007_000000.png", "worst/001_2007_000000.png"]
    # Somebody else's files: one where the next image's prediction goes, one the old glob matched.
    planted = run_dir / "predictions" / "2007_000001.png"
    planted.write_bytes(b"someone's file")
    theirs = run_dir / "worst" / "007_theirs.png"
    theirs.write_bytes(b"theirs")

    assert _eval(tmp_path) == 2
    err = capsys.readouterr().err
    assert f"{planted} exists, but no eval run wrote it" in err and "Move it away" in err
    assert planted.read_bytes() == b"someone's file"
    planted.unlink()
    assert _eval(tmp_path) == 0  # all three now; the old drawing is replaced, theirs stays
    assert theirs.read_bytes() == b"theirs"
    drawn = sorted(p.name for p in (run_dir / "worst").iterdir())
    assert "007_theirs.png" in drawn and len(drawn) == 3
    assert not (run_dir / ".napari-cass.lock").exists()


@posix_only
def test_eval_cache_append_never_follows_a_link(tmp_path, fake_eval, capsys) -> None:
    make_voc(tmp_path / "data", n=2)
    assert _eval(tmp_path, "--limit", "1") == 0
    run_dir = _run_dir(tmp_path)
    files = _victim(tmp_path)
    cache = run_dir / "per_image.jsonl"
    cache.unlink()
    cache.symlink_to(tmp_path / "victim" / "notes.txt")
    capsys.readouterr()
    assert _eval(tmp_path) == 2
    assert f"{cache} is not a regular file" in capsys.readouterr().err
    _victim_intact(tmp_path, files)


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_eval_stopped_by_sigterm_keeps_its_cache_and_removes_its_lock(tmp_path, monkeypatch, capsys) -> None:
    make_voc(tmp_path / "data", n=3)
    handler_before = signal.getsignal(signal.SIGTERM)
    seg = FakeSegmenter()
    segment = seg.segment

    def segment_then_terminated(*args, **kwargs):
        result = segment(*args, **kwargs)
        if seg.calls == 2:  # a scheduler's time limit, during the second image
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    seg.segment = segment_then_terminated
    monkeypatch.setattr(eval_cli, "_build_segmenter", lambda args: seg)
    assert _eval(tmp_path) == 130
    assert "interrupted: finished images are cached" in capsys.readouterr().err
    run_dir = _run_dir(tmp_path)
    assert not (run_dir / ".napari-cass.lock").exists()
    assert len((run_dir / "per_image.jsonl").read_text().splitlines()) == 1
    assert signal.getsignal(signal.SIGTERM) == handler_before  # eval's own handler is gone again


# ------------------------------------------------------------------------------ CLI and lock


@posix_only
@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_a_planted_lock_link_is_refused_and_nothing_is_created_where_it_points(tmp_path, cli_builds, capsys,
                                                                               dangling) -> None:
    _images(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    out.mkdir()
    files = _victim(tmp_path)
    target = tmp_path / "victim" / ("created-by-lock" if dangling else "notes.txt")
    (out / ".napari-cass.lock").symlink_to(target)
    assert cli.main(["segment", str(tmp_path / "in"), "--classes", "cat", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is not napari-cass's lock file (a symbolic link)" in err
    _victim_intact(tmp_path, files)
    assert cli_builds == []  # refused before any model loaded
    assert (out / ".napari-cass.lock").is_symlink()  # left for the user to look at


def test_lock_file_is_removed_when_a_run_ends_or_fails(tmp_path, cli_builds, capsys) -> None:
    _images(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    assert cli.main(["segment", str(tmp_path / "in"), "--classes", "cat", "--out", str(out)]) == 0
    assert not (out / ".napari-cass.lock").exists()
    # A refused run (other classes) takes and gives back the lock too.
    assert cli.main(["segment", str(tmp_path / "in"), "--classes", "dog", "--out", str(out)]) == 2
    assert "holds results made differently" in capsys.readouterr().err
    assert not (out / ".napari-cass.lock").exists()


def test_a_second_lock_waits_its_turn_and_a_released_lock_is_taken_again(tmp_path) -> None:
    with RunLock(tmp_path / "out") as first:
        with pytest.raises(OutputConflictError, match="Another napari-cass run is writing"):
            RunLock(tmp_path / "out").acquire()
        assert first.path.is_file()
    assert not first.path.exists()
    again = RunLock(tmp_path / "out").acquire()  # a stale file of a killed run is reused
    again.release()
    (tmp_path / "out" / ".napari-cass.lock").write_text("")  # as kill -9 leaves it
    with RunLock(tmp_path / "out") as third:
        assert third.path.is_file()
    assert not third.path.exists()


@posix_only
def test_an_output_name_linked_to_an_input_is_refused(tmp_path, cli_builds, capsys) -> None:
    _images(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_overlay.png").symlink_to(tmp_path / "in" / "a.png")
    before = (tmp_path / "in" / "a.png").read_bytes()
    assert cli.main(["segment", str(tmp_path / "in"), "--classes", "cat", "--out", str(out),
                     "--overwrite"]) == 2
    assert "would replace the input image" in capsys.readouterr().err
    assert (tmp_path / "in" / "a.png").read_bytes() == before


DRIVER = """
import os, sys, time
from napari_cass.cli import _segment, main

def build(args):  # stands for minutes of model loading: the signal comes meanwhile
    open(os.environ["MARKER"], "w").close()
    while True:
        time.sleep(0.05)

_segment.build_segmenter = build
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_ctrl_c_and_sigterm_remove_the_lock_file(tmp_path) -> None:
    """Two runs at once (their start-up, importing torch, dominates): one gets SIGINT, one SIGTERM."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(cli.__file__).parents[2]), env.get("PYTHONPATH", "")])
    runs = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        base = tmp_path / sig.name
        _images(base / "in", ["a.png"])
        proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, "segment", str(base / "in"), "--classes", "cat", "--out", str(base / "out")],
            env=dict(env, MARKER=str(base / "loading")), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        runs[sig] = (proc, base)
    deadline = time.monotonic() + 180
    for sig, (proc, base) in runs.items():
        while not (base / "loading").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                for other, _ in runs.values():
                    other.kill()
                raise AssertionError(f"the run did not reach model loading: {proc.communicate()}")
            time.sleep(0.05)
        assert (base / "out" / ".napari-cass.lock").is_file()  # held while the models load
        proc.send_signal(sig)
    for sig, (proc, base) in runs.items():
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, (sig, err)
        assert "napari-cass: interrupted." in err and "Traceback" not in err
        assert not (base / "out" / ".napari-cass.lock").exists(), sig
        assert not (base / "out").exists()  # the run made it and wrote nothing: it goes too (lock file first)


# ------------------------------------------------------------------ names that drive a terminal


def test_printable_escapes_what_a_terminal_acts_on() -> None:
    assert printable(f"a{CLEAR_SCREEN}b\rc\a\u202ed") == "a\\x1b[2Jb\\rc\\x07\\u202ed"
    assert printable("line\nnext\ttab", newlines=True) == "line\nnext\ttab"
    assert printable("line\nnext") == "line\\nnext"
    assert printable("café 猫 C:\\x") == "café 猫 C:\\x"  # letters and backslashes unchanged
    assert printable(os.fsdecode(b"bad\xff.png")) == "bad\\xff.png"  # an undecodable byte
    assert printable(printable(CLEAR_SCREEN)) == printable(CLEAR_SCREEN)


@pytest.mark.skipif(os.name == "nt", reason="Windows forbids control characters in file names")
def test_a_file_name_with_an_escape_sequence_is_printed_escaped(tmp_path, cli_builds, capsys) -> None:
    evil = f"evil{CLEAR_SCREEN}.png"
    _images(tmp_path / "in", ["good.png"])
    (tmp_path / "in" / evil).write_bytes(b"\x89PNG\r\n\x1a\n not an image")  # skipped: named in a message
    assert cli.main(["segment", str(tmp_path / "in"), "--classes", "cat", "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "\x1b" not in captured.err + captured.out
    assert "evil\\x1b[2J.png" in captured.err
    # An error message (through the CLI's error handler) is escaped too.
    assert cli.main(["segment", str(tmp_path / f"missing{CLEAR_SCREEN}"), "--classes", "cat",
                     "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "missing\\x1b[2J does not exist" in err


# ------------------------------------------------------------------------------------ failed.json


def test_failed_json_holds_no_absolute_path_and_the_console_is_escaped(tmp_path, capsys) -> None:
    from napari_cass.cluster._failures import report_failures
    from napari_cass.io import plan_outputs

    _images(tmp_path / "my photos", ["ok.png", f"bad{CLEAR_SCREEN}.png"])
    plan = plan_outputs([tmp_path / "my photos"], tmp_path / "out")
    bad = next(item for item in plan.images if item.name.startswith("bad"))
    errors = {bad.name: (f"Cannot read {bad.source}: truncated; weights in {Path.home() / '.cache' / 'x'}", 1)}
    seen = {item.name for item in plan.images}
    assert report_failures(plan, SimpleNamespace(done=set()), plan.images, seen, errors, "") == 1
    text = (tmp_path / "out" / "failed.json").read_text("utf-8")
    doc = json.loads(text)
    (entry,) = doc["failed"]
    assert entry["source"] == f"../my photos/bad{CLEAR_SCREEN}.png"
    assert entry["error"].startswith(f"Cannot read ../my photos/bad{CLEAR_SCREEN}.png: truncated; weights in ")
    assert str(tmp_path) not in text
    assert not any(os.path.isabs(word) for word in entry["error"].split())
    captured = capsys.readouterr()
    assert "\x1b" not in captured.err + captured.out and f"bad\\x1b[2J.png" in captured.err
