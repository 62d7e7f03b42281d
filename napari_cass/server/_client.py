"""``RemoteSegmenter``: the engine's ``segment`` API, computed by a ``napari-cass serve`` server.

Qt-free, no model and no GPU on this side: it sends the image's SHA-256 first and the pixels
only when the server asks for them, so a prompt edit costs one small JSON request.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
import zlib
from concurrent.futures import Future, TimeoutError as FutureTimeout
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

import numpy as np

from ._http import ConnectionFailed, make_transport
from ._protocol import API_PREFIX, NPY_TYPE, decode_confidence, decode_labels, npy_bytes

__all__ = ["RemoteSegmenter", "RemoteSegmenterError"]


class RemoteSegmenterError(RuntimeError):
    """The server could not be reached, refused the request, or failed; the message says which.

    Attributes ``status`` (HTTP status, 0 when there was no answer) and ``code``
    (the server's error code, e.g. ``"unauthorized"``, ``"busy"``, ``"unreachable"``).
    """

    def __init__(self, message: str, status: int = 0, code: str = "unreachable"):
        super().__init__(message)
        self.status, self.code = status, code


class RemoteSegmenter:
    """Segment on a remote ``napari-cass serve`` with the same API as :class:`~napari_cass.engine.Segmenter`.

    Parameters
    ----------
    url : str
        ``http://host:port`` of the server.
    token : str, optional
        The server's bearer token (required unless it listens on loopback without one).
    token_file : path, optional
        Read the token from this file instead (first line).
    method, preset : str, optional
        Sent with every request; the server's defaults when None.
    timeout : float
        Seconds to wait for one segmentation, queue time included.
    connect_timeout : float
        Seconds to wait for a connection.
    busy_wait : float
        Total seconds to keep retrying while the server answers 429 (busy) or 503 with
        ``memory_full`` (its memory budget is taken by other clients' images).
    backend : str
        ``"auto"`` (httpx if installed), ``"httpx"`` or ``"urllib"``.
    ca_file : path, optional
        Certificate (authority) that signed an ``https://`` server's certificate, e.g. the
        server's own self-signed one; default: the system's authorities.
    """

    def __init__(self, url: str, token: str | None = None, *, token_file: str | Path | None = None,
                 method: str | None = None, preset: str | None = None, timeout: float = 300.0,
                 connect_timeout: float = 5.0, busy_wait: float = 60.0, backend: str = "auto",
                 ca_file: str | Path | None = None):
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"Server URL {url!r} must look like http://host:8765.")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        if token_file is not None:
            from ._auth import read_token

            token = read_token(token_file)
        self.token = token
        self._method = method
        self._preset_name = preset
        self.timeout, self.connect_timeout = float(timeout), float(connect_timeout)
        self.busy_wait = float(busy_wait)
        context = None
        if ca_file is not None:
            import ssl

            if not Path(ca_file).expanduser().is_file():
                raise ValueError(f"Certificate file {ca_file} does not exist.")
            context = ssl.create_default_context(cafile=str(Path(ca_file).expanduser()))
        self._transport = make_transport(backend, connect_timeout, context)
        self._info: dict | None = None
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "uploads": 0, "bytes_sent": 0}

    # ------------------------------------------------------------------ Segmenter look-alike
    @property
    def method(self) -> str:
        """The method requests use (the server's default when unset)."""
        return self._method or str(self.server_info().get("method") or "cass")

    @property
    def preset(self):
        """The :class:`~napari_cass.engine.Preset` requests use (the server's default when unset)."""
        from ..engine import get_preset

        name = self._preset_name or (self.server_info().get("preset") or "interactive")
        return get_preset(name)

    def set_preset(self, preset) -> None:
        self._preset_name = getattr(preset, "name", preset)

    def set_method(self, method: str) -> None:
        from ..engine import METHODS

        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
        self._method = method

    @property
    def device(self) -> str:
        return f"server {self.url}"

    @property
    def model_names(self) -> dict:
        return dict(self.server_info().get("models") or {})

    def clear_cache(self) -> None:
        """Nothing to clear locally: the server's caches are shared by its clients."""

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> RemoteSegmenter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ connection checks
    def server_info(self, refresh: bool = False) -> dict:
        """``GET /v1/info`` (token checked): models, device, version, limits."""
        if self._info is None or refresh:
            status, _, body = self._request("GET", f"{API_PREFIX}/info", timeout=self.connect_timeout + 5)
            self._info = self._json_or_raise(status, body)
        return self._info

    def health(self) -> str:
        """One line about the server, e.g. ``napari-cass 0.1.0 at http://..: cass on cuda:0 (...)``.

        Raises :class:`RemoteSegmenterError` when it is down or refuses the token.
        """
        info = self.server_info(refresh=True)
        models = ", ".join(str(v) for k, v in (info.get("models") or {}).items() if v and "weights" not in k)
        queue = info.get("queue") or {}
        return (f"napari-cass {info.get('version')} at {self.url}: {info.get('method')} on "
                f"{info.get('device')}" + (f" ({models})" if models else "")
                + f", {queue.get('waiting', 0)} request(s) waiting.")

    def test_connection(self) -> str:
        """Like :meth:`health` but never raises: a short sentence for a "test connection" button."""
        try:
            return "Connected: " + self.health()
        except RemoteSegmenterError as exc:
            return f"Connection failed: {exc}"

    # ------------------------------------------------------------------ segment
    def segment(self, image, classes, progress: Callable[[int, int, str], None] | None = None,
                cancel: Callable[[], bool] | None = None, *,
                background: str | Sequence[str] | None = None, return_probabilities: bool = False,
                probability_stride: int = 1, refine: str | None = None):
        """Segment ``image`` into ``classes`` on the server; same arguments and result as
        :meth:`napari_cass.engine.Segmenter.segment` (``refine``: ``"pamr"`` or ``"none"``
        sent with the request; None: the server's default for the preset).

        The labels are exactly the server engine's; ``confidence`` travels as 8 bits
        (within 0.5/255 of the engine's value); ``probabilities`` is None (the full
        ``(classes, H, W)`` array is not sent: ``return_probabilities=True`` is refused).
        Raises :class:`RemoteSegmenterError` when the server is down, refuses or fails,
        :class:`~napari_cass.engine.SegmentationCancelled` on cancel, ``ValueError`` for
        a bad class list (checked here, before any network traffic).
        """
        from ..engine import SegmentationCancelled, normalize_classes
        from ..engine._pamr import check_refine

        if return_probabilities:
            raise ValueError("A server returns labels and confidence, not the per-class probabilities: "
                             "use a local Segmenter for return_probabilities=True.")
        start = time.perf_counter()
        prompts = normalize_classes(classes)
        words = None
        if background:
            words = [background] if isinstance(background, str) else list(background)
        raw = npy_bytes(np.asarray(image))  # compressed only if the server asks for the pixels
        key = hashlib.sha256(raw).hexdigest()
        job_id = uuid.uuid4().hex
        body = json.dumps({
            "image": key, "job_id": job_id, "background": words, "method": self._method,
            "preset": self._preset_name, "confidence": True,
            "refine": None if refine is None else check_refine(refine),
            "classes": [{"name": p.name, "queries": list(p.queries)} for p in prompts],
        }).encode("utf-8")
        deadline = start + self.busy_wait
        uploads = 0
        for _ in range(8):  # need pixels -> upload -> again; busy -> wait -> again
            status, headers, reply = self._cancellable(
                "POST", f"{API_PREFIX}/segment", body, {"Content-Type": "application/json"},
                self.timeout, cancel, progress, job_id)
            if status == 428 and uploads < 2:  # a second time if evicted in between
                self._upload(key, raw, cancel, progress)
                uploads += 1
                continue
            retry = status == 429 or (status == 503 and _code(reply) == "memory_full")
            if retry and time.perf_counter() < deadline:
                wait = _retry_after(headers, deadline - time.perf_counter())
                if progress is not None:
                    progress(0, 1, f"server busy, retrying in {wait:.0f} s")
                self._sleep(wait, cancel)
                continue
            break
        if status == 409 and _code(reply) == "cancelled":
            raise SegmentationCancelled("Segmentation cancelled on the server.")
        data = self._json_or_raise(status, reply)
        result = self._result(data, start)
        if progress is not None:
            progress(1, 1, "done")
        return result

    # ------------------------------------------------------------------ internals
    def _result(self, data: dict, start: float):
        from ..engine import ClassPrompt, SegmentationResult

        shape = tuple(data["shape"])
        labels = decode_labels(data["labels_png"], shape)
        if not data.get("confidence_png"):
            raise RemoteSegmenterError(f"The server at {self.url} sent no confidence map: is it an older "
                                       "napari-cass?", 200, "bad_reply")
        conf = decode_confidence(data["confidence_png"], shape)
        timings = {k: float(v) for k, v in (data.get("timings") or {}).items()}
        timings["round_trip"] = time.perf_counter() - start
        values: dict[str, Any] = dict(
            labels=labels, classes=[ClassPrompt(c["name"], tuple(c["queries"])) for c in data["classes"]],
            has_background=bool(data["has_background"]), timings=timings,
            from_cache=bool(data["from_cache"]), probabilities=None, confidence=conf,
        )
        names = {f.name for f in fields(SegmentationResult)}
        return SegmentationResult(**{k: v for k, v in values.items() if k in names})

    def _upload(self, key: str, raw: bytes, cancel, progress) -> None:
        payload = zlib.compress(raw, 1)
        if progress is not None:
            progress(0, 1, f"uploading image ({len(payload) / 2**20:.1f} MiB)")
        deadline = time.perf_counter() + self.busy_wait
        while True:
            status, headers, reply = self._cancellable(
                "PUT", f"{API_PREFIX}/images/{key}", payload,
                {"Content-Type": NPY_TYPE, "Content-Encoding": "deflate"}, self.timeout, cancel, None, None)
            retry = status == 429 or (status == 503 and _code(reply) == "memory_full")
            if not retry or time.perf_counter() >= deadline:
                break
            wait = _retry_after(headers, deadline - time.perf_counter())
            if progress is not None:
                progress(0, 1, f"server busy, retrying the upload in {wait:.0f} s")
            self._sleep(wait, cancel)
        self._json_or_raise(status, reply)
        with self._lock:
            self.stats["uploads"] += 1

    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                 timeout: float | None = None) -> tuple[int, dict, bytes]:
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        with self._lock:
            self.stats["requests"] += 1
            self.stats["bytes_sent"] += len(body or b"")
        try:
            return self._transport.request(method, self.url + path, body, headers, timeout or self.timeout)
        except ConnectionFailed as exc:
            if exc.timed_out:
                raise RemoteSegmenterError(
                    f"The napari-cass server at {self.url} did not answer in time ({exc}). It may be "
                    "overloaded; try again, or raise the timeout.", 0, "timeout") from None
            hint = ("Is 'napari-cass serve' running there, and are the host and port right?"
                    if "certificate" not in str(exc).lower() else
                    "The server's certificate is not trusted: give its certificate as the CA file.")
            raise RemoteSegmenterError(
                f"Cannot reach the napari-cass server at {self.url} ({exc}). {hint}", 0, "unreachable") from None

    def _cancellable(self, method, path, body, headers, timeout, cancel, progress, job_id):
        """Run one request in a helper thread; poll ``cancel`` (and the job's progress) meanwhile.

        ``progress`` is always called from the calling thread, never from a helper.
        """
        from ..engine import SegmentationCancelled

        fut = _spawn(self._request, method, path, body, headers, timeout)
        poll, next_poll = None, time.perf_counter() + 0.5
        while True:
            try:
                return fut.result(timeout=0.05)
            except FutureTimeout:
                pass
            if cancel is not None and cancel():
                if job_id is not None:
                    _spawn(self._quiet, "DELETE", f"{API_PREFIX}/jobs/{job_id}")
                raise SegmentationCancelled("Segmentation cancelled.")
            if progress is None or job_id is None:
                continue
            if poll is not None and poll.done():
                _report(poll.result(), progress)
                poll = None
            if poll is None and time.perf_counter() >= next_poll:
                next_poll = time.perf_counter() + 0.5
                poll = _spawn(self._quiet, "GET", f"{API_PREFIX}/jobs/{job_id}")

    def _quiet(self, method: str, path: str):
        try:
            return self._request(method, path, timeout=self.connect_timeout)
        except RemoteSegmenterError:
            return None

    def _sleep(self, seconds: float, cancel) -> None:
        from ..engine import SegmentationCancelled

        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            if cancel is not None and cancel():
                raise SegmentationCancelled("Segmentation cancelled.")
            time.sleep(min(0.05, max(0.0, end - time.perf_counter())))

    def _json_or_raise(self, status: int, body: bytes) -> dict:
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            data = {}
        if 200 <= status < 300 and isinstance(data, dict):
            return data
        err = data.get("error") if isinstance(data, dict) else None
        code = err.get("code", "error") if isinstance(err, dict) else "error"
        message = err.get("message") if isinstance(err, dict) else None
        message = message or (body[:200].decode("utf-8", "replace") if body else f"HTTP {status}")
        if status == 401:
            message += " (check the token or --token-file given to the client)"
        raise RemoteSegmenterError(f"The napari-cass server at {self.url} refused the request "
                                   f"(HTTP {status}): {message}", status, code)


def _spawn(fn, *args) -> Future:
    """Run ``fn(*args)`` in a daemon thread: a request still waiting for its timeout never
    keeps the application from exiting (a thread pool's workers would be joined at exit)."""
    fut: Future = Future()

    def run() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # delivered to the waiting caller
            fut.set_exception(exc)

    threading.Thread(target=run, name="napari-cass-remote", daemon=True).start()
    return fut


def _report(answer, progress) -> None:
    """Turn a ``GET /v1/jobs/<id>`` answer into a progress call."""
    if answer is None or answer[0] != 200:
        return
    try:
        state = json.loads(answer[2])
        if state["state"] == "queued":
            progress(0, 1, f"queued on the server ({state['position']} ahead)")
        else:
            progress(state["done"], max(1, state["total"]), f"server: {state['message']}")
    except (ValueError, KeyError, TypeError):
        return


def _code(body: bytes) -> str | None:
    try:
        return json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def _retry_after(headers: dict, left: float) -> float:
    try:
        wait = float(headers.get("retry-after", "1"))
    except ValueError:
        wait = 1.0
    return max(0.05, min(wait, left))
