"""GPU throughput: images/s for 336 x 500 photos with the default models, and peak GPU memory.

Usage::

    python benchmarks/bench_gpu.py [--images 64] [--batches 8,32,64] [--classes 20]

Models: full-size CLIP ViT-B/16 + DINO ViT-B/8 (the plugin's defaults) with RANDOM weights:
the timings do not depend on the weights, the masks are meaningless. Pictures: seeded random
336 x 500 RGB images, all different (no vision-cache hits). Each image gives 8 crops of 224
(slide 224/112, the default preset), so the numbers are per image of that size.

Two measurements, each after a warm-up:

1. ``Segmenter.segment`` one image at a time (what the plugin, the CLI and the server run):
   crops batched within the image (batch 8 on a GPU), mixed precision, text embeddings
   cached after the first image (a fixed class list).
2. The vision side with crops batched ACROSS images (``--batches``): CLIP up to its last
   block, DINO keys and the CASS attention (spectral distillation, Hungarian matching) on
   batches of crops from several images; the text side is per image and tiny. This is
   the ceiling of a batching pre-labelling path; images/s = crops/s / 8.

Peak GPU memory (``torch.cuda.max_memory_allocated``) is reported for each. Without a GPU
the script prints "no GPU" and exits 0; ``--cpu-check`` runs the same code on the CPU with
the tiny test models (a smoke test of the logic, not a measurement).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

HEIGHT, WIDTH = 336, 500
CLASSES = [
    "aeroplane", "bicycle", "bird", "ship", "bottle", "bus", "car", "cat", "chair", "cow",
    "table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "monitor",
]


def build(device: str, tiny: bool):
    from napari_cass.engine import Segmenter

    if tiny:
        from napari_cass.engine.testing import tiny_models

        return Segmenter.from_models(*tiny_models(), device=device)
    import open_clip
    import timm

    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-16", pretrained=None, quick_gelu=True)
    vfm = timm.create_model("vit_base_patch8_224.dino", pretrained=False, num_classes=0)
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    return Segmenter.from_models(clip, tokenizer, vfm, device=device)


def pictures(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(n)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def per_image(seg, images, classes) -> tuple[float, float]:
    """images/s and peak GiB of ``segment`` one image at a time."""
    for img in pictures(2, seed=1):  # warm-up on other pictures: kernels, text embeddings
        seg.segment(img, classes)
    reset_peak(seg.device)
    sync(seg.device)
    start = time.perf_counter()
    for img in images:
        res = seg.segment(img, classes)
        assert not res.from_cache
    sync(seg.device)
    return len(images) / (time.perf_counter() - start), peak_gib(seg.device)


@torch.inference_mode()
def crops_across_images(seg, images, batch: int) -> tuple[float, float]:
    """images/s and peak GiB of the vision side with ``batch`` crops from several images per pass."""
    from napari_cass.engine._image import as_rgb_float, resize_image, resized_size
    from napari_cass.engine._methods import MethodInputs, patch_features
    from napari_cass.engine._windows import window_coords

    p = seg.preset
    size = resized_size(HEIGHT, WIDTH, p.short_side, p.long_side_max)
    windows = window_coords(*size, p.crop, p.stride)
    # All crops of all images, prepared on the device before timing (decode/resize is the
    # data loader's job and overlaps with the GPU in a real pipeline).
    px = torch.stack([resize_image(as_rgb_float(img), size).to(seg.device) for img in images])
    crops_px = torch.stack([im[:, a:b, c:d] for im in px for (a, b, c, d) in windows])
    crops_in = torch.stack([seg._normalise_clip(c) for c in crops_px])

    def run(start: int) -> None:
        sl = slice(start, start + batch)
        with seg._autocast("clip"):
            tokens = seg._clip.tokens_before_last(crops_in[sl])
        tokens.x = tokens.x.float()
        inputs = MethodInputs(tokens=tokens, omega=seg._omega_for(tokens.grid))
        with seg._autocast("vfm"):
            keys, inputs.vfm_grid = seg._vfm.last_keys(seg._vfm_input(crops_px[sl], crops_in[sl]))
        inputs.vfm_keys = keys.float()
        patch_features(
            "cass", seg._clip, inputs, k_eigen=p.k_eigen, rank=p.rank, lam=p.lam,
            eigenscaling=seg._eigenscaling(), options=seg.options,
        )

    run(0)  # warm-up at this batch size
    reset_peak(seg.device)
    sync(seg.device)
    start = time.perf_counter()
    for s in range(0, len(crops_in), batch):
        run(s)
    sync(seg.device)
    seconds = time.perf_counter() - start
    return len(images) / seconds, peak_gib(seg.device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="images per measurement")
    parser.add_argument("--batches", default="8,32,64", help="crop batch sizes across images")
    parser.add_argument("--classes", type=int, default=20, help="classes per image (VOC names)")
    parser.add_argument("--cpu-check", action="store_true", help="no GPU: run the logic on the CPU, tiny models")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu_check:
        print("no GPU: torch.cuda.is_available() is False; nothing measured (use --cpu-check for a CPU smoke run).")
        return 0
    device = "cuda" if torch.cuda.is_available() and not args.cpu_check else "cpu"
    seg = build(device, tiny=args.cpu_check)
    name = torch.cuda.get_device_name(seg.device) if seg.device.type == "cuda" else "CPU (tiny models: smoke run)"
    print(f"device: {name}, torch {torch.__version__}, models: "
          f"{'tiny random' if args.cpu_check else 'CLIP ViT-B/16 + DINO ViT-B/8, RANDOM weights'}")
    print(f"images: {args.images} x {HEIGHT}x{WIDTH} RGB, {args.classes} classes, crop batch in segment(): {seg.batch_size}")
    images = pictures(args.images)
    classes = (CLASSES * (args.classes // len(CLASSES) + 1))[: args.classes]
    rate, mem = per_image(seg, images, classes)
    print("\n| path | images/s | peak GPU memory (GiB) |\n|---|---|---|")
    print(f"| segment(), one image at a time | {rate:.1f} | {mem:.2f} |")
    for b in (int(x) for x in args.batches.split(",")):
        rate, mem = crops_across_images(seg, images, b)
        print(f"| vision side, {b} crops per pass across images | {rate:.1f} | {mem:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
