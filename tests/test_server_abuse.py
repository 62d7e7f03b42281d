"""napari-cass serve under abuse (issue 14, items 10-13 and 16), loopback only, bounded loops.

* memory: one byte budget for bodies, decodes, stored and queued images; 503 when full,
  images of clients that left released (in process, small images, exact accounting);
* cross-origin: a web page's text/plain or cross-site POST is refused and queues nothing;
* slow clients: request-head deadline, connection bound, stalled bodies;
* a stop that cuts a request short answers "server stopped" (503), never a 500.

The checks that need a real ``serve`` process (300 half-open connections under a
256-descriptor limit, 40 MP uploads against the memory budget, SIGTERM, the access log)
are in ``test_server_abuse_process.py``.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from napari_cass.server import BackgroundServer, RemoteSegmenter, create_app
from napari_cass.server._protocol import Limits, encode_array
from test_server_support import Wrapped, images, tiny_segmenter, wait_for

CLASSES = [{"name": "a", "queries": ["a"]}, {"name": "b", "queries": ["b"]}]


def put(url: str, image: np.ndarray, headers: dict | None = None) -> tuple[str, httpx.Response]:
    key, payload = encode_array(image)
    r = httpx.put(f"{url}/v1/images/{key}", content=payload, timeout=30,
                  headers={"Content-Type": "application/x-npy", "Content-Encoding": "deflate", **(headers or {})})
    return key, r


def _raw_post(port: int, body: dict) -> socket.socket:
    """Send POST /v1/segment on a raw socket and leave it open (a client waiting for its result)."""
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return s


def _read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded by the socket timeout)."""
    chunks = []
    try:
        while chunk := s.recv(65536):
            chunks.append(chunk)
    except OSError:
        pass
    s.close()
    return b"".join(chunks)


# --------------------------------------------------------------------------- memory budget
def test_budget_counts_queued_images_refuses_with_503_and_frees_them_when_clients_leave(tiny_model_set):
    gate = threading.Event()
    seg = Wrapped(tiny_segmenter(tiny_model_set), gate=gate)
    limits = Limits(max_pixels=100_000)
    # 1.2 MB set aside for the engine (12 B/px x 100 000 px), 1.8 MB for bodies and images.
    app = create_app(seg, limits=limits, store_images=2, memory_budget=3_000_000, max_queue=16,
                     image_idle_seconds=3.0)
    store = app.state.store
    pics = [np.full((300, 300, 3), i, np.uint8) for i in range(12)]  # 270 kB each, ~1 kB compressed
    nbytes = pics[0].nbytes
    waiting: list[socket.socket] = []
    try:
        with BackgroundServer(app) as server:
            key0, r = put(server.url, pics[0])
            assert r.status_code == 201
            waiting.append(_raw_post(server.port, {"image": key0, "job_id": "job-running", "classes": CLASSES}))
            wait_for(seg.started.is_set, what="the first job to reach the engine")
            refused = None
            for i in range(1, len(pics)):  # queue jobs on new images until the budget refuses
                key, r = put(server.url, pics[i])
                assert store.used <= store.budget and store.peak <= store.budget
                if r.status_code != 201:
                    refused = r
                    break
                waiting.append(_raw_post(server.port, {"image": key, "job_id": f"job-queued-{i}",
                                                       "classes": CLASSES}))
                wait_for(lambda: httpx.get(server.url + "/health").json()["queue"]["waiting"] == i, what="queue")
            assert refused is not None, "the budget never refused an upload"
            assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
            err = refused.json()["error"]
            assert err["code"] == "memory_full" and "--memory-budget-gb" in err["message"]
            queued = len(waiting)
            # Only two images stay in the store, yet every image a job waits on is still counted.
            assert len(store) <= 2 and store.stats()["pinned"] == queued
            assert store.used >= queued * nbytes
            # The clients leave: their queued jobs are dropped and their images released.
            for s in waiting[1:]:
                s.close()
            wait_for(lambda: store.stats()["pinned"] == 1, what="queued jobs of departed clients to be dropped")
            assert httpx.get(server.url + "/health").json()["queue"]["waiting"] == 0
            assert store.used <= 3 * nbytes  # the running job's image + at most two stored
            key, r = put(server.url, pics[-1])
            assert r.status_code == 201  # room again
            gate.set()
            waiting[0].settimeout(30)
            assert waiting[0].recv(64).startswith(b"HTTP/1.1 200")
            wait_for(lambda: store.stats()["pinned"] == 0, what="the finished job to release its image")
            assert len(seg.calls) == 1  # dropped jobs never ran
            # Images nobody names any more are dropped after image_idle_seconds: all memory returns.
            wait_for(lambda: store.used == 0 and len(store) == 0, timeout=15, what="idle images to expire")
    finally:
        gate.set()
        for s in waiting:
            s.close()


def test_decode_slots_bound_concurrent_decodes(tiny_model_set, monkeypatch):
    import napari_cass.server._app as app_module

    active, peak, lock = [0], [0], threading.Lock()
    real = app_module.decode_payload

    def counting(*args):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.2)
        try:
            return real(*args)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(app_module, "decode_payload", counting)
    app = create_app(tiny_segmenter(tiny_model_set), max_decodes=2, max_queue=4)
    with BackgroundServer(app) as server, ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(lambda i: put(server.url, images(1, 100 + i)[0])[1].status_code, range(10)))
    assert peak[0] <= 2
    assert set(codes) <= {201, 429} and codes.count(201) >= 6  # 2 decoding + 4 waiting at any time


def test_an_array_longer_than_its_header_is_not_inflated(tiny_model_set):
    """The budget counts an ``.npy`` upload by its header: the inflate stops where the header ends."""
    import hashlib
    import zlib

    from napari_cass.server._protocol import npy_bytes

    app = create_app(tiny_segmenter(tiny_model_set))
    raw = npy_bytes(np.zeros((4, 4), np.uint8)) + bytes(20_000_000)  # 20 MB of zeros after a 16-pixel array
    with BackgroundServer(app) as server:
        r = httpx.put(f"{server.url}/v1/images/{hashlib.sha256(raw).hexdigest()}", content=zlib.compress(raw, 9),
                      headers={"Content-Type": "application/x-npy", "Content-Encoding": "deflate"}, timeout=30)
    assert r.status_code == 413 and "decompresses to more than" in r.json()["error"]["message"]
    assert app.state.store.peak < 1_000_000


# --------------------------------------------------------------------------- cross-origin
def test_cross_origin_or_text_plain_posts_are_refused_and_queue_nothing(tiny_model_set):
    seg = Wrapped(tiny_segmenter(tiny_model_set))
    with BackgroundServer(create_app(seg)) as server:  # loopback, no token
        key, r = put(server.url, images(1, 30)[0])
        assert r.status_code == 201
        body = json.dumps({"image": key, "job_id": "job-from-a-page", "classes": CLASSES})
        page = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
        attempts = [
            ({"Content-Type": "text/plain", **page}, 403),  # what a page's fetch() sends without asking
            ({"Content-Type": "text/plain"}, 415),
            ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
            ({"Content-Type": "application/json", "Origin": "http://evil.example"}, 403),
            ({"Content-Type": "application/json", "Origin": "null"}, 403),
            ({"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"}, 403),  # another port
            ({"Content-Type": "application/json", "Origin": "http://127.0.0.1:1"}, 403),
        ]
        for headers, status in attempts:
            r = httpx.post(f"{server.url}/v1/segment", content=body, headers=headers, timeout=30)
            assert r.status_code == status, (headers, r.text)
            assert r.json()["error"]["code"] == ("cross_origin" if status == 403 else "unsupported_type")
        key2, r = put(server.url, images(1, 31)[0], {"Origin": "http://evil.example"})
        assert r.status_code == 403  # uploads too
        assert seg.calls == [] and httpx.get(server.url + "/health").json()["queue"]["waiting"] == 0
        # The server's own origin, and napari-cass's client (no Origin), are served.
        own = {"Content-Type": "application/json", "Origin": server.url, "Sec-Fetch-Site": "same-origin"}
        assert httpx.post(f"{server.url}/v1/segment", content=body, headers=own, timeout=60).status_code == 200
        with RemoteSegmenter(server.url) as remote:
            assert remote.segment(images(1, 30)[0], "a, b").labels.shape == (40, 52)


# --------------------------------------------------------------------------- slow clients (in process)
def test_a_request_head_that_trickles_is_cut_at_the_deadline(tiny_model_set):
    app = create_app(tiny_segmenter(tiny_model_set))
    with BackgroundServer(app, header_timeout=1.0) as server:
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        start = time.monotonic()
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed = False
        for _ in range(40):  # one header byte every 0.1 s: never a complete head
            try:
                s.sendall(b"X")
                s.settimeout(0.1)
                closed = s.recv(1) == b""
            except socket.timeout:
                continue
            except OSError:
                closed = True
            if closed:
                break
        s.close()
        assert closed and time.monotonic() - start < 3.0
        assert server.guard.closed_slow >= 1
        assert httpx.get(server.url + "/health", timeout=5).status_code == 200


def test_idle_connections_beyond_the_limit_make_room_for_new_ones(tiny_model_set):
    app = create_app(tiny_segmenter(tiny_model_set))
    with BackgroundServer(app, max_connections=8) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(20)]
        try:
            start = time.monotonic()
            assert httpx.get(server.url + "/health", timeout=5).status_code == 200
            assert time.monotonic() - start < 2.0
            wait_for(lambda: len(server.guard.open) <= 8, what="the guard to shed idle connections")
            assert server.guard.closed_shed >= 12
        finally:
            for s in idle:
                s.close()


def test_a_body_that_stalls_is_refused_with_408(tiny_model_set):
    app = create_app(tiny_segmenter(tiny_model_set), body_timeout=0.5)
    with BackgroundServer(app) as server:
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        s.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 500\r\n\r\n{\"image\":")
        reply = _read_all(s)
        assert reply.startswith(b"HTTP/1.1 408") and b'"timeout"' in reply


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_stop_cancelling_an_unfinished_request_answers_503_not_500(tiny_model_set):
    """uvicorn cancels what is still running after its graceful-stop time: the client hears why."""
    seen = _Records()
    uvicorn_log = logging.getLogger("uvicorn.error")  # does not propagate to pytest's caplog
    uvicorn_log.addHandler(seen)
    try:
        _stop_mid_body(tiny_model_set)
    finally:
        uvicorn_log.removeHandler(seen)
    assert not [r for r in seen.records if r.levelno >= logging.ERROR and "ASGI" in r.getMessage()]


def _stop_mid_body(tiny_model_set) -> None:
    server = BackgroundServer(create_app(tiny_segmenter(tiny_model_set))).start()
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    s.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: 500\r\n\r\n{")  # a body that never ends
    time.sleep(0.3)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    reply = _read_all(s)
    stopper.join(60)
    assert reply.startswith(b"HTTP/1.1 503"), reply[:200]
    assert b"server_stopped" in reply and b"send it again" in reply
