"""``napari-cass segment``: images or folders into masks, overlays and one ``classes.json``.

Everything that can be checked without the models is checked first: the class list,
the background words, the output folder (writable, not under a file), every output
name (collision-free), and what the folder already holds (resume, or refuse a mix of
class lists). Only then do the models load. The folder logic is
:mod:`napari_cass.io`'s (``plan_outputs``, ``check_output_folder``, ``start_run``,
``write_image_outputs``), shared with other runners.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from ._common import (
    CLIP_CHOICES,
    IMAGE_SUFFIXES,
    METHOD_CHOICES,
    PRESET_CHOICES,
    VFM_CHOICES,
    CliError,
)
from ._console import Progress, terminate_as_interrupt

__all__ = ["add_segment_parser", "build_segmenter", "run_settings"]

_SEGMENT_EPILOG = """\
examples:
  napari-cass segment photo.jpg --classes "cat, dog, grass" --out results
  napari-cass segment images/ --classes-file classes.txt --background "sky, wall" --out masks
  napari-cass segment scans/ --recursive --classes "cell | nucleus, debris" --out out

Writes <out>/classes.json first (mask value -> name, colour, words; the run's settings;
the source of every output name), then <out>/<name>.png (indexed mask: value k = class k
of classes.json, 0 = background) and <out>/<name>_overlay.png (quick look) per image.
Names keep the images' letters; two images that would share a name get _2, _3...

Run the same command again after an interruption: finished images are skipped. A folder
made with other classes or settings, or results older than their image, are refused
(--overwrite replaces them).
Images above --max-pixels (default 100 megapixels, or $NAPARI_CASS_MAX_PIXELS) are
refused before decoding.
Progress goes to stderr: a bar (images done, the current stage, time left) on a terminal,
a plain line at most every 30 s elsewhere (a log file, a batch job).
"""


def add_segment_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``segment`` on the top-level sub-parsers."""
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
                       help="UTF-8 text file (one class per line, synonyms by commas) or classes.json "
                            "(e.g. one written by an earlier run: it segments the same way)")
    seg.add_argument("--background", help='words for the background class (class 0), e.g. "sky, wall"')
    seg.add_argument("--method", default="cass", choices=METHOD_CHOICES, help="default: cass")
    seg.add_argument("--preset", default="interactive", choices=PRESET_CHOICES, help="default: interactive")
    seg.add_argument("--refine", default=None, choices=("pamr", "none"),
                     help="boundary refinement before the labels: pamr (PAMR, as in the authors' code; "
                          "sharper edges, slower on a CPU) or none (default: the preset's, none)")
    seg.add_argument("--clip", default="ViT-B-16", choices=CLIP_CHOICES, help="default: ViT-B-16")
    seg.add_argument("--vfm", default="dino_vitb8", choices=VFM_CHOICES, help="default: dino_vitb8")
    seg.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    seg.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch")
    seg.add_argument("--max-pixels", default=None, metavar="N",
                     help="refuse images with more pixels (e.g. 250M, 2.5e8; 0 = no limit); default "
                          "$NAPARI_CASS_MAX_PIXELS or 100M")
    seg.add_argument("--random-weights", action="store_true",
                     help="random model weights: for testing the pipeline only, results are meaningless")
    seg.add_argument("--out", required=True, type=Path, help="output folder (created if needed)")
    seg.add_argument("--overwrite", action="store_true",
                     help="redo finished images, and replace results made with other classes")
    seg.add_argument("--recursive", action="store_true", help="also look for images in sub-folders")
    seg.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                     help='spread the images over a Ray cluster (needs "napari-cass[cluster]"): alone, '
                          "Ray's default ($RAY_ADDRESS, a cluster `ray start` made here, else a new "
                          "local one); 'auto' a running cluster; or its address")
    try:
        from ..server._cli import add_remote_arguments
    except ImportError:  # the server package is optional in development trees
        pass
    else:
        add_remote_arguments(seg)  # --server URL, --token-file PATH
    seg.set_defaults(func=_cmd_segment)
    return seg


def build_segmenter(args: argparse.Namespace) -> Any:
    """Build the Segmenter for ``segment`` (tests replace this with tiny random models).

    With ``--server URL`` it is a client of that server (same ``segment`` interface).
    """
    if getattr(args, "server", None) or getattr(args, "token_file", None) is not None:
        from ..server._cli import remote_segmenter_from_args

        return remote_segmenter_from_args(args)
    from ..engine import Segmenter

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
            method=args.method, preset=args.preset, device=args.device, refine=refine_setting(args), **kwargs,
        )


def refine_setting(args: argparse.Namespace) -> str:
    """``--refine``, else the preset's refinement: ``"pamr"`` or ``"none"``."""
    from ..engine import get_preset

    refine = getattr(args, "refine", None)
    return refine if refine is not None else get_preset(args.preset).refine


def refine_kwargs(args: argparse.Namespace) -> dict[str, str]:
    """``{"refine": ...}`` for ``segment`` when ``--refine`` was given (a server is told too)."""
    refine = getattr(args, "refine", None)
    return {} if refine is None else {"refine": refine}


def run_settings(args: argparse.Namespace, segmenter: Any = None) -> dict[str, Any]:
    """What, besides the classes, decides the masks: recorded in and compared with classes.json.

    With ``--server`` the models are the server's, not ``--clip``/``--vfm``/``--random-weights``:
    they are read from the connected client (``segmenter``, a ``RemoteSegmenter``), in the
    same keys as a local run's, so a folder resumes only with the same models whichever
    machine ran them (a server restarted with other weights, or a local folder continued on
    a server with other models, is refused). The server's URL is not compared: the same
    server under another name resumes. ``"refine": "pamr"`` is recorded when boundary
    refinement is on (absent means none, as in folders made before it existed).
    """
    refine = {"refine": "pamr"} if refine_setting(args) == "pamr" else {}
    if getattr(args, "server", None):
        if segmenter is None:
            raise ValueError("run_settings needs the connected server client for --server runs.")
        models = dict(getattr(segmenter, "model_names", {}) or {})
        return {"method": args.method, "preset": args.preset, "clip": models.get("clip"),
                "vfm": models.get("vfm"), "random_weights": models.get("clip_weights") == "random", **refine}
    return {"method": args.method, "preset": args.preset, "clip": args.clip, "vfm": args.vfm,
            "random_weights": bool(args.random_weights), **refine}


def run_description(args: argparse.Namespace, segmenter: Any) -> dict[str, Any]:
    """What ``classes.json`` records about the models that made the masks (after they load)."""
    from .. import __version__

    models = dict(getattr(segmenter, "model_names", {}) or {})
    description = {
        "method": segmenter.method,
        "preset": getattr(segmenter.preset, "name", str(segmenter.preset)),
        "models": models,
        "random_weights": bool(args.random_weights),
        "napari_cass_version": __version__,
    }
    if getattr(args, "server", None):  # --random-weights is ignored there: the server's models say
        description["random_weights"] = models.get("clip_weights") == "random"
        from ..server import url_without_credentials

        description["server"] = url_without_credentials(str(getattr(segmenter, "url", args.server)))
    return description


def _class_prompts(args: argparse.Namespace) -> list[Any]:
    """The classes in engine order, background first if any; every check done here."""
    from ..engine import load_class_file, normalize_classes
    from ..engine import with_background

    if args.classes_file is not None:
        if not args.classes_file.exists():
            raise CliError(f"Class file {args.classes_file} does not exist.")
        prompts = load_class_file(args.classes_file)
    else:
        prompts = normalize_classes(args.classes)
    if args.background is not None and not [w for w in args.background.replace("|", ",").split(",")
                                            if w.strip()]:
        raise CliError('--background is empty; give words such as "sky, wall", or leave it out.')
    try:
        return with_background(prompts, args.background)
    except ValueError as exc:
        raise CliError(str(exc).replace("background words were given too",
                                        "--background was given too")) from None


def _say(message: str) -> None:
    """A message on stderr; control characters in it (a file name's ESC) are escaped."""
    from ..io import printable

    print(f"napari-cass: {printable(message, newlines=True)}", file=sys.stderr)


def _shown(path: object) -> str:
    """A file name as printed: every control character escaped, line breaks too."""
    from ..io import printable

    return printable(path)


def _cmd_segment(args: argparse.Namespace) -> int:
    from ..io import RunClasses, mask_suffix_for, max_pixels_limit, plan_outputs

    # 1. Everything that can be checked without the models, before loading them.
    if args.threads is not None and args.threads < 1:
        raise CliError("--threads must be at least 1.")
    if getattr(args, "ray", None) is not None:
        from ..cluster import require_ray

        require_ray(args)
    try:
        max_pixels = max_pixels_limit(args.max_pixels)
    except ValueError as exc:
        raise CliError(f"--max-pixels: {exc}") from None
    prompts = _class_prompts(args)
    classes = RunClasses.from_prompts(prompts)
    mask_suffix = mask_suffix_for(len(classes.names))
    out: Path = args.out.expanduser()
    plan = plan_outputs(args.inputs, out, recursive=args.recursive, mask_suffix=mask_suffix)
    renamed = [item for item in plan.renamed()  # said once: not again when a run resumes
               if plan.previous_names.get(str(item.source)) != item.name]
    for item in renamed[:10]:
        _say(f"note: {_shown(item.source)} is written as {_shown(item.mask.name)} (another image has its name).")
    if len(renamed) > 10:
        _say(f"note: {len(renamed) - 10} more images renamed; classes.json lists every source.")
    segmenter = None
    if getattr(args, "server", None):  # connect now (cheap, checks URL and token): its models decide resume
        segmenter = build_segmenter(args)
    settings = run_settings(args, segmenter)
    created = not out.exists()
    with terminate_as_interrupt():  # SIGTERM unwinds like Ctrl-C: the lock file goes too
        return _locked_run(args, out, created, plan, classes, prompts, settings, max_pixels, segmenter)


def _locked_run(args, out, created, plan, classes, prompts, settings, max_pixels, segmenter) -> int:
    from ..io import RunLock, check_output_folder, clean_temp_files, write_missing_overlays

    lock = RunLock(out).acquire()
    try:
        removed = clean_temp_files(out)
        if removed:
            _say(f"removed {len(removed)} temporary file(s) left by an interrupted run in {_shown(out)}.")
        decision = check_output_folder(plan, classes, settings, overwrite=args.overwrite)
        if decision.overlays:  # masks kept (they may hold corrections); only their quick looks drawn
            failed = write_missing_overlays(decision, classes, max_pixels)
            _say(f"drew {len(decision.overlays) - len(failed)} missing overlay(s) from their masks in {_shown(out)} "
                 "(the masks are kept as they are).")
            for item, reason in failed:
                _say(f"note: no overlay for {_shown(item.mask.name)}: {reason}")
        todo = decision.todo(plan)
        if not todo:
            print(f"All {len(plan.images)} image(s) are already segmented into {_shown(out)} with these "
                  "classes; nothing to do (--overwrite redoes them).")
            return 0
        if decision.done:
            _say(f"resuming: {len(decision.done)} of {len(plan.images)} image(s) are already done in "
                 f"{_shown(out)}.")
        return _segment_all(args, plan, decision, todo, classes, prompts, settings, max_pixels, segmenter)
    finally:
        lock.release()  # removes the lock file
        if created and not plan.classes_path.exists():  # failed before writing anything
            try:
                out.rmdir()
            except OSError:
                pass


def _segment_all(args, plan, decision, todo, classes, prompts, settings, max_pixels, segmenter=None) -> int:
    from ..io import printable, read_image, start_run, write_image_outputs

    # 2. The models, then the class table before the first mask.
    if args.random_weights and not getattr(args, "server", None):
        _say("warning: --random-weights: models have random weights; the masks are meaningless "
             "(use this only to test the pipeline).")
    if getattr(args, "ray", None) is not None:  # the same run, its images spread over a Ray cluster
        from ..cluster import segment_on_ray

        return segment_on_ray(args, plan, decision, todo, classes, prompts, settings, max_pixels)
    if segmenter is None:
        segmenter = build_segmenter(args)
    start_run(plan, classes, settings, decision, extra=run_description(args, segmenter))

    failures: list[tuple[Path, str]] = []
    written = 0
    progress = Progress(len(todo), "Images")
    try:
        for item in todo:
            progress.start_item(item.source.name)
            try:
                image = read_image(item.source, max_pixels=max_pixels or 0)
                result = segmenter.segment(image, prompts, progress=progress.stage, **refine_kwargs(args))
            except Exception as exc:  # a bad image must not stop the run
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                failures.append((item.source, reason))
                progress.write(f"napari-cass: skipped {_shown(item.source)}: {reason}")
                progress.advance()
                continue
            write_image_outputs(item, image, result, classes)
            written += 1
            progress.advance()
    except KeyboardInterrupt:
        progress.close()
        done = len(decision.done) + written
        _say(f"interrupted: {done} of {len(plan.images)} image(s) are done in {_shown(plan.out_dir)}; "
             "run the same command again to finish the others.")
        raise
    progress.close()
    print(f"Segmented {written} of {len(todo)} image(s) into {_shown(plan.out_dir)}"
          + (f"; {len(decision.done)} more were already done." if decision.done else "."))
    if failures:
        _say(f"{len(failures)} image(s) failed:")
        for path, reason in failures:
            print(f"  {_shown(path)}: {printable(reason, newlines=True)}", file=sys.stderr)
        return 1
    return 0
