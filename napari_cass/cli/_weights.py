"""``napari-cass weights``: list, import and download model weights."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import CLIP_CHOICES, DEFAULT_DOWNLOADS, VFM_CHOICES

__all__ = ["add_weights_parser"]


def add_weights_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``weights list|import|download`` on the top-level sub-parsers."""
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
    return weights


def _help_of(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _cmd_weights_list(args: argparse.Namespace) -> int:
    from ..engine._weights import cache_dir, weights_status
    from ..io import printable

    rows = weights_status()
    print(f"Cache folder: {printable(cache_dir())}")
    header = ("MODEL", "KIND", "STATUS", "PATH / EXPECTED FILE", "HUB")
    table = [header]
    for row in rows:
        where = row["path"] if row["present"] else row["expected"][0]
        table.append((row["model"], row["kind"], "present" if row["present"] else "missing",
                      printable(where), printable(row["hub"])))
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
    searched = list(dict.fromkeys(place for row in rows for place in row["searched"]))
    print("Searched: " + "; ".join(printable(place) for place in searched))
    missing = [r["model"] for r in rows if not r["present"]]
    if missing:
        print("Get missing weights with 'napari-cass weights download --model NAME', or on an "
              "offline machine 'napari-cass weights import PATH --model NAME'.")
    return 0


def _cmd_weights_import(args: argparse.Namespace) -> int:
    from ..engine._weights import import_weights
    from ..io import printable

    target = import_weights(args.path, args.model, overwrite=args.overwrite)
    print(f"Imported {printable(args.path)} as {printable(args.model)}: {printable(target)}")
    return 0


def _cmd_weights_download(args: argparse.Namespace) -> int:
    from ..engine._weights import CLIP_MODELS, VFM_MODELS, download_weights, find_model
    from ..io import printable

    names = list(args.model or DEFAULT_DOWNLOADS)
    if "all" in names:
        names = [*CLIP_MODELS, *VFM_MODELS]
    for name in names:
        find_model(name)  # fail on a typo before any download starts
    for name in names:
        path = download_weights(name, overwrite=args.overwrite)
        print(f"{name}: {printable(path)}")
    return 0
