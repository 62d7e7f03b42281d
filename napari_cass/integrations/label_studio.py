"""``napari-cass serve --label-studio URL``: the server answers as a Label Studio ML backend.

Label Studio calls ``GET /health``, ``POST /setup`` and ``POST /predict`` on the URL a
user connects under *Project > Settings > Model* (and ``POST /webhook`` for project
events, accepted and ignored). ``/predict`` gets the tasks and the project's labeling
config; for each task the image is fetched from Label Studio (:class:`ImageFetcher`),
segmented by the server's engine queue into the ``<Label>`` values of the
``<BrushLabels>`` tag (a label's ``prompts="cat | kitten"`` gives its words), and
returned as one BrushLabels result per class present, in Label Studio's brush RLE.
The config travels with each request, so labels added later are used at once.

Authentication: when the server has a token (any non-loopback address), Label Studio
connects with *Basic auth* (any user name, the server's token as password) or a
``Bearer`` header. Nothing here imports FastAPI until :meth:`LabelStudioBackend.mount`.
"""

import argparse  # no "from __future__ import annotations": FastAPI reads the route annotations
import asyncio
import base64
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._ls_config import BrushTarget, LabelConfigError, brush_target
from ._ls_fetch import FetchError, ImageFetcher
from ._ls_rle import encode_rle

__all__ = ["LabelStudioBackend", "add_label_studio_arguments", "brush_results", "label_studio_from_args"]

MAX_PREDICT_BYTES = 16 * 2**20  # a batch of tasks with their data and the labeling config


def brush_results(result: Any, target: BrushTarget, *, prefix: str = "") -> tuple[list[dict], float]:
    """One BrushLabels result per label present in ``result``, and the mean confidence.

    ``result`` is a :class:`~napari_cass.engine.SegmentationResult` whose classes are
    ``target.labels`` in order (after a background class when ``has_background``).
    Each result's ``score`` is the mean winning probability over its pixels.
    """
    labels = np.asarray(result.labels)
    height, width = labels.shape
    confidence = np.asarray(result.confidence, dtype=np.float64)
    offset = 1 if result.has_background else 0
    out = []
    for k, label in enumerate(target.labels):
        mask = labels == k + offset
        if not mask.any():
            continue
        out.append({
            "id": f"{prefix}{k}",
            "from_name": target.from_name,
            "to_name": target.to_name,
            "type": "brushlabels",
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": 0,
            "value": {"format": "rle", "rle": encode_rle(mask), "brushlabels": [label]},
            "score": round(float(confidence[mask].mean()), 4),
            "readonly": False,
        })
    return out, round(float(confidence.mean()), 4)


@dataclass
class LabelStudioBackend:
    """What the server needs to answer Label Studio: where images come from, background words.

    Parameters
    ----------
    fetcher : ImageFetcher
        Reads task images from Label Studio (or allowed hosts).
    background : tuple of str
        Words of a background class (class 0, never returned as a result); empty for none.
    """

    fetcher: ImageFetcher
    background: tuple[str, ...] = ()

    # ------------------------------------------------------------------ protocol, without HTTP
    def model_version(self, worker: Any, target: BrushTarget | None) -> str:
        """``napari-cass-<version> <method>/<preset> <clip>+<vfm> labels-<hash>``.

        The hash names the labels, their words and the background words: Label Studio
        skips tasks that already hold a prediction of the current version, so a label
        edit gives a new version and new predictions.
        """
        from .. import __version__

        names = dict(getattr(worker.segmenter, "model_names", {}) or {})
        models = "+".join(str(names[k]) for k in ("clip", "vfm") if names.get(k)) or "models"
        weights = names.get("clip_weights")
        if weights and weights != "openai":
            models += f"({weights})"
        tail = f" labels-{target.fingerprint(self.background)}" if target is not None else ""
        return f"napari-cass-{__version__} {worker.default_method}/{worker.default_preset} {models}{tail}"

    def prompts(self, target: BrushTarget, limits: Any) -> list:
        """The engine's class prompts for ``target``'s labels, checked against the server's limits."""
        from ..engine import ClassPrompt, normalize_classes

        n_classes = len(target.labels) + (1 if self.background else 0)
        if n_classes > limits.max_classes:
            raise ValueError(f"The project has {n_classes} labels; this server accepts at most {limits.max_classes}.")
        words = [w for ws in target.words for w in ws] + list(self.background)
        if len(words) > limits.max_queries:
            raise ValueError(f"The labels have {len(words)} words; this server accepts at most {limits.max_queries}.")
        longest = max(words, key=len)
        if len(longest) > limits.max_word_chars:
            raise ValueError(f"The label word {longest[:40]!r}... has {len(longest)} characters; this server "
                             f"accepts at most {limits.max_word_chars}.")
        return normalize_classes([ClassPrompt(name=n, queries=w) for n, w in zip(target.labels, target.words)])

    # ------------------------------------------------------------------ HTTP
    def mount(self, app: Any, token: str | None) -> None:
        """Add ``POST /setup``, ``/predict`` and ``/webhook`` to the server's ``app``.

        ``GET /health`` is the server's own (Label Studio needs only a 200 JSON reply).
        Segmentation goes through the server's engine queue, like every other request.
        """
        from fastapi import APIRouter, Request
        from starlette.concurrency import run_in_threadpool

        from ..server._app import ApiError

        router = APIRouter()
        worker, limits = app.state.worker, app.state.limits

        def authorize(request: Request) -> None:
            if token is not None and not _check_auth(request.headers.get("authorization"), token):
                raise ApiError(401, "unauthorized", "Missing or wrong credentials: in Label Studio's model "
                               "settings turn on Basic authentication with any user name and the server's "
                               "token as password.", {"WWW-Authenticate": 'Basic realm="napari-cass"'})

        async def body_json(request: Request, limit: int) -> dict:
            body = await _read_limited(request, limit, ApiError)
            try:
                doc = json.loads(body or b"{}")
            except (ValueError, UnicodeDecodeError) as exc:
                raise ApiError(400, "bad_request", f"The request body is not valid JSON ({exc}).") from None
            if not isinstance(doc, dict):
                raise ApiError(400, "bad_request", "The request body must be a JSON object.")
            return doc

        def target_of(config: Any) -> BrushTarget:
            try:
                return brush_target(config)
            except LabelConfigError as exc:
                raise ApiError(422, "bad_request", str(exc)) from None

        @router.post("/setup")
        async def setup(request: Request) -> dict:
            authorize(request)
            doc = await body_json(request, limits.max_json_bytes)
            target = target_of(doc.get("schema"))  # the access_token Label Studio sends is not used
            return {"model_version": self.model_version(worker, target)}

        @router.post("/webhook")
        async def webhook(request: Request) -> dict:
            await _read_limited(request, limits.max_json_bytes, ApiError)  # events are not acted on
            return {"status": "ok"}

        @router.post("/predict")
        async def predict(request: Request) -> dict:
            authorize(request)
            doc = await body_json(request, MAX_PREDICT_BYTES)
            target = target_of(doc.get("label_config"))
            tasks = doc.get("tasks")
            if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
                raise ApiError(400, "bad_request", "'tasks' must be a list of task objects.")
            try:
                prompts = self.prompts(target, limits)
            except ValueError as exc:
                raise ApiError(422, "bad_request", str(exc)) from None
            version = self.model_version(worker, target)
            results = []
            for task in tasks:
                results.append(await self._predict_task(task, target, prompts, version, worker, request,
                                                        run_in_threadpool, ApiError))
            return {"results": results, "model_version": version}

        app.include_router(router)

    async def _predict_task(self, task, target, prompts, version, worker, request, run_in_threadpool, ApiError):
        from ..server._worker import Job, QueueFull

        tid = task.get("id", "?")
        data = task.get("data")
        url = data.get(target.data_key) if isinstance(data, dict) else None
        if not isinstance(url, str):
            raise ApiError(422, "bad_request", f"Task {tid} has no data.{target.data_key} (the field "
                           f'<Image value="${target.data_key}"> reads).')
        try:
            image = await run_in_threadpool(self.fetcher.fetch, url)
        except FetchError as exc:
            raise ApiError(422, "bad_image", f"Task {tid}: {exc}") from None
        job = Job(id=f"ls-{secrets.token_hex(8)}", image=image, classes=prompts,
                  background=list(self.background) or None)
        try:
            worker.submit(job)
        except QueueFull as exc:
            wait = worker.retry_after()
            raise ApiError(429, "busy", f"The server is busy ({exc}); try again in {wait} s.",
                           {"Retry-After": str(wait)}) from None
        result = await _wait(job, request, worker, ApiError)
        items, score = await run_in_threadpool(brush_results, result, target, prefix=f"cass{tid}-")
        return {"result": items, "score": score, "model_version": version}


async def _wait(job, request, worker, ApiError):
    """The job's result; a Label Studio that hangs up (or a server that stops) drops it."""
    from ..engine import SegmentationCancelled

    drop = getattr(worker, "drop", None) or (lambda j: j.cancel())
    waiting = asyncio.wrap_future(job.future)
    try:
        while not waiting.done():
            done, _ = await asyncio.wait({waiting}, timeout=0.1)
            if not done and not job.cancelled.is_set() and await request.is_disconnected():
                drop(job)
    except BaseException:
        drop(job)
        raise
    try:
        return waiting.result()
    except SegmentationCancelled:
        raise ApiError(409, "cancelled", "The prediction was cancelled.") from None
    except (ValueError, TypeError) as exc:
        raise ApiError(422, "bad_request", str(exc)) from None


async def _read_limited(request, limit: int, ApiError) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"The request body is {declared} bytes; at most {limit} are accepted.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"The request body exceeds {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_auth(header: str | None, token: str) -> bool:
    """``Bearer <token>``, or ``Basic`` with the token as password (Label Studio's ML auth)."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.casefold() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode("utf-8").partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return False
    elif scheme.casefold() != "bearer":
        return False
    return hmac.compare_digest(value.encode("utf-8"), token.encode("utf-8"))


# --------------------------------------------------------------------------- command line
def add_label_studio_arguments(parser: argparse.ArgumentParser) -> None:
    """``--label-studio URL`` and its settings, on ``napari-cass serve``."""
    g = parser.add_argument_group("Label Studio ML backend (see README: Use with Label Studio)")
    g.add_argument("--label-studio", metavar="URL", default=None,
                   help="also answer as a Label Studio ML backend (POST /setup, /predict); URL is Label "
                        "Studio's address, where task images are fetched, e.g. http://127.0.0.1:8080")
    g.add_argument("--label-studio-token-file", type=Path, default=None, metavar="PATH",
                   help="file holding a Label Studio API token (first line; mode 0600) to read task images")
    g.add_argument("--label-studio-background", default=None, metavar="WORDS",
                   help='background words for every project, e.g. "sky, wall" (no result is returned for them)')
    g.add_argument("--label-studio-allow-host", action="append", default=[], metavar="HOST",
                   help="another host task images may be fetched from (no token is sent there); repeatable")


def label_studio_from_args(args: argparse.Namespace, limits: Any = None) -> LabelStudioBackend | None:
    """The backend ``args`` ask for (None without ``--label-studio``); checks the token file at once."""
    url = getattr(args, "label_studio", None)
    if not url:
        for flag in ("label_studio_token_file", "label_studio_background"):
            if getattr(args, flag, None) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} needs --label-studio URL.")
        return None
    from ..server import read_token

    token = read_token(args.label_studio_token_file) if args.label_studio_token_file else None
    background: tuple[str, ...] = ()
    if args.label_studio_background is not None:
        background = tuple(w.strip() for w in args.label_studio_background.replace("|", ",").split(",") if w.strip())
        if not background:
            raise ValueError('--label-studio-background is empty; give words such as "sky, wall".')
    kwargs = {}
    if limits is not None:
        kwargs = {"max_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels}
    fetcher = ImageFetcher(url, token, args.label_studio_allow_host, **kwargs)
    return LabelStudioBackend(fetcher, background)
