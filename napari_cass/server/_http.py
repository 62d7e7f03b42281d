"""A minimal blocking HTTP transport: httpx when installed, else the standard library.

Both return ``(status, headers, body)`` and raise :class:`ConnectionFailed` for a
server that cannot be reached or does not answer in time, so the client never hangs
and never needs to know which library carried the request.
"""

from __future__ import annotations

import ssl
import threading
import urllib.error
import urllib.request

__all__ = ["ConnectionFailed", "Transport", "make_transport", "url_without_credentials"]


class ConnectionFailed(OSError):
    """No HTTP answer: refused, reset, unreachable, or timed out (``timed_out`` says which)."""

    def __init__(self, message: str, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


class Transport:
    """Interface: ``request(method, url, body, headers, timeout) -> (status, headers, body)``."""

    def request(self, method: str, url: str, body: bytes | None, headers: dict[str, str],
                timeout: float) -> tuple[int, dict[str, str], bytes]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _HttpxTransport(Transport):
    """httpx with keep-alive: idle clients are lent to one request at a time, then returned.

    No client is used by two threads at once, and no more clients exist than requests
    ever ran concurrently.
    """

    def __init__(self, connect_timeout: float, ssl_context: ssl.SSLContext | None):
        import httpx

        self._httpx = httpx
        self._connect = connect_timeout
        self._verify = ssl_context if ssl_context is not None else True
        self._idle: list = []
        self._all: list = []
        self._lock = threading.Lock()

    def _borrow(self):
        with self._lock:
            if self._idle:
                return self._idle.pop()
        client = self._httpx.Client(trust_env=False, verify=self._verify)
        with self._lock:
            self._all.append(client)
        return client

    def request(self, method, url, body, headers, timeout):
        httpx = self._httpx
        t = httpx.Timeout(timeout, connect=min(self._connect, timeout))
        client = self._borrow()
        try:
            r = client.request(method, url, content=body, headers=headers, timeout=t)
        except httpx.TimeoutException as exc:
            raise ConnectionFailed(f"no answer within {timeout:g} s ({type(exc).__name__})", True) from None
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"{type(exc).__name__}: {exc}") from None
        finally:
            with self._lock:
                closed = client not in self._all  # close() ran meanwhile
                if not closed:
                    self._idle.append(client)
            if closed:
                client.close()
        return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content

    def close(self) -> None:
        with self._lock:
            clients, self._all, self._idle = self._all, [], []
        for c in clients:
            c.close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Answer a redirect with its own 3xx status, as httpx does by default.

    urllib would follow it and send the request's headers, the bearer token included, to
    whatever host the ``Location`` names. A napari-cass server never redirects.
    """

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class _UrllibTransport(Transport):
    """The standard library: one connection per request, no extra dependency."""

    def __init__(self, connect_timeout: float, ssl_context: ssl.SSLContext | None):
        self._connect = connect_timeout
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ssl_context), _NoRedirect())

    def request(self, method, url, body, headers, timeout):
        req = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with self._opener.open(req, timeout=timeout) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()
        except TimeoutError:
            raise ConnectionFailed(f"no answer within {timeout:g} s", True) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError):
                raise ConnectionFailed(f"no answer within {timeout:g} s", True) from None
            raise ConnectionFailed(f"{type(reason).__name__}: {reason}") from None


def make_transport(backend: str = "auto", connect_timeout: float = 5.0,
                   ssl_context: ssl.SSLContext | None = None) -> Transport:
    """``"httpx"``, ``"urllib"`` or ``"auto"`` (httpx when importable).

    ``ssl_context`` verifies HTTPS servers (default: the system's certificate authorities).
    """
    if backend not in ("auto", "httpx", "urllib"):
        raise ValueError(f"Unknown HTTP backend {backend!r}: use 'auto', 'httpx' or 'urllib'.")
    if backend in ("auto", "httpx"):
        try:
            return _HttpxTransport(connect_timeout, ssl_context)
        except ImportError:
            if backend == "httpx":
                raise
    return _UrllibTransport(connect_timeout, ssl_context)


def url_without_credentials(url: str) -> str:
    """``url`` without a ``user:password@`` part, for anything written down or shown.

    Server addresses end up in ``classes.json`` and in layer metadata, which travel with
    the masks; credentials in the address must not.
    """
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))
