"""Latency (p50/p99) and requests/s of ``napari-cass serve`` for 1, 4 and 16 clients.

Usage::

    python benchmarks/bench_server.py [--full] [--device auto] [--requests 10]

The server runs in this process (uvicorn in a thread, loopback, one engine); each
client is a thread with its own :class:`RemoteSegmenter`. Two workloads:

* ``prompt edits``: each client segments its own image once (upload, not timed), then
  sends ``--requests`` different class lists: no pixels travel, the vision side is cached.
* ``new images``: every request is a new image: upload + full vision pass.

``local`` is the same work on the engine directly, one request at a time, to show the
HTTP overhead. Models: tiny random-weight models by default; ``--full`` builds
full-size CLIP ViT-B/16 + DINO ViT-B/8 with RANDOM weights (timings do not depend on
the weights; the masks are meaningless). One engine serves requests one at a time, so
requests/s is bounded by the engine; more clients add queueing latency.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

PROMPTS = ["cat, dog", "road, car, sky", "person | man, bicycle", "tree, grass, water, rock",
           "cup, plate", "building, window, door", "cell, nucleus", "boat, sea", "bird", "chair, table"]


def build(args):
    from napari_cass.engine import Segmenter

    if not args.full:
        from napari_cass.engine.testing import tiny_models

        return Segmenter.from_models(*tiny_models(), device=args.device, threads=args.threads, cache_size=32)
    import open_clip
    import timm

    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-16", pretrained=None, quick_gelu=True)
    vfm = timm.create_model("vit_base_patch8_224.dino", pretrained=False, num_classes=0)
    return Segmenter.from_models(clip, open_clip.get_tokenizer("ViT-B-16"), vfm, device=args.device,
                                 threads=args.threads, cache_size=32)


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def run_clients(url, n_clients, work, warm=None):
    """``work(client_index, remote) -> list of latencies``; returns (latencies, wall seconds)."""
    from napari_cass.server import RemoteSegmenter

    remotes = [RemoteSegmenter(url, timeout=600, busy_wait=600) for _ in range(n_clients)]
    if warm is not None:
        with ThreadPoolExecutor(n_clients) as pool:
            list(pool.map(warm, range(n_clients), remotes))
    barrier = threading.Barrier(n_clients)

    def one(i):
        barrier.wait()
        return work(i, remotes[i])

    start = time.perf_counter()
    with ThreadPoolExecutor(n_clients) as pool:
        lat = [x for part in pool.map(one, range(n_clients)) for x in part]
    wall = time.perf_counter() - start
    for r in remotes:
        r.close()
    return lat, wall


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full-size random-weight models (slow on CPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--requests", type=int, default=10, help="prompt edits per client")
    parser.add_argument("--new-images", type=int, default=2, help="new-image requests per client")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--size", default="336x500", help="image size HxW (default 336x500)")
    args = parser.parse_args()

    from napari_cass.server import BackgroundServer, create_app

    seg = build(args)
    h, w = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(0)
    counts = [int(c) for c in args.clients.split(",")]
    n_img = max(counts)
    own = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n_img)]
    print(f"models: {'full-size ViT-B/16 + DINO ViT-B/8' if args.full else 'tiny'} (random weights), "
          f"device {seg.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"image {h}x{w}")

    # Local baseline on a second engine built the same way (one request at a time).
    local = build(args)
    local.segment(own[0], PROMPTS[0])
    local_edit = [timed(lambda p=p: local.segment(own[0], p)) for p in PROMPTS[: args.requests]]
    local_new = [timed(lambda: local.segment(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), PROMPTS[0]))
                 for _ in range(max(2, args.new_images))]
    rows = [("local (no server)", 1, "prompt edits", local_edit, sum(local_edit)),
            ("local (no server)", 1, "new images", local_new, sum(local_new))]

    with BackgroundServer(create_app(seg, max_queue=64, store_images=256)) as server:
        for n in counts:
            def warm(i, remote):
                remote.segment(own[i], PROMPTS[0])

            def edits(i, remote):
                return [timed(lambda k=k: remote.segment(own[i], PROMPTS[(i + k + 1) % len(PROMPTS)]))
                        for k in range(args.requests)]

            lat, wall = run_clients(server.url, n, edits, warm)
            rows.append(("server", n, "prompt edits", lat, wall))

            def news(i, remote):
                r = np.random.default_rng(1000 + i)
                return [timed(lambda: remote.segment(r.integers(0, 256, (h, w, 3), dtype=np.uint8), PROMPTS[0]))
                        for _ in range(args.new_images)]

            lat, wall = run_clients(server.url, n, news)
            rows.append(("server", n, "new images", lat, wall))

    print("\n| where | clients | workload | requests | p50 (s) | p99 (s) | requests/s |")
    print("|---|---|---|---|---|---|---|")
    for where, n, kind, lat, wall in rows:
        print(f"| {where} | {n} | {kind} | {len(lat)} | {statistics.median(lat):.3f} | "
              f"{percentile(lat, 99):.3f} | {len(lat) / wall:.1f} |")


if __name__ == "__main__":
    main()
