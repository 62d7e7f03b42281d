"""``napari-cass convert``: napari-cass folders to Label Studio tasks, and Label Studio exports back."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_convert_parser"]

_EPILOG = """\
examples:
  napari-cass convert to-label-studio masks/ --out tasks.json
  napari-cass convert to-label-studio dataset/ --out tasks.json --document-root /data --image-prefix "/data/local-files/?d="
  napari-cass convert from-label-studio export.json --images photos/ --out dataset/
  napari-cass convert from-label-studio export.json --out dataset/ --label-studio http://127.0.0.1:8080 \\
      --token-file ls-token --label-config config.xml

to-label-studio reads a dataset folder (images/, masks/, classes.json) or a 'napari-cass
segment' output folder, and writes Label Studio tasks with predictions (import them in the
project's Data Manager) plus <out>.xml, the labeling config for those classes.
from-label-studio reads a JSON export (BrushLabels) and writes a dataset folder.
"""


def add_convert_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``convert`` on the top-level sub-parsers."""
    conv = sub.add_parser("convert", help="convert between napari-cass folders and Label Studio JSON",
                          description="Move masks between napari-cass folders and Label Studio.",
                          epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = conv.add_subparsers(dest="conversion", metavar="CONVERSION", required=True)
    to = kinds.add_parser("to-label-studio", help="folder -> Label Studio tasks with predictions (JSON)")
    to.add_argument("folder", type=Path, help="dataset folder or 'napari-cass segment' output folder")
    to.add_argument("--out", type=Path, required=True, help="tasks JSON to write (the config goes to <out>.xml)")
    to.add_argument("--image-prefix", default="/data/local-files/?d=",
                    help="prepended to each image's path relative to --document-root "
                         "(default: Label Studio local storage, /data/local-files/?d=)")
    to.add_argument("--document-root", type=Path, default=None,
                    help="folder the image paths are relative to: Label Studio's LOCAL_FILES_DOCUMENT_ROOT "
                         "(default: FOLDER)")
    to.add_argument("--overwrite", action="store_true", help="replace existing output files")
    to.set_defaults(func=_cmd_to)
    back = kinds.add_parser("from-label-studio", help="Label Studio JSON export -> dataset folder")
    back.add_argument("export", type=Path, help="JSON export of a Label Studio project (BrushLabels)")
    back.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    back.add_argument("--images", type=Path, default=None, help="folder holding the tasks' images (by file name)")
    back.add_argument("--label-studio", metavar="URL", default=None, help="fetch the images from this Label Studio")
    back.add_argument("--token-file", type=Path, default=None,
                      help="Label Studio API token (first line of the file, mode 0600), with --label-studio")
    back.add_argument("--label-config", type=Path, default=None,
                      help="the project's labeling config (XML): fixes the class order and the synonyms")
    back.add_argument("--from", dest="source", choices=("annotations", "predictions"), default="annotations",
                      help="which results to convert (default: annotations)")
    back.add_argument("--max-pixels", default=None, metavar="N", help="largest image (default 100M)")
    back.add_argument("--overwrite", action="store_true", help="replace existing images and masks")
    back.set_defaults(func=_cmd_from)
    return conv


def _cmd_to(args: argparse.Namespace) -> int:
    from ._ls_convert import folder_to_label_studio

    done = folder_to_label_studio(args.folder, args.out, image_prefix=args.image_prefix,
                                  document_root=args.document_root, overwrite=args.overwrite)
    for path in done["skipped"]:
        print(f"napari-cass: note: {path} has no class pixels; its task has an empty prediction.", file=sys.stderr)
    print(f"Wrote {done['tasks']} task(s) to {args.out} and the labeling config to {done['config']}.")
    return 0


def _cmd_from(args: argparse.Namespace) -> int:
    from ..io import max_pixels_limit
    from ._ls_convert import label_studio_to_dataset

    fetcher = None
    if args.label_studio:
        from ..server import read_token
        from ._ls_fetch import ImageFetcher

        token = read_token(args.token_file) if args.token_file else None
        fetcher = ImageFetcher(args.label_studio, token, max_pixels=max_pixels_limit(args.max_pixels) or 2**62)
    elif args.token_file is not None:
        raise ValueError("--token-file is for --label-studio: give Label Studio's address too.")
    config = args.label_config.read_text(encoding="utf-8") if args.label_config else None
    try:
        done = label_studio_to_dataset(args.export, args.out, images_dir=args.images,
                                       fetch=fetcher.fetch if fetcher else None, label_config=config,
                                       source=args.source, overwrite=args.overwrite,
                                       max_pixels=max_pixels_limit(args.max_pixels))
    finally:
        if fetcher is not None:
            fetcher.close()
    for note in done["skipped"]:
        print(f"napari-cass: note: skipped {note}.", file=sys.stderr)
    print(f"Wrote {len(done['images'])} image(s) and mask(s) to {args.out} "
          f"(classes: {', '.join(done['classes'])}).")
    return 0
