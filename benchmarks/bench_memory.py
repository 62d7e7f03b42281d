"""Peak memory of one segmentation against the number of classes.

Usage::

    python benchmarks/bench_memory.py [--size 6000x4000] [--classes 2 20 150] [--tiny]

Each class count runs in a fresh subprocess, which reports its peak resident set
size (``VmHWM`` of ``/proc/self/status``, else ``getrusage``) after the models are
built and warmed up, and after one ``segment`` call on a ``--size`` image (a small
random image scaled up by pixel repetition). Classes are the first N of ADE20K's
150. The models are full-size CLIP ViT-B/16 + DINO ViT-B/8 with RANDOM weights
(memory does not depend on the weights; the masks are meaningless), or the tiny
test models with ``--tiny``. Goal (issue 8): the peak grows by less than 5 MB per
extra class and stays under 2.5 GB with 150 classes on the CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (10^6 bytes)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6  # bytes on macOS, KiB on Linux


def scaled_image(height: int, width: int, seed: int = 0):
    """A random image of ``height x width`` made by repeating the pixels of a small one."""
    import numpy as np

    small = (np.random.default_rng(seed).random((-(-height // 20), -(-width // 20), 3)) * 255).astype(np.uint8)
    return np.repeat(np.repeat(small, 20, axis=0), 20, axis=1)[:height, :width]


def build(tiny: bool):
    import torch

    from napari_cass.engine import Segmenter

    if tiny:
        from napari_cass.engine.testing import tiny_models

        return Segmenter.from_models(*tiny_models(), device="cpu")
    import open_clip
    import timm

    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-16", pretrained=None, quick_gelu=True)
    vfm = timm.create_model("vit_base_patch8_224.dino", pretrained=False, num_classes=0)
    return Segmenter.from_models(clip, open_clip.get_tokenizer("ViT-B-16"), vfm, device="cpu")


def child(n_classes: int, size: tuple[int, int], tiny: bool) -> dict:
    """One measurement, in this (fresh) process."""
    from napari_cass.engine import benchmark_classes

    seg = build(tiny)
    image = scaled_image(*size)
    seg.segment(image[:64, :64], ["warm up"])  # allocators and kernels, at a small size
    classes = benchmark_classes("ade20k")[:n_classes]
    before = peak_rss_mb()
    start = time.perf_counter()
    res = seg.segment(image, classes)
    seconds = time.perf_counter() - start
    assert res.labels.shape == size and res.probabilities is None
    return {
        "classes": n_classes,
        "queries": sum(len(c.queries) for c in classes),
        "peak_before_mb": round(before, 1),
        "peak_mb": round(peak_rss_mb(), 1),
        "seconds": round(seconds, 1),
    }


def measure(n_classes: int, size: tuple[int, int], tiny: bool, threads: int = 1, timeout: float = 900) -> dict:
    """Run :func:`child` in a fresh interpreter and return its report."""
    import os

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    args = [sys.executable, __file__, "--child", str(n_classes), "--size", f"{size[1]}x{size[0]}"]
    proc = subprocess.run(args + (["--tiny"] if tiny else []), capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement with {n_classes} classes failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT of the test image")
    parser.add_argument("--classes", type=int, nargs="+", default=[2, 20, 150])
    parser.add_argument("--tiny", action="store_true", help="tiny random models (smoke test)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.child is not None:
        print(json.dumps(child(args.child, (height, width), args.tiny)))
        return
    import torch

    models = "tiny random models" if args.tiny else "CLIP ViT-B/16 + DINO ViT-B/8, random weights"
    print(f"image {width} x {height}, {models}, CPU, {args.threads} thread(s), torch {torch.__version__}")
    rows = [measure(n, (height, width), args.tiny, args.threads) for n in args.classes]
    print("\n| classes | queries | peak RSS before segment (MB) | peak RSS (MB) | segment (s) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['classes']} | {r['queries']} | {r['peak_before_mb']:.0f} | {r['peak_mb']:.0f} | {r['seconds']:.1f} |")
    first, last = rows[0], rows[-1]
    if last["classes"] > first["classes"]:
        per_class = (last["peak_mb"] - first["peak_mb"]) / (last["classes"] - first["classes"])
        print(f"\ngrowth: {per_class:.2f} MB per extra class (goal < 5); "
              f"peak with {last['classes']} classes: {last['peak_mb'] / 1000:.2f} GB (goal < 2.5)")
        old = 4 * height * width / 1e6
        print(f"(a (classes, H, W) float32 array would add {old:.0f} MB per class)")


if __name__ == "__main__":
    main()
