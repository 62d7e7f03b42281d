"""``napari-cass eval``: benchmark a method on a labelled dataset, beside the paper.

Module-level imports stay light (no torch): ``napari-cass --help`` builds this
parser, and the engine is imported only when a run starts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..cli._console import terminate_as_interrupt
from ._paper import ABLATIONS

__all__ = ["add_eval_parser", "run_eval", "main", "DATASET_NAMES"]

# Kept in sync with _datasets.DATASETS (a test checks it) without importing torch here.
DATASET_NAMES = (
    "voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff", "ade20k",
    "cityscapes", "folder",
)
PAPER_DATASETS = (
    "voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k",
)
CLIP_CHOICES = ("ViT-B-16", "ViT-B-32", "ViT-L-14")
VFM_CHOICES = ("dino_vitb8", "dino_vits8", "dino_vitb16")

_EPILOG = """\
examples:
  napari-cass eval --dataset voc21 --root data/VOCdevkit
  napari-cass eval --dataset paper --root data            # all eight benchmarks of Table 1
  napari-cass eval --dataset context59 --root data --ablation no-ota,no-ops
  napari-cass eval --dataset folder --root my_export --method sclip --limit 20

Re-running the same command resumes: finished images are read from the cache in
the run folder under --out, unless their mask or image changed since (then they
are scored again); changed classes or words start a new run folder. Table 3 rows: vanilla = no-vfm,no-ops,no-ota;
+VFM sequential = no-matching,no-low-rank,no-eigenscaling,no-ops,no-ota; ...;
+OPS = no-ota; full CASS = no --ablation.
"""


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``eval`` subcommand (``func=run_eval``) and return its parser."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate on a benchmark or a labelled folder (mIoU, pAcc, beside the paper)",
        description=(
            "Evaluate open-vocabulary segmentation on a labelled dataset and compare with "
            "the CASS paper. Writes results.json, results.md, a per-class IoU chart and "
            "overlays of the worst images into a run folder under --out."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dataset", required=True,
        help=f"one of {', '.join(DATASET_NAMES)}; several separated by commas; "
             "or 'paper' for the eight benchmarks of Table 1",
    )
    p.add_argument("--root", required=True, type=Path,
                   help="the dataset folder, or a folder above it in mmsegmentation's layout, "
                        "up to its data/ folder (e.g. data/ or data/VOCdevkit); for --dataset "
                        "folder, the exported folder itself")
    p.add_argument("--split", default=None, help="split to use (default: the benchmark's val split)")
    p.add_argument("--method", default="cass", help="cass (default), clip, maskclip, sclip, "
                   "clearclip, naclip or proxyclip")
    p.add_argument("--preset", default=None,
                   help="preset name (default: the dataset's own; 'interactive' for folders)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument(
        "--ablation", default="",
        help=f"comma-separated switches for Table 3: {', '.join(ABLATIONS)}",
    )
    p.add_argument("--refine", default=None, choices=("pamr", "none"),
                   help="boundary refinement before the labels: pamr (PAMR, as in the authors' code) "
                        "or none (default: the preset's, none); a refined run gets its own run folder")
    p.add_argument("--clip", default="ViT-B-16", choices=CLIP_CHOICES, help="CLIP backbone")
    p.add_argument("--vfm", default="dino_vitb8", choices=VFM_CHOICES, help="vision foundation model")
    p.add_argument("--device", default="auto", help="auto (default), cuda, mps or cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--out", type=Path, default=Path("napari-cass-eval"),
                   help="folder for run folders (default: ./napari-cass-eval)")
    p.add_argument("--worst", type=int, default=5,
                   help="draw image | prediction | ground truth for the N worst images (default 5)")
    p.add_argument("--random-weights", action="store_true",
                   help="random model weights: tests the pipeline only, numbers are meaningless")
    p.add_argument("--no-resume", action="store_true",
                   help="ignore cached per-image results of this run and start over")
    p.add_argument("--skip-bad", action="store_true",
                   help="evaluate without the images whose mask is unreadable, of another size "
                        "than its image, or holds values that are no class (default: stop and "
                        "list them before loading any model)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.set_defaults(func=run_eval)
    return p


def _parse_datasets(text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if names == ["paper"] or names == ["all"]:
        return list(PAPER_DATASETS)
    bad = [n for n in names if n not in DATASET_NAMES]
    if not names or bad:
        raise ValueError(
            f"Unknown dataset {', '.join(bad) or repr(text)}: choose from "
            f"{', '.join(DATASET_NAMES)}, or 'paper'."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"--dataset lists a dataset twice: {text!r}.")
    return names


def _parse_ablations(text: str, method: str) -> tuple[str, ...]:
    items = tuple(sorted({a.strip().lower() for a in (text or "").split(",") if a.strip()}))
    bad = [a for a in items if a not in ABLATIONS]
    if bad:
        raise ValueError(
            f"Unknown --ablation {', '.join(bad)}: choose from {', '.join(ABLATIONS)}."
        )
    if items and method != "cass":
        raise ValueError(f"--ablation switches apply to --method cass only (got {method!r}).")
    return items


def _build_segmenter(args: argparse.Namespace) -> Any:
    """Load the models for one run (tests replace this with tiny random models).

    Reads ``args.clip``, ``args.vfm``, ``args.random_weights``, ``args.device``,
    ``args.method``, ``args.run_preset`` and ``args.run_options`` (the Segmenter
    keyword arguments of the ablation switches).
    """
    from ..engine import Segmenter

    return Segmenter.from_pretrained(
        clip=args.clip,
        clip_weights="random" if args.random_weights else "openai",
        vfm=args.vfm,
        vfm_weights="random" if args.random_weights else "pretrained",
        method=args.method,
        preset=args.run_preset,
        device=args.device,
        cache_size=1,  # every image is new: keep no vision features around
        **args.run_options,
    )


@terminate_as_interrupt()  # SIGTERM unwinds like Ctrl-C: results cached, the lock file removed
def run_eval(args: argparse.Namespace) -> int:
    """Run ``eval``; returns the exit code. Bad input raises ValueError/FileNotFoundError."""
    import napari_cass
    from ..io import RunLock, printable
    from ._outputs import check_run_folder
    from ..engine import METHODS, get_preset, resolve_device
    from ._datasets import get_dataset
    from ._prescan import format_bad, scan_dataset
    from ._runner import RunSpec, evaluate, finish_run, summarize
    from ._report import write_text

    if args.method not in METHODS:
        raise ValueError(f"Unknown --method {args.method!r}: choose one of {', '.join(METHODS)}.")
    names = _parse_datasets(args.dataset)
    ablations = _parse_ablations(args.ablation, args.method)
    if args.preset is not None:
        get_preset(args.preset)  # fails early with the list of presets
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}.")
    if args.worst < 0:
        raise ValueError(f"--worst must be 0 or more, got {args.worst}.")
    resolve_device(args.device)  # a missing GPU is reported before any work
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}.")
        torch.set_num_threads(args.threads)
    if args.random_weights:
        print("warning: --random-weights: the numbers below are meaningless (pipeline test only).",
              file=sys.stderr)

    # Open and check every dataset first: a missing one or a bad mask fails before any
    # model is loaded, all bad masks of all datasets listed together.
    datasets = [get_dataset(n, args.root, split=args.split) for n in names]
    scans = [scan_dataset(ds, args.limit) for ds in datasets]
    skip_bad = bool(getattr(args, "skip_bad", False))
    if any(scan.bad for scan in scans) and not skip_bad:
        raise ValueError(format_bad(scans))
    results: list[dict[str, Any]] = []
    try:
        for ds, scan in zip(datasets, scans):
            preset = args.preset or ds.preset_name
            spec = RunSpec(
                dataset=ds.name, root=str(ds.root.resolve()), split=ds.split, preset=preset,
                method=args.method, clip=args.clip, vfm=args.vfm,
                random_weights=bool(args.random_weights), ablations=ablations,
                engine_version=napari_cass.__version__,
                # only a refinement other than the preset's changes the signature (old runs resume)
                extra_options=({"refine": args.refine} if getattr(args, "refine", None) not in
                               (None, get_preset(preset).refine) else {}),
            )
            run_args = argparse.Namespace(**vars(args))
            run_args.run_preset = preset
            run_args.run_options = spec.options
            run_dir = Path(args.out) / spec.for_dataset(ds).run_name
            check_run_folder(args.out, run_dir)  # no link followed, before the lock creates the folder
            with RunLock(run_dir):  # one run at a time in a run folder; the lock file goes at the end
                run = evaluate(
                    ds, lambda: _build_segmenter(run_args), spec, args.out,
                    limit=args.limit, resume=not args.no_resume, progress=not args.no_progress,
                    scan=scan, skip_bad=skip_bad,
                )
                results.append(finish_run(run, ds, worst=args.worst))
            if not args.json:
                _print_run(results[-1], run.num_new, run.num_cached)
            if run.skipped:
                print(f"warning: {len(run.skipped)} image(s) skipped (--skip-bad); they are listed "
                      f"in {printable(run.run_dir / 'results.json')}.", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted: finished images are cached; run the same command again to resume.",
              file=sys.stderr)
        return 130
    if len(results) > 1:
        args.out.mkdir(parents=True, exist_ok=True)
        table = summarize(results)
        write_text(args.out / "summary.md", "# napari-cass evaluation summary\n\n" + table)
        if not args.json:
            print("\n" + printable(table, newlines=True))
    if args.json:
        slim = [{k: v for k, v in r.items() if k not in ("accumulator", "signature")} for r in results]
        print(json.dumps(slim if len(slim) > 1 else slim[0], indent=2))
    return 0


def _print_run(result: dict[str, Any], new: int, cached: int) -> None:
    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1f}"

    paper = result["paper"]
    lines = [
        f"{result['dataset_title']} ({result['dataset']}), method {result['method']}, "
        f"preset {result['preset']}: {result['num_images']}/{result['num_images_total']} images "
        f"({new} new, {cached} cached"
        + (f", {result['num_images_recomputed']} of the new re-scored because their mask or "
           "image changed" if result.get("num_images_recomputed") else "")
        + (f", {result['num_images_skipped']} skipped" if result.get("num_images_skipped") else "")
        + ")",
        f"  mIoU {fmt(result['miou'])}   paper {fmt(paper['miou'])} ({paper['source']})",
        f"  pAcc {fmt(result['pacc'])}   paper not listed",
        f"  {result['seconds_per_image']:.2f} s/image on {result['device']}"
        if result["seconds_per_image"] is not None else "  timing: n/a",
        f"  results: {result['run_dir']}/results.md",
    ]
    if result["models"]["random_weights"]:
        lines.append("  RANDOM WEIGHTS: meaningless numbers")
    from ..io import printable

    print(printable("\n".join(lines), newlines=True))  # names from a dataset folder are user text


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m napari_cass.evaluation``)."""
    parser = argparse.ArgumentParser(prog="python -m napari_cass.evaluation")
    sub = parser.add_subparsers(dest="command", required=True)
    add_eval_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "eval":
        argv = ["eval", *argv]
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        from ..io import printable

        print(f"error: {printable(err, newlines=True)}", file=sys.stderr)
        return 2
