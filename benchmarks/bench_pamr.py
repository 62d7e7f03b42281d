"""PAMR boundary refinement: what it does to boundaries, what it costs in time and memory.

Usage::

    python benchmarks/bench_pamr.py boundary [--scenes 6] [--size 384x512]
    python benchmarks/bench_pamr.py time [--sizes 0.5 12 24] [--classes 5]
    python benchmarks/bench_pamr.py memory [--size 6000x4000] [--classes 150] [--tiles 4]

``boundary``: scenes with exact truth (drawn shapes and textured bands, and
scikit-image's coins photo with a mask derived from it; napari_cass.evaluation._boundary),
CASS-like coarse logits made from the truth on the 16-px patch grid and upsampled as the
engine does, then the engine's finish without and with PAMR. Reports mIoU and the
boundary F-score within 2 px (counts summed over the set), for PAMR guided by the model
input resized back (the engine's default, as the reference; also with the reference's
quirks) and by the original image.

``time``: the engine's final stage (labels from low-resolution logits) without and with
PAMR on random pictures of the given megapixels, 4:3, ``--classes`` queries.

``memory``: peak RSS (ru_maxrss) of the final stage in fresh processes, without and with
PAMR, for ``--classes`` queries on a ``--size`` image; the refined run stops after
``--tiles`` tiles (every tile allocates the same; the full run takes hours on 2 CPU
cores with 150 classes) and both runs touch the whole (H, W) outputs first, so the
difference is PAMR's working set.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np


def _finish(logits, size, classes, guide=None):
    from napari_cass.engine._finish import finish_logits

    return finish_logits(logits, size, [(i, i + 1) for i in range(classes)], logit_scale=40.0, guide=guide)


def boundary(args) -> None:
    from napari_cass.engine._pamr_finish import guide_for
    from napari_cass.evaluation._boundary import BoundaryCounts, boundary_counts, coarse_logits, synthetic_scenes
    from napari_cass.evaluation._metrics import intersect_and_union

    h, w = (int(v) for v in args.size.split("x"))
    scenes = synthetic_scenes(args.scenes, size=(h, w), seed=args.seed)
    variants = {"coarse (no refinement)": None, "PAMR (default: model input resized back)": (False, "model"),
                "PAMR, reference_quirks (OpenCV resize)": (True, "model"),
                "PAMR guided by the original image": (False, "image")}
    rows = []
    for name, quirks in variants.items():
        bf, per = BoundaryCounts(), {}
        start = time.perf_counter()
        for sc in scenes:
            lg = coarse_logits(sc.truth, sc.classes)
            guide = None if quirks is None else guide_for(sc.image, lg.shape[:2], sc.truth.shape, *quirks[:1],
                                                          source=quirks[1])
            out = _finish(lg, sc.truth.shape, sc.classes, guide)
            i, u, _, _ = intersect_and_union(out.labels, sc.truth, sc.classes)
            keep = u > 0
            per.setdefault(sc.name, []).append((float(np.mean(i[keep] / u[keep])), boundary_counts(out.labels, sc.truth, 2)))
            bf.add(per[sc.name][-1][1])
        seconds = time.perf_counter() - start
        miou = float(np.mean([m for v in per.values() for m, _ in v]))
        kinds = {k: (np.mean([m for m, _ in v]), _sum_f(v)) for k, v in per.items()}
        rows.append((name, miou, bf.f_score, kinds, seconds))
    print(f"{len(scenes)} scenes ({args.scenes} drawn at {h} x {w}, plus the coins photo); "
          "mIoU = mean over images of the per-image mean IoU; BF = boundary F-score within 2 px\n")
    kinds = list(rows[0][3])
    print("| labels | mIoU | BF (2 px) | " + " | ".join(f"{k}: mIoU / BF" for k in kinds) + " | s |")
    print("|---|---|---|" + "---|" * len(kinds) + "---|")
    for name, miou, f, per, seconds in rows:
        cells = " | ".join(f"{per[k][0]:.3f} / {per[k][1]:.3f}" for k in kinds)
        print(f"| {name} | {miou:.3f} | {f:.3f} | {cells} | {seconds:.1f} |")


def _sum_f(values) -> float:
    from napari_cass.evaluation._boundary import BoundaryCounts

    total = BoundaryCounts()
    for _, c in values:
        total.add(c)
    return total.f_score


def timing(args) -> None:
    import torch

    from napari_cass.engine._image import load_rgb, resized_size
    from napari_cass.engine._pamr_finish import original_guide

    print(f"final stage, {args.classes} queries, {torch.get_num_threads()} thread(s), torch {torch.__version__}\n")
    print("| megapixels | size | without PAMR (s) | with PAMR (s) | PAMR s per MP |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for mp in args.sizes:
        w = int(round((mp * 1e6 * 4 / 3) ** 0.5))
        h = int(round(mp * 1e6 / w))
        small = rng.integers(0, 255, (-(-h // 16), -(-w // 16), 3), dtype=np.uint8)
        image = np.repeat(np.repeat(small, 16, 0), 16, 1)[:h, :w]
        rh, rw = resized_size(h, w, 336)
        logits = torch.from_numpy(rng.normal(0.2, 0.02, (rh, rw, args.classes)).astype(np.float32))
        t0 = time.perf_counter()
        _finish(logits, (h, w), args.classes)
        t1 = time.perf_counter()
        _finish(logits, (h, w), args.classes, original_guide(load_rgb(image)))
        t2 = time.perf_counter()
        print(f"| {mp:g} | {w} x {h} | {t1 - t0:.1f} | {t2 - t1:.1f} | {(t2 - t1) / (h * w / 1e6):.2f} |", flush=True)


_MEMORY_CHILD = """
import json, resource, sys, numpy as np, torch
from napari_cass.engine import _finish as fin
from napari_cass.engine._image import load_rgb, resized_size
from napari_cass.engine._pamr_finish import original_guide
h, w, q, refine, tiles = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])
image = np.zeros((h, w, 3), np.uint8); image[:, w // 2:] = 200
rh, rw = resized_size(h, w, 336)
logits = torch.randn(rh, rw, q) * 0.02
empty = np.empty
def touched(shape, dtype):  # the (H, W) outputs count in full, as in a finished run
    a = empty(shape, dtype); a.fill(0); return a
fin.np.empty = touched
class Stop(Exception): pass
def on_band(done, total):
    if refine and done >= tiles: raise Stop
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    fin.finish_logits(logits, (h, w), [(i, i + 1) for i in range(q)], logit_scale=40.0, on_band=on_band,
                      guide=original_guide(load_rgb(image)) if refine else None)
except Stop:
    pass
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_mb": before / 1024, "peak_mb": peak / 1024}))
"""


def memory(args) -> None:
    h, w = (int(v) for v in args.size.split("x"))
    out = {}
    for refine in (0, 1):
        run = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(h), str(w), str(args.classes), str(refine),
                              str(args.tiles)], capture_output=True, text=True, check=True)
        out[refine] = json.loads(run.stdout.strip().splitlines()[-1])
    grew = out[1]["peak_mb"] - out[0]["peak_mb"]
    print(f"final stage on {w} x {h}, {args.classes} queries (peak RSS, MiB): without PAMR {out[0]['peak_mb']:.0f}, "
          f"with PAMR {out[1]['peak_mb']:.0f} ({args.tiles} tiles): PAMR adds {grew:.0f} MiB")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    b = sub.add_parser("boundary")
    b.add_argument("--scenes", type=int, default=6)
    b.add_argument("--size", default="384x512")
    b.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("time")
    t.add_argument("--sizes", type=float, nargs="+", default=[0.5, 12, 24])
    t.add_argument("--classes", type=int, default=5)
    m = sub.add_parser("memory")
    m.add_argument("--size", default="6000x4000")
    m.add_argument("--classes", type=int, default=150)
    m.add_argument("--tiles", type=int, default=4)
    args = parser.parse_args(argv)
    {"boundary": boundary, "time": timing, "memory": memory}[args.what](args)


if __name__ == "__main__":
    main()
