"""``napari-cass segment --ray`` on a local Ray cluster started here (2 CPUs, tiny models).

One cluster serves the whole module (Ray takes seconds to start on two cores). The workers
build the tiny random-weight models (``tiny_models``) in place of the real ones: the test
replaces the CLI's ``build_segmenter`` as ``tests/test_cli.py`` does, and the replacement
reaches the workers because it is a nested function (Ray pickles it by value). Precision
is pinned to float32 (``NAPARI_CASS_PRECISION``): on a loaded machine even the tiny models
can cross the engine's probe threshold, and a bfloat16 choice in one process would make
masks differ for reasons that are not the cluster's.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image

from napari_cass import cli
from napari_cass.cli import _segment as segment_command
from napari_cass.cluster import FAILED_FILE, plan_workers
from napari_cass.cluster import _driver as cluster_driver

CLASSES = "cat, dog"

DRIVER = """
import os, sys, time
from napari_cass.cli import _segment, main

SLOW = float(os.environ.get("SLOW_SECONDS", "0"))

def build(args):
    from napari_cass.engine import Segmenter
    from napari_cass.engine.testing import tiny_models

    segmenter = Segmenter.from_models(*tiny_models(), method=args.method, preset=args.preset,
                                      device="cpu", threads=args.threads)
    plain = segmenter.segment

    def slow(image, classes, *a, **k):
        time.sleep(SLOW)
        return plain(image, classes, *a, **k)

    segmenter.segment = slow
    return segmenter

_segment.build_segmenter = build
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def ray_address():
    """A 2-CPU local Ray cluster for the module; its address, for drivers in other processes."""
    saved = os.environ.get("NAPARI_CASS_PRECISION")
    os.environ["NAPARI_CASS_PRECISION"] = "fp32"  # inherited by the workers started here
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("NAPARI_CASS_PRECISION", None)
        else:
            os.environ["NAPARI_CASS_PRECISION"] = saved


def _tiny_builder(crash_dir: Path | None = None):
    """A ``build_segmenter`` for tiny models; with ``crash_dir``, an image of 33 rows kills its
    worker process (as a segfault would), noting each death in ``crash_dir/crashes``."""

    def build(args):
        from napari_cass.engine import Segmenter
        from napari_cass.engine.testing import tiny_models

        segmenter = Segmenter.from_models(*tiny_models(), method=args.method, preset=args.preset,
                                          device="cpu", threads=args.threads)
        if crash_dir is not None:
            plain = segmenter.segment

            def crashing(image, classes, *a, **k):
                if image.shape[0] == 33:
                    with open(crash_dir / "crashes", "a") as log:
                        log.write("died\n")
                    os._exit(1)
                return plain(image, classes, *a, **k)

            segmenter.segment = crashing
        return segmenter

    return build


def _images(folder: Path, heights: list[int]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i, h in enumerate(heights):
        Image.fromarray(rng.integers(0, 255, (h, 28 + i, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        names.append(f"img{i}")
    return names


def _done(out: Path, names: list[str]) -> list[str]:
    return [n for n in names if (out / f"{n}.png").is_file() and (out / f"{n}_overlay.png").is_file()]


def test_worker_layout_from_cluster_resources() -> None:
    gpu_nodes = [{"CPU": 16.0, "GPU": 2.0}, {"CPU": 8.0, "GPU": 1.0}, {"CPU": 4.0}]
    layout = plan_workers(gpu_nodes, "auto", None, images=1000)
    assert (layout.workers, layout.gpus_per_worker, layout.cpus_per_worker, layout.device) == (3, 1, 1, "cuda")
    assert plan_workers(gpu_nodes, "auto", None, images=2).workers == 2  # never more workers than images
    cpu = plan_workers(gpu_nodes, "cpu", None, images=1000)  # 16//4 + 8//4 + 4//4 slots
    assert (cpu.workers, cpu.gpus_per_worker, cpu.cpus_per_worker, cpu.device) == (7, 0, 4, "cpu")
    assert plan_workers([{"CPU": 2.0}], "auto", None, images=9).cpus_per_worker == 2
    assert plan_workers([{"CPU": 8.0}, {"CPU": 6.0}], "auto", 3, images=99).workers == 4
    with pytest.raises(ValueError, match="--device cuda asks for GPUs, but the Ray cluster has none"):
        plan_workers([{"CPU": 8.0}], "cuda", None, images=1)
    with pytest.raises(ValueError, match=r"--threads 9 is more than the largest Ray node has \(8 CPUs\)"):
        plan_workers([{"CPU": 8.0}, {"CPU": 4.0}], "cpu", 9, images=1)


def test_table_gate_opens_once_and_refuses_workers_with_other_models() -> None:
    """The gate's logic without Ray: its methods are plain coroutines."""
    import asyncio

    from napari_cass.cluster import TableGate

    first = {"method": "cass", "models": {"clip": "ViT-B-16"}, "napari_cass_version": "0.1.0"}
    other = dict(first, napari_cass_version="0.0.9")

    async def scenario() -> list[str]:
        gate, events = TableGate(), []
        waiting = asyncio.ensure_future(gate.wait_open(first, "node-a"))
        assert await gate.first_description() == first  # what the driver writes classes.json from
        await asyncio.sleep(0)
        assert not waiting.done()  # no mask before the table
        await gate.open()
        await waiting
        await gate.wait_open(dict(first), "node-b")  # the same models: let through
        try:
            await gate.wait_open(other, "node-c")
        except RuntimeError as exc:
            events.append(str(exc))
        events.append(await gate.worker_error())
        assert [await gate.begin("img0"), await gate.begin("img0"), await gate.begin("img1")] == [1, 2, 1]
        return events

    refused, recorded = asyncio.run(scenario())
    assert refused == recorded
    assert refused.startswith("The worker on node node-c built other models than the first worker "
                              "(napari_cass_version: '0.0.9' here, '0.1.0' on the first worker)")


def test_without_ray_installed_the_message_says_how(tmp_path, monkeypatch, capsys) -> None:
    _images(tmp_path / "in", [24])
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where it is not installed
    argv = ["segment", str(tmp_path / "in"), "--classes", CLASSES, "--out", str(tmp_path / "out"), "--ray"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--ray needs Ray Data, which is not installed" in err
    assert 'pip install "napari-cass[cluster]"' in err
    assert not (tmp_path / "out").exists()  # refused before anything was created


def test_same_outputs_as_the_cli_and_a_corrupt_image_listed(ray_address, tmp_path, monkeypatch, capsys) -> None:
    names = _images(tmp_path / "in", [24, 25, 26, 27, 40])
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not an image")
    monkeypatch.setattr(segment_command, "build_segmenter", _tiny_builder())
    common = ["segment", str(tmp_path / "in"), "--classes", CLASSES, "--threads", "1"]

    assert cli.main([*common, "--out", str(tmp_path / "single")]) == 1
    single_err = capsys.readouterr().err
    assert cli.main([*common, "--out", str(tmp_path / "ray"), "--ray"]) == 1
    captured = capsys.readouterr()

    for name in names:  # every mask and overlay byte for byte
        for suffix in (".png", "_overlay.png"):
            assert (tmp_path / "ray" / f"{name}{suffix}").read_bytes() == \
                (tmp_path / "single" / f"{name}{suffix}").read_bytes(), f"{name}{suffix}"
    assert json.loads((tmp_path / "ray" / "classes.json").read_text("utf-8")) == \
        json.loads((tmp_path / "single" / "classes.json").read_text("utf-8"))
    assert not (tmp_path / "ray" / "broken.png").exists()
    report = json.loads((tmp_path / "ray" / FAILED_FILE).read_text("utf-8"))
    assert [(f["name"], Path(f["source"]).name, f["attempts"]) for f in report["failed"]] == [("broken", "broken.png", 1)]
    assert not Path(report["failed"][0]["source"]).is_absolute()  # relative to the output folder, as in classes.json
    reason = report["failed"][0]["error"]
    assert str(tmp_path) not in json.dumps(report)  # no absolute path in a shared folder
    # The CLI's own message, with the source's path relative to the output folder, like "source".
    assert f"skipped {tmp_path / 'in' / 'broken.png'}: {reason.replace('../in/', str(tmp_path / 'in') + '/')}" in single_err
    assert "not an image file" in reason
    assert f"Segmented 5 of 6 image(s) into {tmp_path / 'ray'}." in captured.out
    assert f"1 image(s) failed (listed in {tmp_path / 'ray' / FAILED_FILE})" in captured.err
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(
        ["classes.json", FAILED_FILE] + [f"{n}{s}" for n in names for s in (".png", "_overlay.png")])  # no lock left


def _driver(tmp_path: Path, address: str, slow: float) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", SLOW_SECONDS=str(slow))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(cli.__file__).parents[2]), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, "segment", str(tmp_path / "in"), "--classes", CLASSES,
         "--out", str(tmp_path / "out"), "--threads", "1", "--ray", address],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_resume_after_the_driver_is_killed(ray_address, tmp_path, monkeypatch, capsys) -> None:
    names = _images(tmp_path / "in", [24] * 8)
    out = tmp_path / "out"
    first = _driver(tmp_path, ray_address, slow=1.0)
    deadline = time.monotonic() + 120
    while len(_done(out, names)) < 3:
        if first.poll() is not None or time.monotonic() > deadline:
            first.kill()
            raise AssertionError(f"the first run did not get to 3 images: {first.communicate()}")
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    finished = {n: [(out / f"{n}{s}").stat() for s in (".png", "_overlay.png")] for n in _done(out, names)}
    assert 3 <= len(finished) < len(names)

    # The same command again (here in this process, which is connected to the cluster already).
    monkeypatch.setattr(segment_command, "build_segmenter", _tiny_builder())
    code = cli.main(["segment", str(tmp_path / "in"), "--classes", CLASSES, "--out", str(out),
                     "--threads", "1", "--ray", ray_address])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert _done(out, names) == names
    resumed = int(stderr.split("resuming: ")[1].split(" of 8")[0])
    assert resumed >= len(finished)
    assert f"Ray: {8 - resumed} image(s) on" in stderr  # only the unfinished ones went to the cluster
    for n, stats in finished.items():  # finished images were not redone
        now = [(out / f"{n}{s}").stat() for s in (".png", "_overlay.png")]
        assert [(s.st_ino, s.st_mtime_ns) for s in now] == [(s.st_ino, s.st_mtime_ns) for s in stats], n
    assert f"Segmented {8 - resumed} of {8 - resumed} image(s)" in stdout
    assert not (out / FAILED_FILE).exists()
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_dead_worker_retried_and_an_image_that_always_kills_it_listed(ray_address, tmp_path, monkeypatch,
                                                                      capsys) -> None:
    names = _images(tmp_path / "in", [24, 25, 33, 26])
    monkeypatch.setattr(segment_command, "build_segmenter", _tiny_builder(crash_dir=tmp_path))
    monkeypatch.setattr(cluster_driver, "WORKER_RETRIES", 1)  # each retry restarts a worker: seconds here
    code = cli.main(["segment", str(tmp_path / "in"), "--classes", CLASSES, "--threads", "1",
                     "--out", str(tmp_path / "out"), "--ray"])
    err = capsys.readouterr().err
    assert code == 1, err
    # Ray restarted the worker and re-ran img2 once (WORKER_RETRIES); then it was given up; the others done.
    assert (tmp_path / "crashes").read_text().count("died") == 2
    assert _done(tmp_path / "out", names) == ["img0", "img1", "img3"]
    failed = json.loads((tmp_path / "out" / FAILED_FILE).read_text("utf-8"))["failed"]
    assert [(f["name"], f["attempts"]) for f in failed] == [("img2", 2)]
    assert failed[0]["error"].startswith("its worker process died on it 2 time(s)")
    assert f"{tmp_path / 'in' / 'img2.png'}: its worker process died on it 2 time(s)" in err
