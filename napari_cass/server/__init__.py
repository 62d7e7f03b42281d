"""``napari-cass serve``: the engine behind HTTP, and a client with the engine's API.

The server (FastAPI + uvicorn, the ``[server]`` extra) loads the models once and runs
one engine behind a bounded queue. :class:`RemoteSegmenter` offers
``segment(image, classes, progress, cancel)`` like :class:`~napari_cass.engine.Segmenter`,
so the widget and the CLI use a remote GPU without changing shape. The client needs
only the standard library (httpx is used when installed); importing this package does
not import FastAPI.
"""

from __future__ import annotations

from ._auth import TokenError, default_token_path, is_loopback, load_or_create_token, read_token
from ._client import RemoteSegmenter, RemoteSegmenterError
from ._http import url_without_credentials
from ._protocol import Limits

__all__ = [
    "BackgroundServer",
    "Limits",
    "RemoteSegmenter",
    "RemoteSegmenterError",
    "TokenError",
    "create_app",
    "default_token_path",
    "is_loopback",
    "load_or_create_token",
    "read_token",
    "url_without_credentials",
]


def __getattr__(name: str):
    # FastAPI and uvicorn are optional: import them only when the server side is used.
    if name == "create_app":
        from ._app import create_app

        return create_app
    if name == "BackgroundServer":
        from ._runner import BackgroundServer

        return BackgroundServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
