"""Per-stage timings of one segmentation, the prompt-change speed-up, and the overhead over the encoders.

Usage::

    python benchmarks/bench_segment.py [--device auto] [--tiny] [--repeats 2] [--precision auto|fp32|bf16|compare]

Models are full-size CLIP ViT-B/16 + DINO ViT-B/8 with RANDOM weights (the
timings do not depend on the weights; the masks are meaningless). The image is
scikit-image's coffee (400 x 600), resized to 336 x 504: 8 sliding-window crops.
All figures come from one process, so compare ratios rather than seconds across
machines. ``--precision compare`` runs the cold run twice in the same process: all float32
(before) and with the per-encoder precision probe (after; bfloat16 only for an encoder that
the probe measures faster on this CPU, see napari_cass/engine/_precision.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

CLASSES = ["cup", "coffee", "saucer", "spoon", "table"]
EXTRA = "plate"


def build(args):
    from napari_cass.engine import Segmenter

    if args.tiny:
        from napari_cass.engine.testing import tiny_models

        return Segmenter.from_models(
            *tiny_models(), device=args.device, threads=args.threads, batch_size=args.batch_size
        )
    import open_clip
    import timm

    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-16", pretrained=None, quick_gelu=True)
    vfm = timm.create_model("vit_base_patch8_224.dino", pretrained=False, num_classes=0)
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    return Segmenter.from_models(
        clip, tokenizer, vfm, device=args.device, threads=args.threads, batch_size=args.batch_size
    )


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def encoders_only(seg, image) -> float:
    """Plain forward passes of the encoders on the same inputs: 8 CLIP crops, 8 DINO crops,
    and CLIP on the whole resized image. The lower bound any implementation pays."""
    from napari_cass.engine._image import as_rgb_float, resize_image, resized_size
    from napari_cass.engine._windows import window_coords

    p = seg.preset
    rgb = as_rgb_float(image)
    size = resized_size(*rgb.shape[:2], p.short_side, p.long_side_max)
    px = resize_image(rgb, size).to(seg.device)
    x = seg._normalise_clip(px)
    crops = torch.stack([x[:, a:b, c:d] for a, b, c, d in window_coords(*size, p.crop, p.stride)])
    sync(seg.device)
    start = time.perf_counter()
    for i in range(0, len(crops), seg.batch_size):
        with seg._autocast("clip"):
            seg.clip_model.visual(crops[i : i + seg.batch_size])
        if seg.vfm_model is not None:
            with seg._autocast("vfm"):
                seg.vfm_model.forward_features(crops[i : i + seg.batch_size])
    with seg._autocast("clip"):
        tokens = seg._clip.tokens_before_last(x[None])  # whole image (its size differs from 224)
        seg._clip.cls_embedding(tokens)
    sync(seg.device)
    return time.perf_counter() - start


def text_speedup(seg) -> tuple[float, float]:
    """Seconds to embed the 5 classes (400 prompts) with all 77 positions vs cut to the longest prompt."""
    from napari_cass.engine._presence import TEMPLATES

    prompts = [t(c) for c in CLASSES for t in TEMPLATES]
    tokens = seg.tokenizer(prompts).to(seg.device)
    from napari_cass.engine._backbones import encode_text_truncated

    with torch.inference_mode():
        sync(seg.device)
        t0 = time.perf_counter()
        full = seg.clip_model.encode_text(tokens)
        sync(seg.device)
        t1 = time.perf_counter()
        cut = encode_text_truncated(seg.clip_model, tokens)
        sync(seg.device)
        t2 = time.perf_counter()
    diff = (torch.nn.functional.normalize(full.float(), dim=-1) - torch.nn.functional.normalize(cut.float(), dim=-1)).abs().max()
    print(f"text: 400 prompts, 77 positions {t1 - t0:.2f} s, truncated {t2 - t1:.2f} s, max diff {diff:.1e}")
    return t1 - t0, t2 - t1


def measure(seg, image, repeats: int) -> None:
    """Cold runs, prompt changes and encoder-only passes; prints the tables."""
    colds, warms, encs, stages = [], [], [], []
    for _ in range(repeats):
        seg.clear_cache()
        cold = seg.segment(image, CLASSES)
        warm = seg.segment(image, CLASSES + [EXTRA])  # prompt edit: one class added
        assert warm.from_cache
        colds.append(cold.timings["total"])
        warms.append(warm.timings["total"])
        stages.append(cold.timings)
        encs.append(encoders_only(seg, image))
    cold_t, warm_t, enc_t = (statistics.median(v) for v in (colds, warms, encs))
    print("\n| stage (cold run) | seconds |\n|---|---|")
    for key in ("resize", "image_embedding", "clip_encoder", "vfm_encoder", "attention", "text", "similarity", "merge", "total"):
        vals = [s.get(key, 0.0) for s in stages]
        print(f"| {key} | {statistics.median(vals):.3f} |")
    print("\n| measure | value |\n|---|---|")
    print(f"| cold run (new image, 5 classes) | {cold_t:.2f} s |")
    print(f"| prompt change (same image, +1 class) | {warm_t:.3f} s |")
    print(f"| prompt change / cold | {warm_t / cold_t:.1%} |")
    print(f"| encoder forward passes alone | {enc_t:.2f} s |")
    print(f"| cold total / encoders alone | {cold_t / enc_t:.2f} |")
    print(f"| cold total without text / encoders alone | {(cold_t - statistics.median([s['text'] for s in stages])) / enc_t:.2f} |")
    return cold_t


def _print_choices(choices, setting: str) -> None:
    for key, choice in choices.items():
        if key[-1] == setting:
            print(f"- {key[0]} encoder: {choice.dtype or 'float32'} ({choice.reason})")


def compare_precision(seg, image, repeats: int) -> None:
    """Cold runs all-float32 (before) and per-encoder precision (after), interleaved so that
    both see the same machine load; the best of ``repeats`` each."""
    from napari_cass.engine._precision import PRECISION_ENV, precision_choices

    for setting in ("fp32", "auto"):
        os.environ[PRECISION_ENV] = setting
        seg.clear_cache()  # or the second warm-up is served from the cache and probes nothing
        start = time.perf_counter()
        seg.segment(image[:64, :64], ["warm up"])  # kernels, and the one-time precision probe
        print(f"\nwarm-up with {PRECISION_ENV}={setting} (incl. any probe): {time.perf_counter() - start:.1f} s")
        _print_choices(precision_choices(), setting)
    runs: dict[str, list[dict]] = {"fp32": [], "auto": []}
    for _ in range(repeats):
        for setting in runs:
            os.environ[PRECISION_ENV] = setting
            seg.clear_cache()
            runs[setting].append(seg.segment(image, CLASSES).timings)
    # best of the repeats per stage: the other processes' load moves single stages a lot
    best = {k: {st: min(t.get(st, 0.0) for t in v) for st in v[0]} for k, v in runs.items()}
    enc = ("image_embedding", "clip_encoder", "vfm_encoder")
    print(f"\n| stage, best of {repeats} cold runs (s) | all float32 (before) | per-encoder precision (after) |")
    print("|---|---|---|")
    for key in enc + ("attention", "text"):
        print(f"| {key} | {best['fp32'].get(key, 0.0):.2f} | {best['auto'].get(key, 0.0):.2f} |")
    before, after = (sum(best[k].get(st, 0.0) for st in enc) for k in ("fp32", "auto"))
    print(f"| encoder stages (what precision changes) | {before:.2f} | {after:.2f} ({before / after:.2f}x) |")
    print(f"| cold run total | {best['fp32']['total']:.2f} | {best['auto']['total']:.2f} "
          f"({best['fp32']['total'] / best['auto']['total']:.2f}x) |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tiny", action="store_true", help="tiny random models (smoke test)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None, help="crops per forward pass (engine default if unset)")
    parser.add_argument(
        "--precision", default="auto", choices=("auto", "fp32", "bf16", "compare"),
        help="CPU encoder precision (NAPARI_CASS_PRECISION); compare: fp32 then auto, same process",
    )
    parser.add_argument("--skip-text", action="store_true", help="skip the 77- vs cut-token text timing")
    args = parser.parse_args(argv)
    from skimage.data import coffee

    from napari_cass.engine._precision import PRECISION_ENV, precision_choices

    image = coffee()
    seg = build(args)
    print(f"device: {seg.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, crops per pass {seg.batch_size}")
    if args.precision != "compare":
        os.environ[PRECISION_ENV] = args.precision
        seg.segment(image[:64, :64], ["warm up"])  # first-call overheads (allocators, kernels, precision probe)
        _print_choices(precision_choices(), args.precision)
        measure(seg, image, args.repeats)
    else:
        compare_precision(seg, image, args.repeats)
    if not args.skip_text:
        text_speedup(seg)


if __name__ == "__main__":
    main()
