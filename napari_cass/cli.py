"""``napari-cass`` command line: batch segmentation, weights management, evaluation.

Module-level imports stay light (no torch, no napari) so that ``napari-cass --help``
and ``--version`` answer at once; the engine is imported when a command runs.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__

__all__ = ["main", "build_parser", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# Mirrors of the engine's names (a test keeps them in sync) so building the parser
# does not import torch.
METHOD_CHOICES = ("cass", "clip", "maskclip", "sclip", "clearclip", "naclip", "proxyclip")
PRESET_CHOICES = (
    "interactive", "voc20", "voc21", "context59", "context60", "coco_object", "coco_stuff",
    "ade20k", "cityscapes",
)
CLIP_CHOICES = ("ViT-B-16", "ViT-B-32", "ViT-L-14")
VFM_CHOICES = ("dino_vitb8", "dino_vits8", "dino_vitb16")
DEFAULT_DOWNLOADS = ("ViT-B-16", "dino_vitb8")

_SEGMENT_EPILOG = """\
examples:
  napari-cass segment photo.jpg --classes "cat, dog, grass" --out results
  napari-cass segment images/ --classes-file classes.txt --background "sky, wall" --out masks
  napari-cass segment scans/ --recursive --classes "cell | nucleus, debris" --out out --overwrite

Writes <out>/<stem>.png (indexed mask: value k = class k of classes.json, 0 = background),
<out>/<stem>_overlay.png (quick look) and <out>/classes.json (index -> name, colour, synonyms).
"""


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The full ``napari-cass`` parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="napari-cass",
        description="Open-vocabulary semantic segmentation with CASS: name the classes, get label masks.",
    )
    parser.add_argument("--version", action="version", version=f"napari-cass {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    seg = sub.add_parser(
        "segment", help="segment images or folders of images into the classes you name",
        description="Segment images into named classes and write label masks.",
        epilog=_SEGMENT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    seg.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR",
                     help=f"image files or folders ({', '.join(IMAGE_SUFFIXES)})")
    group = seg.add_mutually_exclusive_group(required=True)
    group.add_argument("--classes", help='class names, e.g. "cat, dog, grass"; "|" separates synonyms')
    group.add_argument("--classes-file", type=Path,
                       help="text file (one class per line, synonyms by commas) or classes.json")
    seg.add_argument("--background", help='words for the background class (class 0), e.g. "sky, wall"')
    seg.add_argument("--method", default="cass", choices=METHOD_CHOICES, help="default: cass")
    seg.add_argument("--preset", default="interactive", choices=PRESET_CHOICES, help="default: interactive")
    seg.add_argument("--clip", default="ViT-B-16", choices=CLIP_CHOICES, help="default: ViT-B-16")
    seg.add_argument("--vfm", default="dino_vitb8", choices=VFM_CHOICES, help="default: dino_vitb8")
    seg.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    seg.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch")
    seg.add_argument("--random-weights", action="store_true",
                     help="random model weights: for testing the pipeline only, results are meaningless")
    seg.add_argument("--out", required=True, type=Path, help="output folder (created if needed)")
    seg.add_argument("--overwrite", action="store_true", help="replace existing output files")
    seg.add_argument("--recursive", action="store_true", help="also look for images in sub-folders")
    seg.set_defaults(func=_cmd_segment)

    weights = sub.add_parser("weights", help="list, import or download model weights",
                             description="Manage the model weights napari-cass uses.")
    wsub = weights.add_subparsers(dest="weights_command", metavar="ACTION")
    wlist = wsub.add_parser("list", help="show which weights are present and where they are looked for")
    wlist.set_defaults(func=_cmd_weights_list)
    wimport = wsub.add_parser(
        "import", help="check a weights file and copy it into the cache (for offline machines)")
    wimport.add_argument("path", type=Path, metavar="PATH", help=".safetensors, .bin, .pt or .pth file")
    wimport.add_argument("--model", required=True,
                         help=f"model the file belongs to: {', '.join(CLIP_CHOICES + VFM_CHOICES)}")
    wimport.add_argument("--overwrite", action="store_true", help="replace weights already in the cache")
    wimport.set_defaults(func=_cmd_weights_import)
    wdown = wsub.add_parser("download", help="download weights into the cache now")
    wdown.add_argument("--model", action="append", default=None,
                       help=f"model to download (repeatable; default: {', '.join(DEFAULT_DOWNLOADS)}; "
                            "'all' for every model)")
    wdown.add_argument("--overwrite", action="store_true", help="download again even if present")
    wdown.set_defaults(func=_cmd_weights_download)
    weights.set_defaults(func=lambda args: _help_of(weights))

    try:
        from .evaluation._cli import add_eval_parser
    except ImportError as exc:  # during development the evaluation package may be missing
        reason = str(exc)
        ev = sub.add_parser("eval", help="evaluate on a benchmark (unavailable in this installation)")
        ev.set_defaults(func=lambda args: _raise(CliError(f"The eval command is unavailable: {reason}")))
    else:
        add_eval_parser(sub)
    return parser


def _help_of(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _raise(exc: Exception) -> int:
    raise exc


# --------------------------------------------------------------------------- segment
def _gather_images(inputs: Sequence[str], recursive: bool, out: Path) -> list[tuple[Path, str]]:
    """Image files with their output stems; folders are scanned (sorted), outputs excluded."""
    from .io import safe_filename

    out_resolved = out.resolve()
    found: list[tuple[Path, str]] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(
                p for p in path.glob(pattern)
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                and out_resolved not in p.resolve().parents
            )
            if not files:
                hint = "" if recursive else " (use --recursive to search sub-folders)"
                raise CliError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}{hint}.")
            for f in files:
                rel = f.relative_to(path).with_suffix("")
                found.append((f, safe_filename("__".join(rel.parts))))
        elif path.is_file():
            found.append((path, safe_filename(path.stem)))
        else:
            raise CliError(f"Input {path} does not exist; give image files or folders.")
    by_stem: dict[str, Path] = {}
    for f, stem in found:
        if stem in by_stem and by_stem[stem] != f:
            raise CliError(
                f"{by_stem[stem]} and {f} would both be written as {stem}.png; "
                "rename one of them or segment them into different --out folders."
            )
        by_stem[stem] = f
    unique: dict[Path, str] = {}
    for f, stem in found:
        unique.setdefault(f, stem)
    return list(unique.items())


def _read_image(path: Path) -> Any:
    """Read an image file as an array (tifffile for TIFF, imageio for the rest)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    import imageio.v3 as iio

    return iio.imread(path)


def _parse_background(text: str | None) -> list[str] | None:
    if text is None:
        return None
    words = [w.strip() for w in text.replace("|", ",").split(",") if w.strip()]
    if not words:
        raise CliError('--background is empty; give words such as "sky, wall", or leave it out.')
    return words


def _build_segmenter(args: argparse.Namespace) -> Any:
    """Build the Segmenter for ``segment`` (tests replace this with tiny random models)."""
    from .engine import Segmenter

    random = bool(args.random_weights)
    kwargs: dict[str, Any] = {}
    if args.threads:
        kwargs["threads"] = args.threads
    with warnings.catch_warnings():
        if random:  # the CLI already printed its own warning
            warnings.filterwarnings("ignore", message=".*random weights.*", category=UserWarning)
        return Segmenter.from_pretrained(
            clip=args.clip, clip_weights="random" if random else "openai",
            vfm=args.vfm, vfm_weights="random" if random else "pretrained",
            method=args.method, preset=args.preset, device=args.device, **kwargs,
        )


def _cmd_segment(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .engine import ClassPrompt, load_class_file, normalize_classes
    from .io import (atomic_write, check_targets, label_palette, overlay_labels, write_classes_json,
                     write_indexed_png, write_label_tiff)

    if args.threads is not None and args.threads < 1:
        raise CliError("--threads must be at least 1.")
    # 1. Everything that can be checked without the model, before loading it.
    if args.classes_file is not None:
        if not args.classes_file.is_file():
            raise CliError(f"Class file {args.classes_file} does not exist.")
        prompts = load_class_file(args.classes_file)
    else:
        prompts = normalize_classes(args.classes)
    background = _parse_background(args.background)
    if background:
        prompts = [ClassPrompt.from_words(background, name="background"), *prompts]
        normalize_classes(prompts)  # a background word reused as a class is an error
    n_values = len(prompts) + (0 if background else 1)  # + value 0 when no background class
    mask_suffix = ".png" if n_values <= 256 else ".tif"
    out: Path = args.out.expanduser()
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file; give a folder.")
    images = _gather_images(args.inputs, args.recursive, out)
    classes_path = out / "classes.json"
    targets = [classes_path]
    for _, stem in images:
        targets += [out / f"{stem}{mask_suffix}", out / f"{stem}_overlay.png"]
    check_targets(targets, overwrite=args.overwrite)

    # 2. The model.
    if args.random_weights:
        print("napari-cass: warning: --random-weights: models have random weights; the masks are "
              "meaningless (use this only to test the pipeline).", file=sys.stderr)
    segmenter = _build_segmenter(args)
    out.mkdir(parents=True, exist_ok=True)

    failures: list[tuple[Path, str]] = []
    written_classes = None
    has_background = False
    colours = None
    bar = tqdm(images, desc="Images", unit="img", file=sys.stderr, disable=None)
    crop_bar: Any = None

    def on_progress(done: int, total: int, message: str) -> None:
        nonlocal crop_bar
        if bar.disable:
            return
        if crop_bar is None:
            crop_bar = tqdm(total=total, desc="Crops", position=1, leave=False, file=sys.stderr)
        crop_bar.total = total
        crop_bar.n = done
        crop_bar.set_postfix_str(message, refresh=True)

    for path, stem in bar:
        bar.set_postfix_str(path.name)
        try:
            image = _read_image(path)
            result = segmenter.segment(image, prompts, progress=on_progress)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a bad image must not stop the run
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            failures.append((path, reason))
            tqdm.write(f"napari-cass: skipped {path}: {reason}", file=sys.stderr)
            continue
        finally:
            if crop_bar is not None:
                crop_bar.close()
                crop_bar = None
        if written_classes is None:
            written_classes = list(result.classes)
            has_background = bool(result.has_background)
            mask_classes = result.mask_classes
            names = [c.name for c in mask_classes]
            synonyms = [list(c.queries) for c in mask_classes]
            colours = label_palette(len(names))
        labels = result.mask()
        mask_path = out / f"{stem}{mask_suffix}"
        if mask_suffix == ".png":
            write_indexed_png(mask_path, labels, colours, overwrite=args.overwrite)
        else:
            write_label_tiff(mask_path, labels, overwrite=args.overwrite)
        from PIL import Image

        quick_look = overlay_labels(image, labels, colours, alpha=0.5, skip_zero=True)
        with atomic_write(out / f"{stem}_overlay.png", overwrite=args.overwrite) as tmp:
            Image.fromarray(quick_look).save(tmp, format="PNG")
    bar.close()

    if written_classes is not None:
        extra = {
            "method": segmenter.method,
            "preset": getattr(segmenter.preset, "name", str(segmenter.preset)),
            "models": dict(getattr(segmenter, "model_names", {}) or {}),
            "random_weights": bool(args.random_weights),
            "has_background": has_background,
            "napari_cass_version": __version__,
        }
        write_classes_json(classes_path, names, colours, synonyms, overwrite=args.overwrite, extra=extra)
    done = len(images) - len(failures)
    print(f"Segmented {done} of {len(images)} image(s) into {out}.")
    if failures:
        print(f"napari-cass: {len(failures)} image(s) failed:", file=sys.stderr)
        for path, reason in failures:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- weights
def _cmd_weights_list(args: argparse.Namespace) -> int:
    from .engine._weights import cache_dir, weights_status

    rows = weights_status()
    print(f"Cache folder: {cache_dir()}")
    header = ("MODEL", "KIND", "STATUS", "PATH / EXPECTED FILE", "HUB")
    table = [header]
    for row in rows:
        where = row["path"] if row["present"] else row["expected"][0]
        table.append((row["model"], row["kind"], "present" if row["present"] else "missing",
                      where, row["hub"]))
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    searched = list(dict.fromkeys(place for row in rows for place in row["searched"]))
    print("Searched: " + "; ".join(searched))
    missing = [r["model"] for r in rows if not r["present"]]
    if missing:
        print("Get missing weights with 'napari-cass weights download --model NAME', or on an "
              "offline machine 'napari-cass weights import PATH --model NAME'.")
    return 0


def _cmd_weights_import(args: argparse.Namespace) -> int:
    from .engine._weights import import_weights

    target = import_weights(args.path, args.model, overwrite=args.overwrite)
    print(f"Imported {args.path} as {args.model}: {target}")
    return 0


def _cmd_weights_download(args: argparse.Namespace) -> int:
    from .engine._weights import CLIP_MODELS, VFM_MODELS, download_weights, find_model

    names = list(args.model or DEFAULT_DOWNLOADS)
    if "all" in names:
        names = [*CLIP_MODELS, *VFM_MODELS]
    for name in names:
        find_model(name)  # fail on a typo before any download starts
    for name in names:
        path = download_weights(name, overwrite=args.overwrite)
        print(f"{name}: {path}")
    return 0


# --------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 some images failed, 2 error)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    argv = [a for a in argv if a != "--debug"]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("napari-cass: interrupted.", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        message = str(exc) or type(exc).__name__
        if isinstance(exc, (KeyError,)) and exc.args:
            message = str(exc.args[0])
        print(f"napari-cass: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
