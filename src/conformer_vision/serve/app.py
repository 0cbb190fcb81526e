"""The HTTP application of ``conformer serve`` (FastAPI), its limits, metrics and the web page.

Endpoints:

* ``POST /v1/predict[?topk=K&heads=true]``: multipart fields ``file`` (one or several images) ->
  ``{"predictions": [[{"class", "name", "prob"}, ...], ...]}``, one top-k list per image in upload order;
  ``heads=true`` adds each head's probability of the same classes (``cnn_prob``, ``transformer_prob``).
* ``POST /v1/explain``: one ``file`` -> Grad-CAM of the fused top-1 class on both branches, as PNG data URLs.
* ``GET /v1/model``: the model's description and the server's limits.
* ``GET /healthz`` (the process answers), ``GET /readyz`` (model loaded and warmed up, not draining),
  ``GET /metrics`` (Prometheus text format), ``GET /`` (the web page), ``/docs`` and ``/openapi.json``.

Every error is ``{"error": "..."}`` with a 4xx/5xx status: 400 malformed request, 401 missing or wrong
API key, 413 body or image count over the limit, 415 not multipart, 422 an upload that is not a usable
image (the reason from ``load_rgb``: not an image, truncated, decompression bomb...), 501 explain on
an ONNX model, 503 queue full / warming up / shutting down (with ``Retry-After``), 504 timed out.
"""

# No "from __future__ import annotations": FastAPI reads the endpoints' annotations (Request, Query)
# at definition time, and they are imported inside create_app.
import asyncio
import contextlib
import functools
import hmac
import importlib.resources
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ImageDecodeError
from .batching import Batcher, Job
from .model import ServedModel

__all__ = ["ServeSettings", "ServeState", "create_app"]

log = logging.getLogger("conformer_vision.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DISCARD_LIMIT = 64 * 2**20
"""Bodies refused for their size are still read (and dropped) up to this size, so the client gets the 413."""

ENDPOINTS = (
    "/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/model",
    "/v1/predict",
    "/v1/explain",
    "/docs",
    "/openapi.json",
)
"""Metric labels: these paths by name, anything else as 'other' (a flood of random URLs adds no series)."""


@dataclass(frozen=True)
class ServeSettings:
    """The limits and defaults of one server (``conformer serve``'s options)."""

    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64  # images admitted and not yet answered; more -> 503
    max_images: int = 16  # images in one request; more -> 413
    max_body_bytes: int = 16 * 2**20  # request body; more -> 413
    timeout_s: float = 30.0  # from arrival to answer; longer -> 504
    topk: int = 5  # default top-k
    api_key: str | None = None
    retry_after_s: int = 1


class Metrics:
    """Prometheus series of one server, in their own registry (several apps may share a process)."""

    def __init__(self, max_batch_size: int) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "conformer_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "conformer_request_latency_seconds",
            "Time from request arrival to the end of the response",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
        )
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, max_batch_size})
        self.batch_size = Histogram(
            "conformer_batch_size",
            "Images per model batch",
            buckets=[s for s in sizes if s <= max_batch_size],
            registry=self.registry,
        )
        self.inference = Histogram("conformer_batch_inference_seconds", "Model time per batch", registry=self.registry)
        self.images = Counter("conformer_images", "Images answered by the model", registry=self.registry)
        self.queue_depth = Gauge("conformer_queue_depth", "Images waiting for the model thread", registry=self.registry)
        self.in_flight = Gauge(
            "conformer_images_in_flight", "Images admitted and not yet answered", registry=self.registry
        )

    def batch_done(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)
        self.images.inc(size)


class ServeState:
    """What the endpoints share: model, batcher, settings, metrics, admission count, drain flag."""

    def __init__(self, model: ServedModel, settings: ServeSettings) -> None:
        self.model, self.settings = model, settings
        self.metrics = Metrics(settings.max_batch_size)
        self.batcher = Batcher(
            model.run_batch,
            model.explain,
            settings.max_batch_size,
            settings.max_wait_ms / 1000.0,
            on_batch=self.metrics.batch_done,
            warm_up=lambda: model.warm_up(settings.max_batch_size),
        )
        self.in_flight = 0
        self.metrics.queue_depth.set_function(lambda: float(self.batcher.depth))
        self.metrics.in_flight.set_function(lambda: float(self.in_flight))
        self.draining = False
        self.decoder: ThreadPoolExecutor | None = None
        self.scratch: Path | None = None

    def start(self) -> None:
        """Model thread (warm-up first), the decoding thread and the private upload folder."""
        self.scratch = Path(tempfile.mkdtemp(prefix="conformer-serve-"))
        # one thread: load_rgb is not thread-safe (warnings filters are process-wide)
        self.decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conformer-decode")
        self.batcher.start()

    def drain(self) -> None:
        """Refuse new work (503), run what is queued without waiting for batches to fill."""
        self.draining = True
        self.batcher.flush()

    def stop(self) -> None:
        self.draining = True
        self.batcher.stop(timeout=self.settings.timeout_s + 10)
        if self.decoder is not None:
            self.decoder.shutdown(wait=True)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)  # the folder start() made, upload files only


class HttpError(Exception):
    """An expected failure of a request: becomes ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@functools.cache
def page_html() -> str:
    """The web page (``page.html`` next to this module, package data)."""
    return importlib.resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")


def create_app(state: ServeState) -> Any:
    """The ASGI application: FastAPI routes wrapped in ``HttpGuard`` (body limit, request metrics)."""
    from fastapi import Depends, FastAPI, Query, Request
    from fastapi.responses import HTMLResponse, Response

    settings, model = state.settings, state.model

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        state.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, state.stop)

    app = FastAPI(
        title="conformer serve",
        version="1",
        lifespan=lifespan,
        redoc_url=None,
        description=f"Conformer image classifier: {model.source.name} ({model.predictor.backend}).",
    )
    app.state.serve = state

    _install_error_handlers(app)

    def authorised(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, key = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), settings.api_key.encode()):
            reason = "missing" if not given else "wrong"
            raise HttpError(
                401,
                f"{reason} API key: send the header 'Authorization: Bearer KEY'",
                {"WWW-Authenticate": 'Bearer realm="conformer serve"'},
            )

    guarded = [Depends(authorised)]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html())

    @app.get("/healthz", summary="the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", summary="model loaded and warmed up, not shutting down")
    async def readyz() -> Any:
        not_ready = _not_ready(state)
        if not_ready:
            return _error(503, not_ready, {"Retry-After": str(settings.retry_after_s)})
        return {"status": "ready", "model": model.source.name}

    @app.get("/metrics", dependencies=guarded, summary="Prometheus metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model", dependencies=guarded, summary="the model and the server's limits")
    async def model_info() -> dict[str, Any]:
        limits = {
            k: getattr(settings, k)
            for k in ("max_batch_size", "max_wait_ms", "max_queue", "max_images", "max_body_bytes", "timeout_s", "topk")
        }
        return {**model.describe(), "limits": limits, "ready": not _not_ready(state)}

    upload_doc = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    }
                }
            },
        }
    }

    @app.post(
        "/v1/predict",
        dependencies=guarded,
        openapi_extra=upload_doc,
        summary="top-k classes of one or several images (multipart fields named 'file')",
    )
    async def predict(
        request: Request,
        topk: int | None = Query(
            None, ge=1, description="classes per image (default: the server's --topk; at most the model's classes)"
        ),
        heads: bool = Query(False, description="add each head's probability (cnn_prob, transformer_prob)"),
    ) -> dict[str, Any]:
        k = settings.topk if topk is None else topk  # more than the classes: all of them, as predict --topk
        results = await _run_images(state, request, "predict")
        return {"predictions": [model.top_k(r, k, heads=heads) for r in results]}

    @app.post(
        "/v1/explain",
        dependencies=guarded,
        openapi_extra=upload_doc,
        summary="Grad-CAM of both branches for one image (PyTorch models)",
    )
    async def explain(request: Request) -> dict[str, Any]:
        if not model.can_explain:
            raise HttpError(
                501,
                f"Grad-CAM needs a PyTorch model; this server runs {model.source.name} through "
                f"{model.predictor.backend} (serve the checkpoint to get explanations)",
            )
        (result,) = await _run_images(state, request, "explain")
        return result

    return HttpGuard(app, state)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _install_error_handlers(app: Any) -> None:
    """Every error as ``{"error": message}``: ours, Starlette's (404, 405, multipart parsing),
    FastAPI's parameter validation (as 400) and unexpected exceptions (500, logged with the traceback)."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(HttpError)
    async def _http_error(_r: Request, e: HttpError) -> Any:
        return _error(e.status, e.message, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(_r: Request, e: StarletteHTTPException) -> Any:
        return _error(e.status_code, str(e.detail), dict(e.headers or {}))

    @app.exception_handler(Exception)
    async def _internal_error(_r: Request, e: Exception) -> Any:
        return _error(500, f"internal error ({type(e).__name__}: {e})")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_r: Request, e: RequestValidationError) -> Any:
        parts = [f"{'.'.join(str(x) for x in err.get('loc', ()))}: {err.get('msg', '')}" for err in e.errors()]
        return _error(400, "; ".join(parts) or "invalid request")


def _not_ready(state: ServeState) -> str:
    """Why the server cannot take work now ('' when it can)."""
    if state.draining:
        return "the server is shutting down"
    if state.batcher.failed is not None:
        return f"the model failed to warm up ({type(state.batcher.failed).__name__}: {state.batcher.failed})"
    if not state.batcher.ready.is_set():
        return "the model is warming up"
    return ""


async def _run_images(state: ServeState, request: Any, kind: str) -> list[Any]:
    """Parse the uploads, admit them, decode, queue them for the model and wait for the results."""
    settings = state.settings
    deadline = time.monotonic() + settings.timeout_s
    not_ready = _not_ready(state)
    if not_ready:
        headers = {"Retry-After": str(settings.retry_after_s)}
        if state.draining:
            headers["Connection"] = "close"
        raise HttpError(503, not_ready, headers)
    uploads = await _read_uploads(request, settings.max_images if kind == "predict" else 1)  # explain: one
    if state.in_flight + len(uploads) > settings.max_queue:
        raise HttpError(
            503,
            f"the server is busy ({state.in_flight} images in flight, at most {settings.max_queue}); retry later",
            {"Retry-After": str(settings.retry_after_s)},
        )
    state.in_flight += len(uploads)
    jobs: list[Job] = []
    try:
        loop = asyncio.get_running_loop()
        contents = [await upload.read() for upload in uploads]
        names = [upload.filename or f"file {i + 1}" for i, upload in enumerate(uploads)]
        images = await asyncio.wait_for(
            loop.run_in_executor(state.decoder, _decode_all, state, contents, names), _left(deadline, settings)
        )
        jobs = [Job(image, loop.create_future(), loop, kind=kind) for image in images]
        state.batcher.submit(jobs)
        return list(await asyncio.wait_for(asyncio.gather(*(job.future for job in jobs)), _left(deadline, settings)))
    except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
        raise HttpError(
            504,
            f"no answer within {settings.timeout_s:g} s (the server's --timeout_s): the model is "
            "overloaded or the images are too large; retry later or send fewer images",
        ) from None
    finally:
        for job in jobs:
            job.abandoned = True  # answered or given up: either way the model thread may skip it
        state.in_flight -= len(uploads)


def _left(deadline: float, settings: ServeSettings) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


async def _read_uploads(request: Any, max_images: int) -> list[Any]:
    """The ``file`` fields of a multipart body (415 for another content type, 400/413 for bad counts)."""
    from starlette.datastructures import UploadFile

    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise HttpError(
            415,
            "send the images as multipart/form-data with one field named 'file' per image "
            f"(got Content-Type {content_type or 'none'!r})",
        )
    form = await request.form(max_files=max_images * 4 + 16, max_fields=64)
    fields = form.getlist("file")
    if not fields:
        raise HttpError(400, "no image: send each image as a multipart field named 'file'")
    if any(not isinstance(f, UploadFile) for f in fields):
        raise HttpError(400, "the field 'file' must be a file upload (filename given), not a text value")
    if len(fields) > 1 and max_images == 1:
        raise HttpError(400, f"{len(fields)} images sent; this endpoint explains one image per request")
    if len(fields) > max_images:
        raise HttpError(413, f"{len(fields)} images in one request; at most {max_images} are taken (split the request)")
    return fields


def _decode_all(state: ServeState, contents: list[bytes], names: list[str]) -> list[torch.Tensor]:
    """Decode and preprocess every upload (decoding thread); 422 naming the first unusable one."""
    assert state.scratch is not None
    images = []
    for i, (data, name) in enumerate(zip(contents, names)):
        try:
            images.append(state.model.decode(data, state.scratch))
        except ImageDecodeError as e:
            which = f"file {i + 1} ({name!r})" if len(names) > 1 else repr(name)
            raise HttpError(422, f"{which} is not a usable image: {e.reason}") from None
    return images


class HttpGuard:
    """ASGI middleware around the whole app: refuses bodies over the size limit (413) before anything
    reads them, and counts every request by endpoint and status with its latency."""

    def __init__(self, app: Any, state: ServeState) -> None:
        self.app, self.state = app, state
        self.max_body = state.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await self._discard_body(scope, receive)
                await _send_json(send_and_record, *refusal)
            elif _header(scope, b"content-length") is None and _header(scope, b"transfer-encoding") is not None:
                await self._buffered(scope, receive, send_and_record)
            else:
                await self.app(scope, receive, send_and_record)
        finally:
            metrics = self.state.metrics
            metrics.requests.labels(endpoint, str(status[0])).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        length = _header(scope, b"content-length")
        if length is None:
            return None
        if not length.isdigit():
            return 400, f"invalid Content-Length {length!r}"
        if int(length) > self.max_body:
            return 413, self._too_large(int(length))
        return None

    async def _discard_body(self, scope: Scope, receive: Receive) -> None:
        """Read and drop a refused body of up to DISCARD_LIMIT bytes before answering: a client that is
        still sending when the connection closes sees a reset instead of the 413 (browsers, httpx and
        requests send the whole body before reading the answer). Larger bodies are not read."""
        length = _header(scope, b"content-length")
        if length is None or not length.isdigit() or int(length) > DISCARD_LIMIT:
            return
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return

    def _too_large(self, size: int | None) -> str:
        got = f"{size / 2**20:.1f} MiB" if size is not None else "more"
        return f"request body of {got} is over the limit of {self.max_body / 2**20:g} MiB (the server's --max_body_mb)"

    async def _buffered(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A chunked body (no Content-Length): read it up to the limit, then hand it on."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                await _send_json(send, 413, self._too_large(None))
                return
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


async def _send_json(send: Send, status: int, message: str) -> None:
    """A complete JSON error response; the connection is closed after it (the body was not read)."""
    import json

    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
