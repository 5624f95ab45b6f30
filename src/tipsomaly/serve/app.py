"""The FastAPI application: :func:`create_app` wires the service, the routes, the page and the
request guard.

Lifespan: startup starts loading the detector in the background (so ``/health`` answers 503
until it is ready, instead of the port staying closed); shutdown, which uvicorn runs after
in-flight requests have finished (SIGTERM: stop accepting, drain, exit), answers whatever is
still queued and stops the model thread.

:class:`Guard` is a plain ASGI middleware that refuses a request before its body is read:
401 without the bearer token (``/v1/`` paths, when a token is set), 413 for a body over the
limit (declared by ``Content-Length``, or counted when the body comes chunked).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from .config import ServeConfig
from .errors import QueueFullError, ServiceError
from .monitoring import CountRequests
from .records_routes import router as records_router
from .routes import STATIC, router
from .service import Service

if TYPE_CHECKING:
    from ..method.pipeline import Predictor

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: paths that need the token when one is set (the page and /health stay open: the page asks
#: for the token, and a load balancer's health check has none)
PROTECTED_PREFIX = "/v1/"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
NO_TOKEN = {
    "detail": "missing or wrong token: send the header 'Authorization: Bearer TOKEN' (the "
    "server's --token or $TIPSOMALY_SERVE_TOKEN)"
}


def create_app(
    config: ServeConfig,
    load: Callable[[], Predictor],
    *,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The service as an ASGI app (run it with uvicorn, or test it with FastAPI's TestClient).

    Args:
        config: limits, batching, token and classes (:class:`~.config.ServeConfig`).
        load: builds the predictor (a :class:`~tipsomaly.method.detector.Detector`, or an
            export's :class:`~tipsomaly.deploy.inferencers.ExportedDetector`); called once, in
            a background thread, when the app starts.
        on_fatal: called with the exception if ``load`` fails (``tipsomaly serve`` stops then).

    Example:
        >>> app = create_app(ServeConfig(), lambda: Detector("l14h"))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    service = Service(config, load, on_fatal=on_fatal)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.close, config.drain_timeout_s)

    app = FastAPI(
        title="tipsomaly",
        version=__version__,
        description="Zero-shot and few-shot visual anomaly detection (TipsOmaly on TIPS).",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI loads from a CDN: not on an inspection line
        redoc_url=None,
        openapi_url="/v1/openapi.json",
    )
    app.state.service = service
    app.include_router(router)
    app.include_router(records_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(Guard, token=config.token, max_body=config.max_upload_bytes)
    app.add_middleware(CountRequests, metrics=service.metrics)  # outermost: counts refusals too
    return app


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    level = logging.WARNING if isinstance(exc, QueueFullError) else logging.DEBUG
    logger.log(level, "%s %s: %d %s", request.method, request.url.path, exc.status, exc)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"detail": f"internal error ({type(exc).__name__}); see the server's log"}, status_code=500
    )


class Guard:
    """Token and body-size checks before the body is read (see the module doc).

    A refused body is read and discarded when it is small enough (at most
    ``max(4 × max_body, 16 MiB)``), so the client, still sending, receives the answer rather
    than a reset connection; a larger one is not, and the connection closes after the answer.
    Clients sending ``Expect: 100-continue`` (curl, for large bodies) get the answer without
    sending the body.
    """

    def __init__(self, app: ASGIApp, *, token: str | None, max_body: int) -> None:
        self.app = app
        self.token = None if token is None else token.encode()
        self.max_body = max_body
        self.drain_limit = max(4 * max_body, 16 * 2**20)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        declared = _content_length(headers)
        if self.token is not None and scope["path"].startswith(PROTECTED_PREFIX):
            if not self._authorised(headers.get(b"authorization")):
                await self._discard(receive, headers, declared)
                await _json(send, 401, NO_TOKEN, {"WWW-Authenticate": 'Bearer realm="tipsomaly"'})
                return
        if scope["method"] in BODY_METHODS:
            if declared == -1:
                await _json(send, 400, {"detail": "malformed Content-Length header"})
                return
            if declared is not None and declared > self.max_body:
                await self._discard(receive, headers, declared)
                await self._too_large(send, declared)
                return
            if declared is None and b"transfer-encoding" in headers:
                body, size, ended = await _read_body(receive, self.max_body)
                if body is None:
                    if not ended:
                        await self._discard(receive, headers, None, already=size)
                    await self._too_large(send, size)
                    return
                receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _authorised(self, value: bytes | None) -> bool:
        if value is None:
            return False
        scheme, _, credentials = value.strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(
            credentials.strip(), self.token or b""
        )

    async def _too_large(self, send: Send, size: int) -> None:
        detail = (
            f"request body of {size:,} bytes or more is over the limit of {self.max_body:,} "
            f"bytes ({self.max_body / 2**20:g} MiB, --max-upload-mb)"
        )
        await _json(send, 413, {"detail": detail})

    async def _discard(
        self, receive: Receive, headers: dict[bytes, bytes], declared: int | None, already: int = 0
    ) -> None:
        """Read and drop the body (see the class doc for when)."""
        if headers.get(b"expect", b"").lower() == b"100-continue":
            return
        if declared is not None and declared > self.drain_limit:
            return
        seen = already
        while seen <= self.drain_limit:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


def _content_length(headers: dict[bytes, bytes]) -> int | None:
    """The declared body size; ``None`` when absent, -1 when malformed."""
    value = headers.get(b"content-length")
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        return -1
    return n if n >= 0 else -1


async def _read_body(receive: Receive, limit: int) -> tuple[bytes | None, int, bool]:
    """``(body, size, True)`` for a body of at most ``limit`` bytes, else ``(None, bytes read
    so far, whether the body ended)``."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts), size, True
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        size += len(chunk)
        if size > limit:
            return None, size, not more
        parts.append(chunk)
        if not more:
            return b"".join(parts), size, True


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` giving ``body`` once, then the connection's own messages (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    payload = json.dumps(body).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


__all__ = ["Guard", "create_app"]
