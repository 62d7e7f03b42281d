"""uvicorn as napari-cass runs it: slow-client guard, quiet polls, a clean stop.

uvicorn has no deadline for a request's head: a client that opens a connection and
sends a header byte now and then holds a socket (and a file descriptor) forever, and
its ``limit_concurrency`` counts such connections too, so 300 of them would make it
answer 503 to everyone. :class:`ConnectionGuard` adds the two missing pieces at the
connection level, before any authentication:

* a request head must be complete ``header_timeout`` seconds after the connection
  opened (or after the previous response on a kept-alive connection), else the
  connection is closed;
* at most ``max_connections`` are open (by default what the descriptor limit leaves
  free); beyond that, the oldest connection still waiting for a request head is closed,
  so a client that sends its request at once is served however many idle ones exist.

Request bodies have their own timeouts in the application (:func:`._requests.read_body`).
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict, deque

__all__ = ["ConnectionGuard", "QuietPolls", "default_max_connections", "make_server"]

log = logging.getLogger("napari_cass.server")

#: Seconds a connection may take to send a complete request head.
HEADER_TIMEOUT = 10.0
#: Seconds an idle kept-alive connection stays open: longer than httpx keeps one (5 s),
#: so a client never reuses a connection the server is closing; shorter than the head deadline.
KEEP_ALIVE = 8
#: Connections the listening socket queues before uvicorn accepts them. asyncio accepts
#: up to this many in one go, and a connection reaches the guard two loop turns after
#: its accept, so three times this many descriptors are kept free below the limit.
BACKLOG = 32


def default_max_connections(cap: int = 1000) -> int:
    """Connections this process can hold: its descriptor limit, less those open, less a margin."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return min(cap, 200)
    if soft == resource.RLIM_INFINITY:
        return cap
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        used = 64
    return max(8, min(cap, soft - used - 3 * BACKLOG - 16))


class ConnectionGuard:
    """Deadlines for request heads and a bound on open connections; shared by one server's connections."""

    def __init__(self, max_connections: int, header_timeout: float = HEADER_TIMEOUT):
        if max_connections < 2:
            raise ValueError("max_connections must be at least 2.")
        self.max_connections = int(max_connections)
        self.header_timeout = float(header_timeout)
        self.open: set = set()
        self._pending: deque[float] = deque()  # accepted, connection_made not yet run (TLS may never)
        self._waiting: OrderedDict = OrderedDict()  # connection -> timer; oldest first
        self.closed_slow = 0  # closed at the head deadline
        self.closed_shed = 0  # closed to make room for a new connection
        self._warned = 0.0

    def protocol(self):
        """The uvicorn ``http`` protocol class that reports to this guard."""
        from uvicorn.protocols.http.h11_impl import H11Protocol

        guard = self

        class GuardedH11Protocol(H11Protocol):
            def __init__(self, *args, **kwargs) -> None:
                guard.accepted()  # one loop turn before connection_made: shed early
                super().__init__(*args, **kwargs)

            def connection_made(self, transport) -> None:
                super().connection_made(transport)
                guard.opened(self)

            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                guard.update(self)

            def on_response_complete(self) -> None:
                super().on_response_complete()
                guard.update(self)

            def connection_lost(self, exc) -> None:
                guard.closed(self)
                super().connection_lost(exc)

        return GuardedH11Protocol

    # ------------------------------------------------------------------ events
    def accepted(self) -> None:
        """A connection was accepted (its protocol is being built): make room for it now."""
        now = time.monotonic()
        while self._pending and self._pending[0] < now - self.header_timeout:
            self._pending.popleft()  # a TLS handshake that failed never reaches connection_made
        self._pending.append(now)
        while len(self.open) + len(self._pending) > self.max_connections and self._waiting:
            self.closed_shed += 1
            self._close(next(iter(self._waiting)))

    def opened(self, conn) -> None:
        if self._pending:
            self._pending.popleft()
        self.open.add(conn)
        self._arm(conn)
        while len(self.open) > self.max_connections:
            victim = next(iter(self._waiting), None)
            if victim is None:  # all busy with requests: the newcomer waits for none of them
                victim = conn
            self.closed_shed += 1
            self._close(victim)
            if victim is conn:
                break
        if self.closed_shed and time.monotonic() - self._warned > 60:
            self._warned = time.monotonic()
            log.warning("%d connections open (limit %d): closed %d that had sent no request and %d too slow "
                        "to send one. If this is not an attack, raise --max-connections.", len(self.open),
                        self.max_connections, self.closed_shed, self.closed_slow)

    def update(self, conn) -> None:
        """After data or a response: a connection in a request leaves the head deadline."""
        if conn not in self.open:
            return
        cycle = conn.cycle
        in_request = cycle is not None and not cycle.response_complete
        if in_request:
            timer = self._waiting.pop(conn, None)
            if timer is not None:
                timer.cancel()
        elif conn not in self._waiting and not conn.transport.is_closing():
            self._arm(conn)  # kept alive after its response: the next head has a deadline too

    def closed(self, conn) -> None:
        self.open.discard(conn)
        timer = self._waiting.pop(conn, None)
        if timer is not None:
            timer.cancel()

    # ------------------------------------------------------------------ internals
    def _arm(self, conn) -> None:
        self._waiting[conn] = conn.loop.call_later(self.header_timeout, self._expire, conn)

    def _expire(self, conn) -> None:
        if conn in self._waiting:
            self.closed_slow += 1
            self._close(conn)

    def _close(self, conn) -> None:
        self.closed(conn)
        conn.transport.close()


class QuietPolls(logging.Filter):
    """Keep successful ``GET /v1/jobs/<id>`` polls (twice a second per waiting client) out of
    uvicorn's access log; every other request, and any failed poll, is still logged."""

    def __init__(self):
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (isinstance(args, tuple) and len(args) >= 5 and args[1] == "GET"
                and str(args[2]).startswith("/v1/jobs/") and args[4] == 200):
            self.dropped += 1
            return False
        return True


def make_server(app, host: str, port: int, *, log_level: str = "info", access_log: bool = True,
                max_connections: int | None = None, header_timeout: float = HEADER_TIMEOUT,
                timeout_graceful_shutdown: int = 10, **config):
    """A ``uvicorn.Server`` for ``app`` with the guard, quiet polls and a clean stop.

    On stop it calls ``app.state.begin_stop()`` (when the app has one) before waiting for
    requests in flight, so they answer "the server stopped" at once instead of running on.
    """
    import uvicorn

    guard = ConnectionGuard(max_connections or default_max_connections(), header_timeout)
    cfg = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                         http=guard.protocol(), backlog=BACKLOG, timeout_keep_alive=KEEP_ALIVE,
                         timeout_graceful_shutdown=timeout_graceful_shutdown, lifespan="on", **config)
    quiet = QuietPolls()
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, QuietPolls) for f in access.filters):
        access.addFilter(quiet)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            begin_stop = getattr(getattr(app, "state", None), "begin_stop", None)
            if begin_stop is not None:
                begin_stop()
            await super().shutdown(sockets=sockets)

    server = Server(cfg)
    server.guard = guard
    return server
