"""``napari-cass`` command line: batch segmentation, weights management, evaluation.

Module-level imports stay light (no torch, no napari) so that ``napari-cass --help``
and ``--version`` answer at once; the engine is imported when a command runs.

The package: :mod:`._segment` (``segment``), :mod:`._weights` (``weights``). The folder
logic the commands build on (output planning, resume, consistent ``classes.json``,
reading images under a pixel limit) is Qt-free in :mod:`napari_cass.io`, for other
runners to reuse.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ._common import (
    CLIP_CHOICES,
    DEFAULT_DOWNLOADS,
    IMAGE_SUFFIXES,
    METHOD_CHOICES,
    PRESET_CHOICES,
    VFM_CHOICES,
    CliError,
)
from ._segment import add_segment_parser
from ._weights import add_weights_parser

__all__ = [
    "CLIP_CHOICES",
    "DEFAULT_DOWNLOADS",
    "IMAGE_SUFFIXES",
    "METHOD_CHOICES",
    "PRESET_CHOICES",
    "VFM_CHOICES",
    "CliError",
    "build_parser",
    "main",
]

#: Exit code when the reader of our output went away (``napari-cass weights list | head``):
#: what a shell reports for a program ended by SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141


def build_parser() -> argparse.ArgumentParser:
    """The full ``napari-cass`` parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="napari-cass",
        description="Open-vocabulary semantic segmentation with CASS: name the classes, get label masks.",
    )
    parser.add_argument("--version", action="version", version=f"napari-cass {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_segment_parser(sub)
    add_weights_parser(sub)
    from ..integrations._convert_cli import add_convert_parser  # Label Studio JSON <-> folders

    add_convert_parser(sub)
    try:
        from ..server._cli import add_serve_parser
    except ImportError:  # the server package is optional in development trees
        pass
    else:
        add_serve_parser(sub)
    try:
        from ..evaluation._cli import add_eval_parser
    except ImportError as exc:  # during development the evaluation package may be missing
        reason = str(exc)
        ev = sub.add_parser("eval", help="evaluate on a benchmark (unavailable in this installation)")
        ev.set_defaults(func=lambda args: _raise(CliError(f"The eval command is unavailable: {reason}")))
    else:
        add_eval_parser(sub)
    return parser


def _raise(exc: Exception) -> int:
    raise exc


def _silence_stdout() -> None:
    """After a broken pipe: send what is still buffered for stdout nowhere.

    Python would otherwise report the failed flush at exit ("Exception ignored ...
    BrokenPipeError"), which is how ``| head`` printed "Broken pipe".
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (captured in tests)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    0 ok, 1 some images failed, 2 error, 130 interrupted (Ctrl-C), 141 the reader of the
    output went away (a pipe into ``head``): nothing is printed about that.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    argv = [a for a in argv if a != "--debug"]
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version, usage errors
            sys.stdout.flush()
            return int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        func = getattr(args, "func", None)
        if func is None:
            parser.print_help(sys.stderr)
            return 2
        try:
            code = int(func(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, inside the handler below
            return code
        except KeyboardInterrupt:
            print("napari-cass: interrupted.", file=sys.stderr)
            return 130
        except BrokenPipeError:
            raise
        except Exception as exc:
            if debug:
                raise
            message = str(exc) or type(exc).__name__
            if isinstance(exc, (KeyError,)) and exc.args:
                message = str(exc.args[0])
            from ..io import printable  # a file name's ESC must not drive the terminal

            print(f"napari-cass: error: {printable(message, newlines=True)}", file=sys.stderr)
            return 2
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
