"""`fruitpipe serve`: a trained bundle behind HTTP (FastAPI on uvicorn), plus the upload page.

Bad input never becomes a 500: every way a request can be wrong maps to a 4xx with a JSON body
{"error": "..."}. Uploads are counted while they stream in (and Content-Length is checked before
anything is read), so an oversized body is refused without being held in memory. Inference is
CPU-bound and runs in worker threads, at most `concurrency` at a time, so the event loop (and
/health) stays responsive while photos are being classified.
"""
from __future__ import annotations

import io
import logging
import os
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from fruitpipe import __version__
from fruitpipe.image.decode import DecodeError

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and small fields around the file
MAX_FORM_FIELDS = 8
DEFAULT_TOP_K = 5
FILE_FIELD = "file"
TOP_K_HELP = "how many classes to return, most probable first (capped at the number of classes)"
PAGE_CSP = ("default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'")
HEALTH_KEYS = ("model", "weights_sha256", "onnx_sha256", "feature_dim", "input_size", "k", "classifier",
               "classes", "created", "temperature", "threshold", "tta", "novelty_threshold", "not_fruit")
PREDICT_BODY = {  # the multipart body is parsed by hand (to bound it), so OpenAPI is told its shape here
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": [FILE_FIELD],
        "properties": {FILE_FIELD: {"type": "string", "format": "binary", "description": "a JPEG or PNG photo"}},
    }}},
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {"application/json": {"example": {"error": "..."}}}}
    for status, text in ((400, "malformed multipart body"), (413, "upload too large"),
                         (415, "not multipart/form-data"),
                         (422, "missing file field, bad top_k, or not a decodable image"))}


class Predictor(Protocol):
    """What the app needs from a bundle (fruitpipe.recognise.bundle.Bundle, or a stand-in in tests)."""

    classes: list[str]

    def answer_bytes(self, data: bytes, top_k: int = DEFAULT_TOP_K) -> Any: ...  # an Answer (.unknown, .reason)

    def describe(self) -> dict[str, Any]: ...


class RequestError(Exception):
    """A client error: becomes `status` with {"error": message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def create_app(bundle: Predictor, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, concurrency: int = 1) -> FastAPI:
    """The HTTP app around a loaded bundle: POST /predict, GET /health, GET / (the page), /openapi.json.

    `concurrency` bounds simultaneous inferences; more requests wait their turn (they do not fail).
    FastAPI's /docs and /redoc are disabled: they load their JavaScript from a CDN, and this
    server must work offline. The OpenAPI document is at /openapi.json."""
    if max_upload_bytes < 1:
        raise ValueError(f"the upload limit must be positive, got {max_upload_bytes} bytes")
    if concurrency < 1:
        raise ValueError(f"concurrency must be a positive integer, got {concurrency}")
    app = FastAPI(title="fruitpipe", version=__version__, docs_url=None, redoc_url=None,
                  description="Fruit recogniser: POST a photo to /predict, get the most probable classes.")
    limiter = anyio.CapacityLimiter(concurrency)
    _add_error_handlers(app)
    health = _health_document(bundle, max_upload_bytes, concurrency)
    page = resources.files("fruitpipe.recognise").joinpath("web", "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff"})

    @app.get("/health")
    async def get_health() -> dict[str, Any]:
        """The server is up; which model it serves and its limits."""
        return health

    @app.post("/predict", openapi_extra={"requestBody": PREDICT_BODY}, responses=ERROR_RESPONSES)
    async def predict(request: Request,
                      top_k: int = Query(DEFAULT_TOP_K, ge=1, description=TOP_K_HELP)) -> dict[str, Any]:
        """Classify one photo sent as the multipart field `file`."""
        filename, data = await _read_upload(request, max_upload_bytes)
        try:
            answer, seconds = await anyio.to_thread.run_sync(
                partial(_timed_predict, bundle, data, min(top_k, len(bundle.classes))), limiter=limiter)
        except DecodeError as exc:
            raise RequestError(422, f"not a usable image: {exc}") from None
        return {
            "unknown": bool(answer.unknown),  # not sure (low confidence or unlike training): the guesses follow
            **({"unknown_reason": answer.reason} if answer.unknown else {}),
            "predictions": [{"label": p.label, "probability": p.probability} for p in answer.predictions],
            # a model trained with outlier photos: the probability of "not a fruit" (the fruit share the rest)
            **({"not_fruit": answer.not_fruit} if answer.not_fruit is not None else {}),
            "filename": filename,
            "bytes": len(data),
            "inference_ms": round(seconds * 1000.0, 3),  # decode + CNN + classifier, without the wait for a slot
        }

    app.mount("/static", StaticFiles(packages=[("fruitpipe.recognise", "web")]), name="static")
    return app


def _timed_predict(bundle: Predictor, data: bytes, top_k: int) -> tuple[Any, float]:
    started = time.perf_counter()
    answer = bundle.answer_bytes(data, top_k)
    return answer, time.perf_counter() - started


def _health_document(bundle: Predictor, max_upload_bytes: int, concurrency: int) -> dict[str, Any]:
    described = bundle.describe()
    return {"status": "ok", "version": __version__, **{key: described[key] for key in HEALTH_KEYS if key in described},
            "max_upload_bytes": max_upload_bytes, "concurrency": concurrency}


def _add_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's, leaves as {"error": "..."}."""

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(part) for part in error['loc'][1:]) or 'request'}: {error['msg']}"
                             for error in exc.errors())
        return JSONResponse({"error": problems or "invalid request"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal server error"}, status_code=500)


async def _read_upload(request: Request, max_upload_bytes: int) -> tuple[str, bytes]:
    """The `file` part of a multipart/form-data body, refusing anything over the limit as it streams in."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise RequestError(415, f"expected multipart/form-data with the photo in the field '{FILE_FIELD}', "
                                f"got {content_type or 'no content type'}")
    body_limit = max_upload_bytes + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > body_limit:
        raise RequestError(413, _too_large(max_upload_bytes))
    parser = MultiPartParser(request.headers, _bounded(request.stream(), body_limit, max_upload_bytes),
                             max_files=1, max_fields=MAX_FORM_FIELDS, max_part_size=MULTIPART_OVERHEAD)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise RequestError(400, f"malformed multipart body: {exc.message}") from None
    try:
        upload = form.get(FILE_FIELD)
        if upload is None:
            raise RequestError(422, f"missing the multipart field '{FILE_FIELD}' "
                                    f"(send the photo as {FILE_FIELD}=@photo.jpg)")
        if isinstance(upload, str):
            raise RequestError(422, f"the field '{FILE_FIELD}' must be a file upload, not a text value")
        if upload.size is not None and upload.size > max_upload_bytes:
            raise RequestError(413, _too_large(max_upload_bytes))
        return upload.filename or "", await upload.read()
    finally:
        await form.close()


async def _bounded(stream: AsyncIterator[bytes], limit: int, max_upload_bytes: int) -> AsyncGenerator[bytes, None]:
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > limit:
            raise RequestError(413, _too_large(max_upload_bytes))
        yield chunk


def _too_large(max_upload_bytes: int) -> str:
    return f"upload too large: the limit is {max_upload_bytes} bytes ({max_upload_bytes / 2**20:.4g} MiB)"


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before serving, so a busy port or a bad host is an OSError (one CLI line), and port 0 works.

    The protocol is given explicitly: asyncio sets TCP_NODELAY only on accepted sockets whose proto is
    IPPROTO_TCP, and without it every keep-alive response waited ~40 ms for a delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def warm_up(bundle: Predictor) -> None:
    """One prediction before listening: the ONNX Runtime session is created now, not on the first request."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (255, 255, 255)).save(buffer, "PNG")
    bundle.answer_bytes(buffer.getvalue(), top_k=1)


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000,
          max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, threads: int = 1, concurrency: int | None = None,
          threshold: float | None = None, tta: int | None = None, novelty_threshold: float | None = None,
          not_fruit: bool = True) -> None:
    """Load the bundle, bind, and run uvicorn until interrupted; `threshold` and `tta` replace the bundle's own.

    Defaults: one ONNX Runtime thread per inference and one inference per core. On the 2-core
    reference machine that gave the higher throughput from 2 concurrent clients on; 2 threads x 1
    inference has the lower single-client latency (bench/serve_results.json)."""
    import uvicorn

    from fruitpipe.recognise.bundle import Bundle

    bundle = Bundle.load(model_dir, threads=threads, threshold=threshold, tta=tta, novelty_threshold=novelty_threshold,
                         not_fruit=not_fruit)
    app = create_app(bundle, max_upload_bytes=max_upload_bytes, concurrency=concurrency or os.cpu_count() or 1)
    sock = bind_socket(host, port)
    warm_up(bundle)
    bound_host, bound_port = sock.getsockname()[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    logger.info("serving %s (%d classes, temperature %.4g, threshold %s, tta %d) on http://%s:%d/",
                bundle.describe()["model"], len(bundle.classes), bundle.temperature,
                "none" if bundle.threshold is None else f"{bundle.threshold:.4g}", bundle.tta, shown_host, bound_port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5))
    server.run(sockets=[sock])
