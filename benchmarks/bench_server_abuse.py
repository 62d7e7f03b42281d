"""Peak memory of ``napari-cass serve`` under the issue-14 upload floods, at full scale.

Usage::

    python benchmarks/bench_server_abuse.py [--budget-gb 4] [--clients 16] [--queued 32]

Starts ``napari-cass serve`` in a subprocess (tiny random-weight models, loopback, one
engine held at a gate so jobs stay queued) with ``--memory-budget-gb`` and reports its
RSS from ``/proc`` (Linux) for two floods of 40 MP palette PNGs (~40 kB each, 120 MB
decoded):

1. ``--clients`` concurrent uploads (the issue: RSS 1.55 -> 8.6 GB before the budget);
2. ``--queued`` clients that each upload a distinct image and queue a job on it (the
   issue: 8.1 GB pinned, kept after the clients left), then leave.

``tests/test_server_abuse_process.py`` checks the same logic scaled down by four.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SERVE = """
import argparse, os, sys, time
from napari_cass.server._cli import add_serve_parser
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from test_server_support import tiny_segmenter

class Gated:
    def __init__(self, inner, gate):
        self.inner, self.gate = inner, gate
    def __getattr__(self, name):
        return getattr(self.inner, name)
    def segment(self, image, classes, progress=None, cancel=None, *, background=None):
        while os.path.exists(self.gate) and not (cancel and cancel()):
            time.sleep(0.05)
        return self.inner.segment(image, classes, progress, cancel, background=background)

p = argparse.ArgumentParser(); add_serve_parser(p.add_subparsers())
args = p.parse_args(sys.argv[3:])
sys.exit(args.func(args, segmenter=Gated(tiny_segmenter(), sys.argv[2])))
"""


def palette_pngs(n: int, size=(8000, 5000)) -> list[bytes]:
    """``n`` distinct palette PNGs of ``size``: one encoded, then its palette patched."""
    import io
    import zlib

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
        palette = bytes([i % 256, i // 256, 7]) + data[at + 7:at + 4 + length]
        crc = zlib.crc32(b"PLTE" + palette).to_bytes(4, "big")
        out.append(data[:at + 4] + palette + crc + data[at + 8 + length:])
    return out


def mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-gb", type=float, default=4.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--queued", type=int, default=32)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    gate = tmp / "gate"
    gate.touch()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(ROOT), str(gate), "serve", "--port", str(port),
                             "--log-level", "warning", "--memory-budget-gb", str(args.budget_gb),
                             "--queue-size", str(args.queued + 8)], stdout=log, stderr=log, cwd=ROOT)
    try:
        for _ in range(1200):
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        pngs = palette_pngs(args.clients + args.queued)
        print(f"server up; RSS {mb(proc.pid, 'VmRSS'):.0f} MB, budget {args.budget_gb:g} GB; "
              f"PNG {len(pngs[0]) / 1024:.0f} kB each, 40 MP ({8000 * 5000 * 3 / 2**20:.0f} MB decoded)")

        def upload(data: bytes) -> tuple[str, int]:
            key = hashlib.sha256(data).hexdigest()
            r = httpx.put(f"{url}/v1/images/{key}", content=data, headers={"Content-Type": "image/png"},
                          timeout=600)
            return key, r.status_code

        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            codes = [c for _, c in pool.map(upload, pngs[:args.clients])]
        print(f"1. {args.clients} concurrent uploads in {time.perf_counter() - start:.1f} s: "
              f"{codes.count(201)} stored, {codes.count(503)} x 503, {codes.count(429)} x 429; "
              f"peak RSS {mb(proc.pid, 'VmHWM'):.0f} MB, now {mb(proc.pid, 'VmRSS'):.0f} MB")

        waiting, refused = [], 0
        for i, data in enumerate(pngs[args.clients:]):
            key, code = upload(data)
            if code != 201:
                refused += 1
                continue
            body = json.dumps({"image": key, "job_id": f"job-queued-{i:04d}",
                               "classes": [{"name": "a", "queries": ["a"]}]}).encode()
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            waiting.append(s)
        time.sleep(1.0)
        info = httpx.get(url + "/v1/info").json()["memory"]
        print(f"2. {len(waiting)} jobs queued on distinct images, {refused} uploads refused (503); counted "
              f"{info['used_bytes'] / 2**20:.0f} MB of {info['budget_bytes'] / 2**20:.0f} MB (+ engine reserve "
              f"{info['engine_reserve_bytes'] / 2**20:.0f} MB); RSS {mb(proc.pid, 'VmRSS'):.0f} MB, "
              f"peak {mb(proc.pid, 'VmHWM'):.0f} MB")
        for s in waiting:
            s.close()
        time.sleep(2.0)
        info = httpx.get(url + "/v1/info").json()["memory"]
        print(f"   clients left: {info['pinned']} images pinned, counted {info['used_bytes'] / 2**20:.0f} MB; "
              f"RSS {mb(proc.pid, 'VmRSS'):.0f} MB")
    finally:
        gate.unlink(missing_ok=True)
        proc.terminate()
        proc.wait(60)
        log.close()


if __name__ == "__main__":
    main()
