"""Request plumbing of the server: error replies, body reading, origin and type checks, JSON in/out.

Everything here runs before a job exists, so a request refused here has queued nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import JSONResponse

from ._protocol import Limits, encode_confidence, encode_labels, is_image_key, is_job_id
from ._store import BudgetFull, Reservation

__all__ = ["ApiError", "check_origin", "error_reply", "parse_segment", "read_body", "reply_body",
           "require_json"]

#: Seconds a request body may pause between two chunks before the request is refused (408).
BODY_IDLE_TIMEOUT = 30.0
#: Slowest accepted average upload rate (bytes/s), on top of :data:`BODY_IDLE_TIMEOUT`.
BODY_MIN_RATE = 256 * 2**10


class ApiError(Exception):
    """An error reply: HTTP ``status``, a machine ``code`` and a human ``message``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_reply(status: int, code: str, message: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def memory_full(exc: BudgetFull, retry_after: int) -> ApiError:
    """The 503 for a request the memory budget cannot hold (yet)."""
    # Connection: close, as the body may be unread: the connection cannot carry another request.
    return ApiError(503, "memory_full", f"The server is short of memory for this request: {exc}. Try "
                    f"again in {retry_after} s, when queued jobs have finished; if it keeps happening, ask its "
                    "operator to raise --memory-budget-gb.", {"Retry-After": str(retry_after), "Connection": "close"})


def check_origin(request: Request) -> None:
    """Refuse requests a web page on another site made (403): a browser says so in ``Origin``
    and ``Sec-Fetch-Site``; napari-cass's own clients send neither."""
    site = (request.headers.get("sec-fetch-site") or "").strip().lower()
    origin = request.headers.get("origin")
    if site and site not in ("same-origin", "none"):
        raise _cross_origin(f"Sec-Fetch-Site: {site}")
    if origin is not None:
        parts = urlsplit(origin.strip())
        own = (request.url.scheme, (request.headers.get("host") or "").lower())
        if (parts.scheme, parts.netloc.lower()) != own:
            raise _cross_origin(f"Origin: {origin[:100]}")


def _cross_origin(what: str) -> ApiError:
    return ApiError(403, "cross_origin", f"Refused a request made by a web page on another site ({what}). "
                    "Use napari-cass (plugin, CLI or RemoteSegmenter) or another non-browser client.")


def require_json(request: Request) -> None:
    """415 unless the body is declared ``application/json`` (a web page's form or text/plain
    request, which a browser sends without asking, is refused before its body is read)."""
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, "unsupported_type", f"Content-Type {ctype or 'none'!r} refused: send the request "
                       "as 'Content-Type: application/json'.")


async def read_body(request: Request, limit: int, held: Reservation | None = None, *,
                    idle_timeout: float = BODY_IDLE_TIMEOUT) -> bytes:
    """The body, refused with 413 once it is known to exceed ``limit`` bytes, 408 when it
    stalls (``idle_timeout`` s without data, or slower than :data:`BODY_MIN_RATE` on
    average), and counted in ``held`` (503 when the memory budget cannot hold it)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_request", "Invalid Content-Length header.")
        if int(declared) > limit:
            raise ApiError(413, "too_large", f"The request body is {declared} bytes; this server "
                           f"accepts at most {limit} on this route.", {"Connection": "close"})
        if held is not None:
            held.grow(int(declared))
    expected = int(declared) if declared is not None else limit
    deadline = time.monotonic() + idle_timeout + expected / BODY_MIN_RATE
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while True:
        wait = min(idle_timeout, deadline - time.monotonic())
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout=max(wait, 0.001))
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise ApiError(408, "timeout", f"The request body arrived too slowly ({size} bytes so far); this "
                           "server drops uploads that stall. Check the connection and send it again.",
                           {"Connection": "close"}) from None
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"The request body exceeds {limit} bytes, this server's limit.",
                           {"Connection": "close"})
        if held is not None and declared is None:
            held.grow(len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)


def parse_segment(body: bytes, limits: Limits) -> dict:
    """Validate the JSON of ``POST /v1/segment`` into plain values (see RemoteSegmenter)."""
    from ..engine import ClassPrompt, METHODS, PRESETS, normalize_classes

    try:
        spec = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_request", f"The request body is not valid JSON ({exc}).") from None
    if not isinstance(spec, dict):
        raise ApiError(400, "bad_request", "The request body must be a JSON object.")
    key, job_id = spec.get("image"), spec.get("job_id")
    if not is_image_key(key):
        raise ApiError(400, "bad_request", "'image' must be the lower-case hex SHA-256 of the image payload.")
    if not is_job_id(job_id):
        raise ApiError(400, "bad_request", "'job_id' must be 8-64 letters, digits, '-' or '_'.")
    raw = spec.get("classes")
    if not isinstance(raw, list) or not raw:
        raise ApiError(422, "bad_request", "'classes' must be a non-empty list of "
                       "{\"name\": str, \"queries\": [str, ...]}.")
    background = spec.get("background")
    if background is not None and (not isinstance(background, list)
                                   or not all(isinstance(w, str) for w in background)):
        raise ApiError(422, "bad_request", "'background' must be a list of words, or null.")
    n_classes = len(raw) + (1 if background else 0)
    if n_classes > limits.max_classes:
        raise ApiError(422, "too_many_classes", f"{n_classes} classes; this server accepts at most "
                       f"{limits.max_classes} per request.")
    prompts = []
    for i, item in enumerate(raw):
        if not (isinstance(item, dict) and isinstance(item.get("name"), str)
                and isinstance(item.get("queries"), list) and item["queries"]
                and all(isinstance(q, str) for q in item["queries"])):
            raise ApiError(422, "bad_request", f"Class {i + 1} must be {{\"name\": str, \"queries\": [str, ...]}}.")
        prompts.append(ClassPrompt(name=item["name"], queries=tuple(item["queries"])))
    words = [w for p in prompts for w in (p.name, *p.queries)] + list(background or [])
    if sum(len(p.queries) for p in prompts) + len(background or []) > limits.max_queries:
        raise ApiError(422, "prompt_too_long", f"More than {limits.max_queries} words in the class list.")
    longest = max(words, key=len)
    if len(longest) > limits.max_word_chars:
        raise ApiError(422, "prompt_too_long", f"A class word has {len(longest)} characters; this "
                       f"server accepts at most {limits.max_word_chars}.")
    try:
        prompts = normalize_classes(prompts)
    except ValueError as exc:
        raise ApiError(422, "bad_request", str(exc)) from None
    method, preset = spec.get("method"), spec.get("preset")
    if method is not None and method not in METHODS:
        raise ApiError(422, "bad_request", f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if preset is not None and preset not in PRESETS:
        raise ApiError(422, "bad_request", f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    refine = spec.get("refine")
    if refine is not None and refine not in ("pamr", "none"):
        raise ApiError(422, "bad_request", f"Unknown refine {refine!r}; choose 'pamr', 'none' or null "
                       "(null: the preset's default).")
    return {"image": key, "job_id": job_id, "classes": prompts, "background": background or None,
            "method": method, "preset": preset, "confidence": bool(spec.get("confidence", False)),
            "refine": refine}


def reply_body(result, spec: dict, queued_s: float) -> dict:
    """The JSON reply of a finished job (labels and confidence as PNG); runs in the engine's thread."""
    labels = result.labels
    timings = {k: float(v) for k, v in result.timings.items()}
    timings["server_queue"] = queued_s
    return {
        "image": spec["image"],
        "shape": list(labels.shape),
        "labels_png": encode_labels(labels, len(result.classes)),
        "confidence_png": encode_confidence(result.confidence) if spec["confidence"] else None,
        "classes": [{"name": c.name, "queries": list(c.queries)} for c in result.classes],
        "has_background": bool(result.has_background),
        "timings": timings,
        "from_cache": bool(result.from_cache),
        "finished": time.time(),
    }
