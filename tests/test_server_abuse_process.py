"""A real ``napari-cass serve`` process under abuse (issue 14, items 10, 11, 13, 16), loopback only.

One server process for the module, as a user starts it (token file, tiny models, each
segment held 1.2 s so clients poll), with a 256-descriptor limit (the issue's machine)
and the memory settings scaled down by four (``--max-pixels`` 10 MP, ``--memory-budget-gb
0.25``): 300 half-open connections while a token holder is served, the access log of a
small folder run, 16 concurrent 10 MP palette-PNG uploads against the budget (peak RSS
from ``/proc``), and last, SIGTERM in the middle of a request (tests run in file order;
that one ends the process). The same uploads at full scale (16 x 40 MP, the default
4 GB budget) take minutes on two cores: ``benchmarks/bench_server_abuse.py``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from napari_cass.server import RemoteSegmenter
from test_server_abuse import put
from test_server_support import images, wait_for

TOKEN = "abuse-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BUDGET_GB = 0.25
MAX_PIXELS = 10_000_000
SERVE = """
import argparse, sys
from napari_cass.server._cli import add_serve_parser
from test_server_support import Wrapped, tiny_segmenter
p = argparse.ArgumentParser(); add_serve_parser(p.add_subparsers())
args = p.parse_args(sys.argv[1:])
sys.exit(args.func(args, segmenter=Wrapped(tiny_segmenter(), slow=1.2)))
"""


def _limit_descriptors() -> None:  # in the child only
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(process, url, token file, log folder) of a warmed-up server."""
    assert Path("/proc/self/status").exists(), "these checks read Linux /proc (descriptors, memory)"
    tmp = tmp_path_factory.mktemp("serve-abuse")
    token = tmp / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(tmp / "stdout.log", "w") as out, open(tmp / "stderr.log", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, "serve", "--port", str(port), "--token-file", str(token),
             "--log-level", "info", "--memory-budget-gb", str(BUDGET_GB), "--max-pixels", str(MAX_PIXELS)],
            env={**os.environ, "PYTHONPATH": os.path.dirname(__file__)}, stdout=out, stderr=err,
            preexec_fn=_limit_descriptors)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (tmp / "stderr.log").read_text()
        try:
            return httpx.get(url + "/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(up, timeout=180, what="the serve process to answer")
        with RemoteSegmenter(url, token_file=token, timeout=120) as remote:  # the first run builds caches
            remote.segment(images(1, 39)[0], "a, b")
        yield proc, url, token, tmp
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def test_300_half_open_connections_do_not_lock_out_a_token_holder(served):
    proc, url, token, logs = served
    port = int(url.rsplit(":", 1)[1])
    half_open: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 60
        for _ in range(300):  # each sends part of a request head, then nothing
            if time.monotonic() > deadline:
                break
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect(("127.0.0.1", port))
                s.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
            except OSError:
                s.close()
                continue
            half_open.append(s)
        assert len(half_open) >= 250
        start = time.monotonic()
        with RemoteSegmenter(url, token_file=token, timeout=10, connect_timeout=5) as remote:
            assert remote.segment(images(1, 40)[0], "a, b").labels.shape == (40, 52)
        took = time.monotonic() - start
        assert took < 10, f"the token holder waited {took:.1f} s"
        assert proc.poll() is None
    finally:
        for s in half_open:
            s.close()
    err = (logs / "stderr.log").read_text()
    assert "Too many open files" not in err and "connections open (limit" in err


def test_job_polls_stay_out_of_the_access_log(served):
    proc, url, token, logs = served
    log = logs / "stdout.log"
    before = len(log.read_text().splitlines())
    polls: list[str] = []
    with RemoteSegmenter(url, token_file=token) as remote:  # what `segment folder --server` does per image
        for image in images(3, 41):
            remote.segment(image, "a, b", progress=lambda d, t, m: polls.append(m))
    assert sum(m.startswith("server:") for m in polls) >= 3  # the client polled (1.2 s per job)
    wait_for(lambda: len(log.read_text().splitlines()) >= before + 9, timeout=10, what="the access log")
    lines = log.read_text().splitlines()[before:]
    assert not [line for line in lines if "/v1/jobs/" in line]
    assert len(lines) == 9, lines  # per image: POST (428 need pixels), PUT, POST (200)


def palette_pngs(n: int, size: tuple[int, int]) -> list[bytes]:
    """``n`` distinct palette PNGs of ``size`` (a few kB each, each decoding to
    ``3 x width x height`` bytes): one encoded, then its palette patched."""
    from PIL import Image

    img = Image.new("P", size, 0)
    img.putpalette([0, 0, 0] * 256)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    data = buf.getvalue()
    at = data.index(b"PLTE")
    length = int.from_bytes(data[at - 4:at], "big")
    out = []
    for i in range(n):
        palette = bytes([i, 255 - i, 7]) + data[at + 7:at + 4 + length]
        crc = zlib.crc32(b"PLTE" + palette).to_bytes(4, "big")
        out.append(data[:at + 4] + palette + crc + data[at + 8 + length:])
    return out


def test_16_concurrent_palette_png_uploads_stay_within_the_memory_budget(served):
    import hashlib

    proc, url, token, logs = served
    pngs = palette_pngs(16, (4000, 2500))  # 10 MP, 30 MB decoded each: 480 MB for 16 (budget 256 MB)
    assert len(set(pngs)) == 16 and max(map(len, pngs)) < 100_000
    rss_before = _status_kb(proc.pid, "VmRSS") * 1024

    def upload(data: bytes) -> int:
        key = hashlib.sha256(data).hexdigest()
        r = httpx.put(f"{url}/v1/images/{key}", content=data, timeout=120,
                      headers={"Content-Type": "image/png", **AUTH})
        assert r.status_code in (201, 429, 503), r.text
        if r.status_code != 201:
            assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["code"] in ("busy", "memory_full")
        return r.status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(upload, pngs))
    peak = _status_kb(proc.pid, "VmHWM") * 1024
    info = httpx.get(f"{url}/v1/info", headers=AUTH).json()["memory"]
    budget = int(BUDGET_GB * 2**30)
    print(f"\n16 x 10 MP palette PNG uploads: {codes.count(201)} stored, {codes.count(503)} x 503, "
          f"{codes.count(429)} x 429; server RSS {rss_before / 2**20:.0f} MB before, peak {peak / 2**20:.0f} MB "
          f"(+{(peak - rss_before) / 2**20:.0f} MB, budget {budget / 2**20:.0f} MB); counted peak "
          f"{info['peak_bytes'] / 2**20:.0f} MB")
    assert codes.count(201) >= 2
    assert info["peak_bytes"] <= info["budget_bytes"]
    assert peak - rss_before <= budget


def test_sigterm_mid_request_answers_server_stopped(served):
    """Last: it stops the module's server."""
    proc, url, token, logs = served
    with ThreadPoolExecutor(1) as pool:
        key, r = put(url, images(1, 50)[0], AUTH)
        assert r.status_code == 201
        slow = [{"name": "a", "queries": ["a"]}, {"name": "held", "queries": ["held"]}]
        asked = pool.submit(httpx.post, f"{url}/v1/segment", timeout=60,
                            content=json.dumps({"image": key, "job_id": "job-interrupted", "classes": slow}),
                            headers={"Content-Type": "application/json", **AUTH})
        wait_for(lambda: httpx.get(f"{url}/v1/jobs/job-interrupted", headers=AUTH).status_code == 200,
                 what="the job to reach the server")
        proc.send_signal(signal.SIGTERM)
        reply = asked.result(60)
    proc.wait(60)
    assert reply.status_code == 503, reply.text
    error = reply.json()["error"]
    assert error["code"] == "server_stopped" and "stopping" in error["message"]
    err = (logs / "stderr.log").read_text()
    assert "Traceback" not in err and "CancelledError" not in err and "Exception in ASGI" not in err, err
