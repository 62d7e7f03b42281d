"""The FastAPI application: ``/health``, image upload, segmentation, job progress/cancel.

Every error is JSON, ``{"error": {"code": ..., "message": ...}}``, with a message that
says what to do. No value from a request is ever used as a path: images are held in
memory under their SHA-256, job ids are opaque strings checked against a pattern.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from .. import __version__
from ._auth import check_bearer, is_loopback
from ._protocol import (API_PREFIX, Limits, PayloadError, decode_payload, encode_confidence, encode_labels,
                        is_image_key, is_job_id)
from ._worker import EngineWorker, ImageStore, Job, QueueFull

__all__ = ["ApiError", "create_app"]

log = logging.getLogger("napari_cass.server")


class ApiError(Exception):
    """An error reply: HTTP ``status``, a machine ``code`` and a human ``message``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _error(status: int, code: str, message: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def create_app(
    segmenter: Any,
    *,
    token: str | None = None,
    host: str = "127.0.0.1",
    limits: Limits | None = None,
    max_queue: int = 32,
    store_images: int = 64,
    store_bytes: int = 2 * 2**30,
) -> FastAPI:
    """Build the server application around one loaded ``segmenter``.

    Parameters
    ----------
    segmenter : Segmenter-like, or a list of them
        Loaded once; all requests share it through one :class:`EngineWorker`. A list
        gives one engine per device (same models on each), fed from one queue.
    token : str, optional
        Bearer token required on every ``/v1`` route. Mandatory unless ``host`` is loopback.
    host : str
        The address the server will bind: a non-loopback address without a token is refused.
    limits : Limits, optional
        Request limits (defaults: :class:`Limits`).
    max_queue : int
        Requests that may wait for the engine; one more is answered 429 with Retry-After.
    store_images, store_bytes : int
        Bound of the store of uploaded images (by count and by bytes).
    """
    if token is None and not is_loopback(host):
        raise ValueError(
            f"Refusing to serve on {host!r} without a token: anyone on the network could use it. "
            "Give --token-file, or bind to 127.0.0.1."
        )
    if token is not None and len(token) < 16:
        raise ValueError("The server token must have at least 16 characters.")
    limits = limits or Limits()
    worker = EngineWorker(segmenter, max_queue=max_queue)
    store = ImageStore(store_images, store_bytes)
    jobs: dict[str, Job] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        try:
            yield
        finally:
            await run_in_threadpool(worker.stop)

    app = FastAPI(title="napari-cass", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.worker, app.state.store, app.state.limits = worker, store, limits
    if token is None:
        # No token on loopback: refuse other Host names, so a web page cannot reach the
        # server through DNS rebinding (browsers send the attacker's name as Host).
        allowed = {"127.0.0.1", "localhost", "::1", "[::1]", host.strip().strip("[]").lower()}
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=sorted(allowed))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = "not_found" if exc.status_code == 404 else "bad_request"
        return _error(exc.status_code, code, f"{exc.detail}: {request.method} {request.url.path}.")

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("Unexpected error in %s %s", request.method, request.url.path)
        return _error(500, "internal_error", f"The server failed: {type(exc).__name__}: {exc}")

    def authorize(request: Request) -> None:
        if token is not None and not check_bearer(request.headers.get("authorization"), token):
            raise ApiError(401, "unauthorized", "Missing or wrong token: send 'Authorization: Bearer "
                           "<token>' with the token from the server's token file.",
                           {"WWW-Authenticate": "Bearer"})

    @app.get("/health")
    async def health() -> dict:
        seg = worker.segmenter
        return {
            "status": "ok" if worker.alive else "engine stopped",
            "version": __version__,
            "models": dict(getattr(seg, "model_names", {}) or {}),
            "method": worker.default_method,
            "preset": worker.default_preset,
            "device": ", ".join(dict.fromkeys(worker.devices)),
            "engines": len(worker.engines),
            "queue": {"waiting": worker.queued(), "max": worker.max_queue},
            "auth": token is not None,
        }

    @app.get(f"{API_PREFIX}/info")
    async def info(request: Request) -> dict:
        authorize(request)
        return {**(await health()), "limits": limits.as_dict(), "stored_images": len(store)}

    @app.put(API_PREFIX + "/images/{key}")
    async def upload(key: str, request: Request):
        authorize(request)
        if not is_image_key(key):
            raise ApiError(400, "bad_request", "An image key is the lower-case hex SHA-256 of the payload.")
        if store.get(key) is not None:
            return JSONResponse({"image": key, "stored": True}, status_code=200)
        body = await _read_body(request, limits.max_upload_bytes)
        try:
            image = await run_in_threadpool(
                decode_payload, body, request.headers.get("content-type", ""),
                request.headers.get("content-encoding"), key, limits,
            )
        except PayloadError as exc:
            raise ApiError(exc.status, exc.code, str(exc)) from None
        store.put(key, image)
        return JSONResponse({"image": key, "stored": True, "shape": list(image.shape),
                             "dtype": str(image.dtype)}, status_code=201)

    @app.post(f"{API_PREFIX}/segment")
    async def segment(request: Request):
        authorize(request)
        spec = _parse_segment(await _read_body(request, limits.max_json_bytes), limits)
        image = store.get(spec["image"])
        if image is None:
            raise ApiError(428, "need_pixels", "This server does not hold that image (any more): "
                           f"upload it with PUT {API_PREFIX}/images/<key>, then repeat the request.")
        job_id = spec["job_id"]
        if job_id in jobs:
            raise ApiError(409, "bad_request", f"Job id {job_id} is in use; send a new random id.")
        job = Job(id=job_id, image=image, classes=spec["classes"], background=spec["background"],
                  method=spec["method"], preset=spec["preset"])
        try:
            worker.submit(job)
        except QueueFull as exc:
            wait = worker.retry_after()
            raise ApiError(429, "busy", f"The server is busy ({exc}); try again in {wait} s.",
                           {"Retry-After": str(wait)}) from None
        jobs[job_id] = job
        try:
            result = await _wait(job, request)
        finally:
            jobs.pop(job_id, None)
        return await run_in_threadpool(_reply, job, result, spec)

    def find_job(job_id: str, request: Request):
        authorize(request)
        job = jobs.get(job_id)
        if job is None:
            raise ApiError(404, "not_found", f"No job {job_id} is queued or running.")
        return job

    @app.get(API_PREFIX + "/jobs/{job_id}")
    async def job_status(job_id: str, request: Request) -> dict:
        job = find_job(job_id, request)
        done, total, message = job.progress
        state = "queued" if job.started is None else "running"
        return {"state": state, "position": worker.position(job), "done": done, "total": total,
                "message": message}

    @app.delete(API_PREFIX + "/jobs/{job_id}")
    async def job_cancel(job_id: str, request: Request) -> dict:
        find_job(job_id, request).cancel()
        return {"cancelled": True}

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_request", "Invalid Content-Length header.")
        if int(declared) > limit:
            raise ApiError(413, "too_large", f"The request body is {declared} bytes; this server "
                           f"accepts at most {limit} on this route.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"The request body exceeds {limit} bytes, this server's limit.")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_segment(body: bytes, limits: Limits) -> dict:
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
    return {"image": key, "job_id": job_id, "classes": prompts, "background": background or None,
            "method": method, "preset": preset, "confidence": bool(spec.get("confidence", False))}


async def _wait(job: Job, request: Request):
    """The job's result; a client that goes away cancels its job."""
    from ..engine import SegmentationCancelled

    waiting = asyncio.wrap_future(job.future)
    while not waiting.done():
        done, _ = await asyncio.wait({waiting}, timeout=0.1)
        if not done and not job.cancelled.is_set() and await request.is_disconnected():
            log.info("Client gone: cancelling job %s", job.id)
            job.cancel()
    try:
        return waiting.result()
    except SegmentationCancelled:
        raise ApiError(409, "cancelled", "The job was cancelled.") from None
    except (ValueError, TypeError) as exc:  # bad input the engine refused
        raise ApiError(422, "bad_request", str(exc)) from None
    except Exception as exc:
        log.exception("Job %s failed", job.id)
        raise ApiError(500, "internal_error", f"Segmentation failed on the server: "
                       f"{type(exc).__name__}: {exc}") from None


def _reply(job: Job, result, spec: dict) -> JSONResponse:
    labels = result.labels
    timings = {k: float(v) for k, v in result.timings.items()}
    timings["server_queue"] = (job.started or job.enqueued) - job.enqueued
    body = {
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
    return JSONResponse(body)
