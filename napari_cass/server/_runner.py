"""Run the server in a background thread of this process (tests, benchmarks, demos)."""

from __future__ import annotations

import threading
import time

__all__ = ["BackgroundServer"]


class BackgroundServer:
    """uvicorn serving ``app`` from a daemon thread; a context manager.

    Parameters
    ----------
    app : ASGI application
        Usually :func:`napari_cass.server.create_app`'s result.
    host : str
        Bind address (keep loopback in tests).
    port : int
        0 picks a free port; read it back from :attr:`port` after :meth:`start`.
    ssl_certfile, ssl_keyfile : str, optional
        Serve HTTPS with this certificate (chain) and private key.
    max_connections, header_timeout : optional
        The slow-client guard's settings (see :func:`napari_cass.server._uvicorn.make_server`).
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
                 max_connections: int | None = None, header_timeout: float | None = None,
                 access_log: bool = False):
        from ._uvicorn import HEADER_TIMEOUT, make_server

        self.host = host
        self.scheme = "https" if ssl_certfile else "http"
        self._server = make_server(app, host, port, log_level=log_level, access_log=access_log,
                                   max_connections=max_connections,
                                   header_timeout=header_timeout or HEADER_TIMEOUT, timeout_graceful_shutdown=5,
                                   ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
        self.guard = self._server.guard
        self._thread: threading.Thread | None = None
        self.port = port

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        """Start serving; returns once the socket accepts connections (or raises)."""
        self._thread = threading.Thread(target=self._server.run, name="napari-cass-uvicorn", daemon=True)
        self._thread.start()
        end = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"The server did not start on {self.host}:{self.port} (see the log).")
            if time.monotonic() > end:
                raise RuntimeError(f"The server did not start within {timeout:g} s.")
            time.sleep(0.02)
        sockets = [s for server in self._server.servers for s in server.sockets]
        if sockets:
            self.port = sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, finish or cancel the jobs in flight, and join the thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
