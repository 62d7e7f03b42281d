"""napari-cass serve + RemoteSegmenter: results, caching, load, failures (loopback only).

Tiny random-weight models: the labels are meaningless, the tests check that the
server returns exactly what the local engine computes, and how it behaves under load.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from napari_cass.engine import SegmentationCancelled
from napari_cass.server import BackgroundServer, RemoteSegmenter, RemoteSegmenterError, create_app
from test_server_support import Wrapped, images, tiny_segmenter, wait_for


@pytest.fixture(scope="module")
def local():
    """The local reference: its own tiny models (same seed as the server's)."""
    return tiny_segmenter()


@pytest.fixture
def served(tiny_model_set):
    """A server on a free loopback port around a fresh tiny Segmenter; yields (server, segmenter)."""
    seg = tiny_segmenter(tiny_model_set)
    with BackgroundServer(create_app(seg)) as server:
        yield server, seg


def assert_same(remote, ref):
    assert remote.labels.dtype == np.int32 and remote.labels.shape == ref.labels.shape
    np.testing.assert_array_equal(remote.labels, ref.labels)
    assert remote.classes == ref.classes and remote.has_background == ref.has_background
    # confidence travels as round(p * 255): within half a step of the local value (+ float32 rounding).
    assert np.abs(remote.confidence - ref.confidence).max() <= 0.5 / 255 + 1e-6


def test_results_equal_local_bit_for_bit(tiny_model_set, local):
    rng = np.random.default_rng(1)
    cases = [
        (images(1, 1)[0], "cat | kitten, dog, grass", None),
        (rng.integers(0, 4096, (37, 45), dtype=np.uint16), "cell, nucleus", "debris"),
        (rng.random((30, 33, 4), dtype=np.float32), ["road", ["car", "truck"]], ["sky", "wall"]),
    ]
    with BackgroundServer(create_app(tiny_segmenter(tiny_model_set))) as server, \
            RemoteSegmenter(server.url) as remote:
        for image, classes, background in cases:
            ref = local.segment(image, classes, background=background)
            got = remote.segment(image, classes, background=background)
            assert_same(got, ref)
            assert got.from_cache is False and set(ref.timings) <= set(got.timings)
            again = remote.segment(image, classes, background=background)
            assert again.from_cache is True
            np.testing.assert_array_equal(again.labels, ref.labels)


def test_sliding_window_preset_equal_local(tiny_model_set):
    """The default (sliding-window) preset too: 6 crops of 224 on a 336 x 448 resize."""
    image = images(1, 2, (48, 64, 3))[0]
    ref = tiny_segmenter(small=False).segment(image, "a, b, c")
    with BackgroundServer(create_app(tiny_segmenter(tiny_model_set, small=False))) as server, \
            RemoteSegmenter(server.url) as remote:
        assert_same(remote.segment(image, "a, b, c"), ref)


def test_prompt_only_rerun_sends_no_pixels(tiny_model_set):
    seen: list[tuple[str, str, int]] = []
    app = create_app(tiny_segmenter(tiny_model_set))

    async def counting(scope, receive, send):  # what reaches the server, counted there
        if scope["type"] != "http":
            return await app(scope, receive, send)
        size = 0

        async def counted():
            nonlocal size
            message = await receive()
            size += len(message.get("body", b""))
            return message

        await app(scope, counted, send)
        seen.append((scope["method"], scope["path"], size))

    image = images(1, 3, (64, 80, 3))[0]
    with BackgroundServer(counting) as server, RemoteSegmenter(server.url) as remote:
        first = remote.segment(image, "cat, dog")
        n_first = len(seen)
        second = remote.segment(image, "cat, dog, bird")
        third = remote.segment(image, "tree")
    puts = [s for s in seen if s[0] == "PUT"]
    assert len(puts) == 1 and puts[0][2] > 1000  # the pixels went up once
    later = seen[n_first:]
    assert [m for m, _, _ in later] == ["POST", "POST"]
    assert all(size < 1000 for _, _, size in later)  # JSON only: key and classes
    assert not first.from_cache and second.from_cache and third.from_cache
    assert second.class_names == ["cat", "dog", "bird"] and third.class_names == ["tree"]


def test_concurrent_clients_each_get_their_own_result(tiny_model_set, local):
    pics = images(4, 4)
    prompts = ["cat, dog", "road, car, sky", "a | b, c", "person", "tree, grass, water, rock"]
    refs = {(i, j): local.segment(pics[i], prompts[j]) for i in range(4) for j in range(5)}
    seg = Wrapped(tiny_segmenter(tiny_model_set))
    with BackgroundServer(create_app(seg, max_queue=32)) as server:
        def client(c: int) -> list[tuple[tuple[int, int], object]]:
            with RemoteSegmenter(server.url, timeout=120) as remote:
                out = []
                for r in range(10):
                    key = (c % 4, (c + r) % 5)
                    out.append((key, remote.segment(pics[key[0]], prompts[key[1]])))
                return out

        with ThreadPoolExecutor(16) as pool:
            answers = [a for fut in [pool.submit(client, c) for c in range(16)] for a in fut.result(timeout=600)]
    assert len(answers) == 160 and len(seg.calls) == 160
    assert seg.max_active == 1  # one engine, one job at a time
    for key, result in answers:
        assert_same(result, refs[key])


def test_server_restart_gives_clear_error_then_recovers(tiny_model_set, local):
    image = images(1, 5)[0]
    ref = local.segment(image, "cat, dog")
    server = BackgroundServer(create_app(tiny_segmenter(tiny_model_set))).start()
    port = server.port
    remote = RemoteSegmenter(server.url, connect_timeout=2)
    assert_same(remote.segment(image, "cat, dog"), ref)
    server.stop()
    start = time.monotonic()
    with pytest.raises(RemoteSegmenterError, match="Cannot reach the napari-cass server") as info:
        remote.segment(image, "cat, dog")
    assert info.value.code == "unreachable" and time.monotonic() - start < 10
    assert remote.test_connection().startswith("Connection failed: Cannot reach")
    server = BackgroundServer(create_app(tiny_segmenter(tiny_model_set)), port=port).start()
    try:
        assert_same(remote.segment(image, "cat, dog"), ref)  # new server: pixels sent again
        assert remote.stats["uploads"] == 2
        assert remote.test_connection().startswith("Connected: napari-cass")
    finally:
        remote.close()
        server.stop()


def test_queue_full_answers_429_with_retry_after(tiny_model_set):
    gate = threading.Event()
    seg = Wrapped(tiny_segmenter(tiny_model_set), gate=gate)
    image = images(1, 6)[0]
    with BackgroundServer(create_app(seg, max_queue=1)) as server:
        remote = RemoteSegmenter(server.url, busy_wait=0)
        # Upload once so the POSTs below carry only JSON.
        key = _upload(remote, image)
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(_post, server.url, key, "a, b", "job-running")
            wait_for(seg.started.is_set, what="first job to start")
            queued = pool.submit(_post, server.url, key, "c, d", "job-queued")
            wait_for(lambda: httpx.get(server.url + "/health").json()["queue"]["waiting"] == 1, what="queue")
            refused = _post(server.url, key, "e", "job-refused")
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"]["code"] == "busy"
            with pytest.raises(RemoteSegmenterError, match="busy") as info:
                remote.segment(image, "e")
            assert info.value.status == 429
            gate.set()
            assert running.result(60).status_code == 200 and queued.result(60).status_code == 200
            assert [c["name"] for c in queued.result().json()["classes"]] == ["c", "d"]
            assert seg.calls == [["a", "b"], ["c", "d"]]  # in arrival order; refused ones never ran
        remote.close()


def test_client_that_disconnects_cancels_its_job(tiny_model_set):
    seg = Wrapped(tiny_segmenter(tiny_model_set), slow=20.0)
    image = images(1, 7)[0]
    with BackgroundServer(create_app(seg)) as server:
        with RemoteSegmenter(server.url) as remote:
            key = _upload(remote, image)
        with pytest.raises(httpx.ReadTimeout):
            _post(server.url, key, "a, b", "job-impatient", timeout=1.0)
        wait_for(seg.saw_cancel.is_set, timeout=10, what="the engine to see the cancel")
        # The server keeps serving after the cancelled job.
        seg.slow = 0.0
        assert _post(server.url, key, "a, b", "job-next").status_code == 200


def test_cancel_callback_cancels_on_the_server(tiny_model_set):
    seg = Wrapped(tiny_segmenter(tiny_model_set), slow=20.0)
    with BackgroundServer(create_app(seg)) as server, RemoteSegmenter(server.url) as remote:
        start = time.monotonic()
        with pytest.raises(SegmentationCancelled):
            remote.segment(images(1, 8)[0], "a, b", cancel=lambda: seg.started.is_set())
        assert time.monotonic() - start < 10
        wait_for(seg.saw_cancel.is_set, timeout=10, what="the server job to be cancelled")


def test_progress_is_reported_from_the_server(tiny_model_set):
    seg = Wrapped(tiny_segmenter(tiny_model_set), slow=1.2)
    calls: list[tuple[int, int, str]] = []
    caller = threading.get_ident()
    threads: set[int] = set()

    def progress(done, total, message):
        threads.add(threading.get_ident())
        calls.append((done, total, message))

    with BackgroundServer(create_app(seg)) as server, RemoteSegmenter(server.url) as remote:
        remote.segment(images(1, 9)[0], "a, b", progress=progress)
    assert any(m.startswith("uploading") for _, _, m in calls)
    assert any("server" in m for _, _, m in calls)  # polled while the job ran
    assert calls[-1] == (1, 1, "done") and threads == {caller}


def test_crash_in_one_request_does_not_take_the_server_down(tiny_model_set, local, caplog):
    seg = Wrapped(tiny_segmenter(tiny_model_set))
    image = images(1, 10)[0]
    with BackgroundServer(create_app(seg)) as server, RemoteSegmenter(server.url) as remote:
        with pytest.raises(RemoteSegmenterError, match=r"error id [0-9a-f]{8}") as info:
            remote.segment(image, "boom, other")
        assert info.value.status == 500 and info.value.code == "internal_error"
        # The reply names an error id only; the exception (which may name server paths) is in the log.
        assert "simulated engine crash" not in str(info.value)
        ref = str(info.value).split("error id ")[1][:8]
        assert any(ref in r.getMessage() and "simulated engine crash" in (r.exc_text or "")
                   for r in caplog.records)
        assert_same(remote.segment(image, "cat, dog"), local.segment(image, "cat, dog"))
        assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_unreachable_server_fails_fast_with_a_clear_message():
    with BackgroundServer(create_app(tiny_segmenter())) as server:
        url = server.url  # a port that was free a moment ago and is closed now
    remote = RemoteSegmenter(url, connect_timeout=2)
    start = time.monotonic()
    with pytest.raises(RemoteSegmenterError, match="Is 'napari-cass serve' running"):
        remote.segment(images(1)[0], "a")
    assert time.monotonic() - start < 10
    with pytest.raises(ValueError, match="must look like http://host:8765"):
        RemoteSegmenter("gpu-box:8765")


def test_urllib_backend_gives_the_same_result(served, local):
    server, _ = served
    image = images(1, 11)[0]
    with RemoteSegmenter(server.url, backend="urllib") as remote:
        assert_same(remote.segment(image, "cat, dog"), local.segment(image, "cat, dog"))
        assert "cass on cpu" in remote.health()


def test_remote_segmenter_looks_like_a_segmenter(served):
    server, seg = served
    with RemoteSegmenter(server.url) as remote:
        assert remote.preset.name == seg.preset.name and remote.device == f"server {server.url}"
        remote.set_method("clip")
        assert remote.method == "clip"
        with pytest.raises(ValueError, match="Unknown method"):
            remote.set_method("nope")
        with pytest.raises(ValueError, match="class list is empty"):
            remote.segment(images(1)[0], "")  # checked locally, before any request
        with pytest.raises(ValueError, match="use a local Segmenter"):
            remote.segment(images(1)[0], "a", return_probabilities=True)
        assert remote.stats["requests"] == 1  # the /v1/info behind .preset only


# --------------------------------------------------------------------------- helpers
def _upload(remote: RemoteSegmenter, image) -> str:
    from napari_cass.server._protocol import encode_array

    key, payload = encode_array(image)
    r = httpx.put(f"{remote.url}/v1/images/{key}", content=payload,
                  headers={"Content-Type": "application/x-npy", "Content-Encoding": "deflate"})
    assert r.status_code == 201, r.text
    return key


def _post(url: str, key: str, classes: str, job_id: str, timeout: float = 60.0) -> httpx.Response:
    body = {"image": key, "job_id": job_id,
            "classes": [{"name": c.strip(), "queries": [c.strip()]} for c in classes.split(",")]}
    return httpx.post(f"{url}/v1/segment", content=json.dumps(body), timeout=timeout,
                      headers={"Content-Type": "application/json"})


def test_per_request_method_and_preset_then_back_to_the_server_defaults(served, local):
    server, seg = served
    image = images(1, 14)[0]
    with RemoteSegmenter(server.url) as remote:
        remote.set_method("clip")
        remote.set_preset("voc21")
        other = remote.segment(image, "cat, dog")
    assert seg.method == "clip" and seg.preset.name == "voc21"  # what the last job asked for
    with RemoteSegmenter(server.url) as remote:  # no method/preset: the server's own, customised one
        assert_same(remote.segment(image, "cat, dog"), local.segment(image, "cat, dog"))
    assert seg.method == "cass" and seg.preset == local.preset
    assert other.labels.shape == image.shape[:2]


def test_loopback_server_without_token_checks_the_host_header(served):
    server, _ = served
    assert httpx.get(server.url + "/health").status_code == 200
    # What a browser sends after DNS rebinding: the attacker's host name.
    for host in ("evil.example", f"evil.example:{server.port}"):
        assert httpx.get(server.url + "/health", headers={"Host": host}).status_code == 400
        assert httpx.get(server.url + "/v1/info", headers={"Host": host}).status_code == 400
    assert httpx.get(f"http://localhost:{server.port}/health").status_code == 200


def test_segment_server_arguments(served, local, tmp_path):
    import argparse

    from napari_cass.server._cli import add_remote_arguments, remote_segmenter_from_args

    server, _ = served
    parser = argparse.ArgumentParser()
    add_remote_arguments(parser)
    parser.add_argument("--method", default="cass")
    parser.add_argument("--preset", default="interactive")
    assert remote_segmenter_from_args(parser.parse_args([])) is None
    with pytest.raises(ValueError, match="--token-file is for --server"):
        remote_segmenter_from_args(parser.parse_args(["--token-file", str(tmp_path / "t")]))
    remote = remote_segmenter_from_args(parser.parse_args(["--server", server.url]))
    image = images(1, 12)[0]
    with remote:
        assert remote.method == "cass" and remote.preset.name == "interactive"
        # The server's segmenter uses a small preset variant also named "interactive".
        assert_same(remote.segment(image, "cat, dog"), local.segment(image, "cat, dog"))
    with pytest.raises(RemoteSegmenterError, match="Cannot reach"):
        remote_segmenter_from_args(parser.parse_args(["--server", "http://127.0.0.1:9"]))


def test_serve_command_starts_serves_and_stops(tmp_path):
    """``serve`` as a user runs it (a process, SIGINT to stop), with tiny injected models."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    token = tmp_path / "token"
    token.write_text("t" * 24 + "\n")
    token.chmod(0o600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = (
        "import argparse, sys\n"
        "from napari_cass.server._cli import add_serve_parser\n"
        "from test_server_support import tiny_segmenter\n"
        "p = argparse.ArgumentParser(); add_serve_parser(p.add_subparsers())\n"
        "args = p.parse_args(sys.argv[1:])\n"
        "sys.exit(args.func(args, segmenter=tiny_segmenter()))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "serve", "--port", str(port), "--token-file", str(token),
         "--log-level", "warning"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        remote = RemoteSegmenter(f"http://127.0.0.1:{port}", token_file=token, connect_timeout=2)
        wait_for(lambda: proc.poll() is not None or "Connected" in remote.test_connection(), timeout=120,
                 what="the server process to answer")
        assert proc.poll() is None
        assert remote.segment(images(1, 13)[0], "a, b").labels.shape == (40, 52)
        with pytest.raises(RemoteSegmenterError, match="refused"):
            RemoteSegmenter(remote.url).segment(images(1, 13)[0], "a, b")  # token file = token needed
        remote.close()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"listening on http://127.0.0.1:{port}" in err and "token: read from" in err


def test_one_queue_feeds_several_engines(tiny_model_set, local):
    """``--device cuda:0,cuda:1``: one engine per device (here two on the CPU), one queue."""
    from napari_cass.server._cli import replicate

    first = tiny_segmenter(tiny_model_set)
    gate = threading.Event()
    a, b = Wrapped(first, gate=gate), Wrapped(replicate(first, "cpu"))
    pics = images(2, 15)
    with BackgroundServer(create_app([a, b])) as server:
        assert httpx.get(server.url + "/health").json()["engines"] == 2
        with ThreadPoolExecutor(1) as pool, RemoteSegmenter(server.url) as remote:
            held = pool.submit(remote.segment, pics[0], "cat, dog")
            wait_for(a.started.is_set, what="engine A to take the first job")
            # Engine A is held: the next jobs go to engine B, and equal the local results.
            for image, classes in ((pics[1], "road, sky"), (pics[0], "tree")):
                assert_same(remote.segment(image, classes), local.segment(image, classes))
            assert len(b.calls) == 2 and len(a.calls) == 1
            gate.set()
            assert_same(held.result(60), local.segment(pics[0], "cat, dog"))
