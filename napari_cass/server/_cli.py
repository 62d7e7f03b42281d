"""Command-line glue: ``napari-cass serve`` and ``napari-cass segment --server URL``.

``napari_cass.cli`` wires these in; nothing here imports torch, FastAPI or uvicorn
until a command runs, so ``napari-cass --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

__all__ = ["add_serve_parser", "add_remote_arguments", "cmd_serve", "remote_segmenter_from_args", "replicate"]

_SERVE_EPILOG = """\
examples:
  napari-cass serve                                   # loopback only, no token needed
  napari-cass serve --host 0.0.0.0 --device cuda      # token generated on first start
  napari-cass serve --host 0.0.0.0 --token-file /etc/napari-cass/token
  napari-cass segment photos/ --classes "cat, dog" --out masks --server http://gpu-box:8765 --token-file token

On any address other than loopback every request needs 'Authorization: Bearer <token>'.
Without --token-file the token is generated once and kept (mode 0600) in the user config
folder; the path is printed at start. GET /health answers without the token.

On the internet, put it behind a reverse proxy (nginx, Caddy) that terminates HTTPS and
limits connections and request rates per client; the server's own limits (request head
within 10 s, --max-connections, --memory-budget-gb, --queue-size) keep it alive, not fair.
"""


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``serve`` command to ``napari-cass``'s sub-parsers; returns its parser."""
    p = subparsers.add_parser(
        "serve", help="serve segmentation over HTTP for the plugin and CLI on other machines",
        description="Load the models once and serve CASS segmentation over HTTP (needs the [server] extra).",
        epilog=_SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default: 8765)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:1, mps, or several: cuda:0,cuda:1 (one engine per GPU, "
                        "one queue; default: auto)")
    p.add_argument("--token-file", type=Path, default=None,
                   help="file holding the bearer token (first line); required on loopback to use a token")
    p.add_argument("--method", default="cass", help="default method (default: cass)")
    p.add_argument("--preset", default="interactive", help="default preset (default: interactive)")
    p.add_argument("--clip", default="ViT-B-16", help="CLIP model (default: ViT-B-16)")
    p.add_argument("--vfm", default="dino_vitb8", help="VFM (DINO) model (default: dino_vitb8)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch")
    p.add_argument("--random-weights", action="store_true",
                   help="random model weights: for testing the pipeline only, results are meaningless")
    p.add_argument("--queue-size", type=int, default=32,
                   help="requests that may wait for the engine; more are answered 429 (default: 32)")
    p.add_argument("--cache-images", type=int, default=32,
                   help="images whose features the engine keeps for prompt edits (default: 32)")
    p.add_argument("--max-upload-mb", type=float, default=64.0, help="largest request body (default: 64)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image, H x W (default: 40e6)")
    p.add_argument("--memory-budget-gb", type=float, default=4.0,
                   help="memory for uploads, decoding, stored and queued images and the engines' working "
                        "memory (models not included); requests beyond it are answered 503 (default: 4)")
    p.add_argument("--max-connections", type=int, default=None,
                   help="open connections; beyond it the oldest that sent no request yet is closed "
                        "(default: what the open-file limit allows, at most 1000)")
    p.add_argument("--ssl-certfile", type=Path, default=None,
                   help="serve HTTPS with this certificate (PEM); clients give it with --ca-file if self-signed")
    p.add_argument("--ssl-keyfile", type=Path, default=None, help="private key (PEM) of --ssl-certfile")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    from ..integrations.label_studio import add_label_studio_arguments

    add_label_studio_arguments(p)
    p.set_defaults(func=cmd_serve)
    return p


def _server_token(args: argparse.Namespace) -> tuple[str | None, str]:
    """The token the server requires, and a line saying where it came from."""
    from ._auth import is_loopback, load_or_create_token, read_token

    if args.token_file is not None:
        return read_token(args.token_file), f"token: read from {args.token_file}"
    if is_loopback(args.host):
        return None, "token: none (loopback only; give --token-file to require one)"
    token, path, created = load_or_create_token()
    verb = "generated and stored in" if created else "read from"
    return token, f"token: {verb} {path} (give that file to clients with --token-file)"


def _check_server_deps() -> None:
    missing = []
    for name in ("fastapi", "uvicorn"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise RuntimeError(f"'napari-cass serve' needs {' and '.join(missing)}: "
                           "pip install 'napari-cass[server]'.")


def cmd_serve(args: argparse.Namespace, segmenter: Any = None) -> int:
    """Run ``napari-cass serve`` until interrupted (``segmenter`` injects models, e.g. in tests)."""
    _check_server_deps()
    from ._app import create_app
    from ._protocol import Limits
    from ._uvicorn import make_server

    for name in ("port", "queue_size", "cache_images", "max_pixels"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1.")
    if not args.memory_budget_gb > 0:
        raise ValueError("--memory-budget-gb must be above 0, e.g. 4.")
    if args.max_connections is not None and args.max_connections < 2:
        raise ValueError("--max-connections must be at least 2.")
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        raise ValueError("Give both --ssl-certfile and --ssl-keyfile, or neither.")
    for path in (args.ssl_certfile, args.ssl_keyfile):
        if path is not None and not path.is_file():
            raise ValueError(f"{path} does not exist.")
    token, token_line = _server_token(args)  # before loading models: fail fast
    from ..integrations.label_studio import label_studio_from_args

    label_studio = label_studio_from_args(args, Limits(max_upload_bytes=int(args.max_upload_mb * 2**20),
                                                       max_pixels=int(args.max_pixels)))
    if segmenter is None:
        devices = [d.strip() for d in args.device.split(",") if d.strip()]
        if len(set(devices)) != len(devices) or not devices:
            raise ValueError(f"--device {args.device!r}: name each device once, e.g. cuda:0,cuda:1.")
        if args.random_weights:
            print("napari-cass: warning: --random-weights: models have random weights; the masks are "
                  "meaningless (use this only to test the pipeline).", file=sys.stderr)
        first = _load_segmenter(args, devices[0])
        segmenter = [first, *(replicate(first, device, args.cache_images) for device in devices[1:])]
    engines = segmenter if isinstance(segmenter, list) else [segmenter]
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=int(args.max_pixels))
    app = create_app(segmenter, token=token, host=args.host, limits=limits, max_queue=args.queue_size,
                     memory_budget=int(args.memory_budget_gb * 2**30))
    if label_studio is not None:  # POST /setup, /predict, /webhook for Label Studio
        label_studio.mount(app, token)
        print(f"napari-cass serve: Label Studio ML backend on, images from {label_studio.fetcher.base_url}",
              file=sys.stderr)
    print(f"napari-cass serve: {engines[0].method} on {', '.join(str(e.device) for e in engines)}, "
          f"models {getattr(engines[0], 'model_names', {})}", file=sys.stderr)
    print(f"napari-cass serve: {token_line}", file=sys.stderr)
    scheme = "https" if args.ssl_certfile else "http"
    if scheme == "http" and token is not None:
        print("napari-cass serve: warning: without --ssl-certfile the token and the images cross the "
              "network unencrypted; on a network you do not trust use HTTPS or an SSH tunnel.", file=sys.stderr)
    print(f"napari-cass serve: listening on {scheme}://{args.host}:{args.port} (Ctrl+C to stop)",
          file=sys.stderr)
    server = make_server(app, args.host, args.port, log_level=args.log_level, max_connections=args.max_connections,
                         timeout_graceful_shutdown=10, ssl_certfile=args.ssl_certfile and str(args.ssl_certfile),
                         ssl_keyfile=args.ssl_keyfile and str(args.ssl_keyfile))
    print(f"napari-cass serve: memory budget {args.memory_budget_gb:g} GB, at most "
          f"{server.guard.max_connections} connections", file=sys.stderr)
    try:
        server.run()
    except KeyboardInterrupt:  # Ctrl+C: uvicorn re-raises the signal after its clean stop
        pass
    if not server.started:
        print(f"napari-cass serve: could not start on {args.host}:{args.port} (see the messages above).",
              file=sys.stderr)
        return 3
    return 0


def _load_segmenter(args: argparse.Namespace, device: str):
    from ..engine import Segmenter

    kwargs: dict[str, Any] = {"cache_size": args.cache_images}
    if args.threads:
        kwargs["threads"] = args.threads
    random = bool(args.random_weights)
    with warnings.catch_warnings():
        if random:
            warnings.filterwarnings("ignore", message=".*random weights.*", category=UserWarning)
        return Segmenter.from_pretrained(
            clip=args.clip, clip_weights="random" if random else "openai",
            vfm=args.vfm, vfm_weights="random" if random else "pretrained",
            method=args.method, preset=args.preset, device=device, **kwargs,
        )


def replicate(segmenter: Any, device: str, cache_size: int = 4):
    """A second engine on ``device`` with copies of ``segmenter``'s models and settings.

    Copies, not a second load: every engine then holds the very same weights (random
    weights included), so which GPU serves a request never changes its result.
    """
    import copy
    from dataclasses import asdict

    from ..engine import Segmenter

    vfm = segmenter.vfm_model
    twin = Segmenter.from_models(
        copy.deepcopy(segmenter.clip_model), segmenter.tokenizer, copy.deepcopy(vfm) if vfm is not None else None,
        method=segmenter.method, preset=segmenter.preset, device=device,
        reference_quirks=segmenter.reference_quirks, amp=segmenter.amp, cache_size=cache_size,
        presence_prior=segmenter.presence_prior, text_adjustment=segmenter.text_adjustment,
        **asdict(segmenter.options),
    )
    twin.model_names = dict(segmenter.model_names)
    return twin


# --------------------------------------------------------------------------- segment --server
def add_remote_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--server URL``, ``--token-file PATH`` and ``--ca-file PATH`` to the ``segment`` parser."""
    parser.add_argument("--server", metavar="URL", default=None,
                        help="segment on a 'napari-cass serve' server, e.g. http://gpu-box:8765 "
                             "(its models are used; --clip/--vfm/--device/--random-weights are ignored)")
    parser.add_argument("--token-file", type=Path, default=None, metavar="PATH",
                        help="file with the server's token (first line), for --server")
    parser.add_argument("--ca-file", type=Path, default=None, metavar="PATH",
                        help="certificate that signed an https --server's certificate (e.g. self-signed)")


def remote_segmenter_from_args(args: argparse.Namespace):
    """A connected :class:`RemoteSegmenter` when ``args.server`` is set, else None.

    Uses ``args.method`` and ``args.preset`` when present, and checks the connection
    and the token at once, so a wrong URL fails before any image is read.
    """
    url = getattr(args, "server", None)
    if not url:
        for flag in ("token_file", "ca_file"):
            if getattr(args, flag, None) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} is for --server: give the server's URL too, "
                                 "or leave it out.")
        return None
    from ._client import RemoteSegmenter

    remote = RemoteSegmenter(url, token_file=getattr(args, "token_file", None),
                             ca_file=getattr(args, "ca_file", None),
                             method=getattr(args, "method", None), preset=getattr(args, "preset", None))
    info = remote.server_info()
    if getattr(args, "random_weights", False):
        print("napari-cass: warning: --random-weights is ignored with --server: the server's models are used.",
              file=sys.stderr)
    print(f"napari-cass: segmenting on {remote.url} ({info.get('device')}, models "
          f"{info.get('models')})", file=sys.stderr)
    return remote
