"""The FastAPI application: ``/health``, image upload, segmentation, job progress/cancel.

Every error is JSON, ``{"error": {"code": ..., "message": ...}}``, with a message that
says what to do; a 500 says only that the server failed, with an error id under which
the log holds the details (exception texts name files on the server). No value from a
request is ever used as a path: images are held in memory under their SHA-256, job ids
are opaque strings checked against a pattern.

Memory: request bodies, decodes, stored images and the images queued jobs wait on
share one byte budget (:class:`~._store.ImageStore`); a request that would cross it is
answered 503 with Retry-After, one that would wait behind a full queue 429.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from .. import __version__
from ._auth import check_bearer, is_loopback
from ._protocol import API_PREFIX, Limits, PayloadError, decode_payload, decoded_peak_bytes, is_image_key
from ._requests import (BODY_IDLE_TIMEOUT, ApiError, check_origin, error_reply, memory_full, parse_segment,
                        read_body, reply_body, require_json)
from ._store import BudgetFull, DecodeGate, DecodeQueueFull, ImageStore
from ._worker import EngineWorker, Job, QueueFull

__all__ = ["ApiError", "ENGINE_BYTES_PER_PIXEL", "STOPPED_MESSAGE", "create_app"]

log = logging.getLogger("napari_cass.server")

#: Working memory one running job may need per image pixel (labels, confidence, their
#: PNG encodings; measured ~8 B/px with tiny models at 40 MP), set aside per engine.
ENGINE_BYTES_PER_PIXEL = 12
STOPPED_MESSAGE = ("The server is stopping (it was asked to quit) and did not finish this request; "
                   "send it again once the server is back.")


def create_app(
    segmenter: Any,
    *,
    token: str | None = None,
    host: str = "127.0.0.1",
    limits: Limits | None = None,
    max_queue: int = 32,
    store_images: int = 64,
    memory_budget: int = 4 * 2**30,
    max_decodes: int = 2,
    body_timeout: float = BODY_IDLE_TIMEOUT,
    image_idle_seconds: float = 900.0,
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
        Requests that may wait for the engine (and uploads for a decode slot); one more
        is answered 429 with Retry-After.
    store_images : int
        Uploaded images kept for later requests.
    memory_budget : int
        Bytes for request bodies, decodes, stored and queued images, plus
        :data:`ENGINE_BYTES_PER_PIXEL` x ``max_pixels`` set aside per engine. Beyond it,
        503 with Retry-After.
    max_decodes : int
        Image decodes at once.
    body_timeout : float
        Seconds a request body may stall before the request is refused (408).
    image_idle_seconds : float
        Stored images no request named for this long are dropped (clients that left).
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
    working = len(worker.engines) * ENGINE_BYTES_PER_PIXEL * limits.max_pixels
    if working > memory_budget // 2:
        raise ValueError(
            f"A memory budget of {memory_budget / 2**30:.2f} GB is too small: {len(worker.engines)} engine(s) "
            f"need {working / 2**30:.2f} GB of working memory for images of {limits.max_pixels} pixels, and "
            "at least as much must remain for images. Raise --memory-budget-gb or lower --max-pixels.")
    store = ImageStore(store_images, memory_budget - working, idle_seconds=image_idle_seconds)
    decodes = DecodeGate(max_decodes, max_waiting=max_queue)
    stopping = threading.Event()
    jobs: dict[str, Job] = {}

    async def expire_idle_images() -> None:
        while True:
            await asyncio.sleep(min(30.0, store.idle_seconds / 4))
            if n := store.expire():
                log.info("Dropped %d image(s) no request named for %g s.", n, store.idle_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        stopping.clear()
        worker.start()
        expiry = asyncio.create_task(expire_idle_images())
        try:
            yield
        finally:
            stopping.set()
            expiry.cancel()
            await run_in_threadpool(worker.stop)

    app = FastAPI(title="napari-cass", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.worker, app.state.store, app.state.limits = worker, store, limits
    app.state.begin_stop = stopping.set  # called by the uvicorn server (see _uvicorn) as it stops
    if token is None:
        # No token on loopback: refuse other Host names, so a web page cannot reach the
        # server through DNS rebinding (browsers send the attacker's name as Host).
        allowed = {"127.0.0.1", "localhost", "::1", "[::1]", host.strip().strip("[]").lower()}
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=sorted(allowed))
    app.add_middleware(_AnswerWhenStopped)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_reply(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(BudgetFull)
    async def _budget_full(request: Request, exc: BudgetFull):
        err = memory_full(exc, worker.retry_after())
        return error_reply(err.status, err.code, err.message, err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = "not_found" if exc.status_code == 404 else "bad_request"
        return error_reply(exc.status_code, code, f"{exc.detail}: {request.method} {request.url.path}.")

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        err = internal_error(f"{request.method} {request.url.path}", exc)
        return error_reply(err.status, err.code, err.message)

    def authorize(request: Request) -> None:
        check_origin(request)
        if token is not None and not check_bearer(request.headers.get("authorization"), token):
            raise ApiError(401, "unauthorized", "Missing or wrong token: send 'Authorization: Bearer "
                           "<token>' with the token from the server's token file.",
                           {"WWW-Authenticate": "Bearer"})

    def busy(what: str) -> ApiError:
        wait = worker.retry_after()
        return ApiError(429, "busy", f"The server is busy ({what}); try again in {wait} s.",
                        {"Retry-After": str(wait)})

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
        return {**(await health()), "limits": limits.as_dict(), "stored_images": len(store),
                "memory": {**store.stats(), "engine_reserve_bytes": working}}

    @app.put(API_PREFIX + "/images/{key}")
    async def upload(key: str, request: Request):
        authorize(request)
        if not is_image_key(key):
            raise ApiError(400, "bad_request", "An image key is the lower-case hex SHA-256 of the payload.")
        if store.get(key) is not None:
            return JSONResponse({"image": key, "stored": True}, status_code=200)
        ctype, encoding = request.headers.get("content-type", ""), request.headers.get("content-encoding")
        with store.reservation() as held:
            body = await read_body(request, limits.max_upload_bytes, held, idle_timeout=body_timeout)
            try:
                peak = decoded_peak_bytes(body, ctype, encoding, limits)
                try:
                    async with decodes.slot():
                        await decodes.reserve(held, peak)  # counted before a byte of it is allocated
                        image = await run_in_threadpool(decode_payload, body, ctype, encoding, key, limits)
                except DecodeQueueFull as exc:
                    raise busy(str(exc)) from None
            except PayloadError as exc:
                raise ApiError(exc.status, exc.code, str(exc)) from None
            del body
            image = store.put(key, image, held)
        return JSONResponse({"image": key, "stored": True, "shape": list(image.shape),
                             "dtype": str(image.dtype)}, status_code=201)

    @app.post(f"{API_PREFIX}/segment")
    async def segment(request: Request):
        authorize(request)
        require_json(request)
        spec = parse_segment(await read_body(request, limits.max_json_bytes, idle_timeout=body_timeout), limits)
        job_id, key = spec["job_id"], spec["image"]
        if job_id in jobs:
            raise ApiError(409, "bad_request", f"Job id {job_id} is in use; send a new random id.")
        image = store.pin(key)  # counted in the budget until the job leaves, even if evicted
        if image is None:
            raise ApiError(428, "need_pixels", "This server does not hold that image (any more): "
                           f"upload it with PUT {API_PREFIX}/images/<key>, then repeat the request.")
        job = Job(id=job_id, image=image, classes=spec["classes"], background=spec["background"],
                  method=spec["method"], preset=spec["preset"], refine=spec.get("refine"),
                  on_done=lambda: store.unpin(key))
        job.finish = lambda result: reply_body(result, spec, (job.started or job.enqueued) - job.enqueued)
        del image
        try:
            worker.submit(job)
        except QueueFull as exc:
            job.leave()
            raise busy(str(exc)) from None
        jobs[job_id] = job
        try:
            return JSONResponse(await _wait(job, request, worker, stopping))
        finally:
            jobs.pop(job_id, None)

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
        worker.drop(find_job(job_id, request))
        return {"cancelled": True}

    return app


def internal_error(where: str, exc: BaseException) -> ApiError:
    """A 500 that tells the client an error id only; the log gets the id and the traceback."""
    ref = secrets.token_hex(4)
    log.error("Error %s in %s", ref, where, exc_info=(type(exc), exc, exc.__traceback__))
    return ApiError(500, "internal_error", f"The server failed on this request (error id {ref}); its log "
                    "has the details under that id. Try again, or give the id to the server's operator.")


async def _wait(job: Job, request: Request, worker: EngineWorker, stopping: threading.Event) -> dict:
    """The job's reply; a client that goes away, or a server that stops, drops its job."""
    from ..engine import SegmentationCancelled

    waiting = asyncio.wrap_future(job.future)
    try:
        while not waiting.done():
            done, _ = await asyncio.wait({waiting}, timeout=0.1)
            if done:
                break
            if stopping.is_set():
                worker.drop(job)
                raise ApiError(503, "server_stopped", STOPPED_MESSAGE, {"Retry-After": "30"})
            if not job.cancelled.is_set() and await request.is_disconnected():
                log.info("Client gone: dropping job %s", job.id)
                worker.drop(job)
    except BaseException:
        worker.drop(job)
        raise
    try:
        return waiting.result()
    except SegmentationCancelled:
        raise ApiError(409, "cancelled", "The job was cancelled.") from None
    except (ValueError, TypeError) as exc:  # bad input the engine refused
        raise ApiError(422, "bad_request", str(exc)) from None
    except Exception as exc:
        raise internal_error(f"job {job.id}", exc) from None


class _AnswerWhenStopped:
    """ASGI wrapper: a request cut short by the server's shutdown gets a 503 saying so.

    uvicorn cancels requests still running when its graceful-shutdown time is up; without
    this the client would get a bare 500 and the log a CancelledError traceback.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            log.info("Server stopping: %s %s ended unfinished", scope.get("method"), scope.get("path"))
            if not started:
                reply = error_reply(503, "server_stopped", STOPPED_MESSAGE, {"Retry-After": "30"})
                try:
                    await reply(scope, receive, send)
                except Exception:  # the connection is already gone
                    pass
