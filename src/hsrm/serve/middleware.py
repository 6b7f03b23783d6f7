"""What every request passes around a route: the API key, the body's byte limit, request metrics,
the error handlers that answer every refusal in OpenAI's shape, and the last resort that answers
an unexpected error in that shape too.

A pure ASGI middleware: Starlette's BaseHTTPMiddleware would hide client disconnects from the
handlers. It also catches what the app's exception handlers do not: Starlette answers those from
its outermost layer and then re-raises, and uvicorn closes a connection whose response had started
when the exception reached it, so the client's next request on that keep-alive connection failed.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import MutableMapping
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from hsrm.serve.protocol import INVALID_TEXT, ApiError

log = logging.getLogger(__name__)

#: Endpoints that answer without an API key (liveness probes and scrapers).
OPEN_PATHS = ("/health", "/metrics")
KNOWN_PATHS = (
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/score",
    "/get_reward",
    "/v1/models",
    "/health",
    "/metrics",
)


def bearer_ok(header: bytes, key: str) -> bool:
    """``Authorization: Bearer KEY``; the scheme is case-insensitive (RFC 9110 section 11.1)."""
    scheme, _, token = header.strip().partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key.encode())


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the request body exceeds this server's limit of {limit} bytes (--max-request-bytes)",
        code="request_too_large",
    )


class Gate:
    """Auth, the byte limit (checked before the body is parsed), metrics, the last resort."""

    def __init__(self, app: Any, ctx: Any):
        self.app, self.ctx = app, ctx

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx, t0 = self.ctx, time.perf_counter()
        path = scope.get("path", "")
        endpoint = path if path in KNOWN_PATHS else "other"
        status = [0]

        async def send_status(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        ctx.metrics.request_started()
        try:
            err = self._refuse(scope)
            body = None if err else await self._body(scope, receive)
            if body is None:
                err = err or _too_large(ctx.cfg.max_request_bytes)
                await err.response()(scope, receive, send_status)
                return
            await self.app(scope, _replay(body, receive), send_status)
        except Exception as e:
            if status[0]:  # the response has started: nothing left to answer with
                raise
            log.exception("serve: unexpected error on %s", path)
            msg = f"internal error: {type(e).__name__}"
            await ApiError(500, msg, type="server_error").response()(scope, receive, send_status)
        finally:
            ctx.metrics.request_done(endpoint, status[0] or 500, time.perf_counter() - t0)

    def _refuse(self, scope: dict) -> ApiError | None:
        """401 without the key, 413 for a declared length over the limit: before any body byte."""
        headers = dict(scope.get("headers") or [])
        key = self.ctx.cfg.api_key
        if key and scope.get("path", "") not in OPEN_PATHS:
            if not bearer_ok(headers.get(b"authorization", b""), key):
                return ApiError(
                    401,
                    "missing or incorrect API key (send 'Authorization: Bearer KEY')",
                    type="authentication_error",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.ctx.cfg.max_request_bytes:
            return _too_large(self.ctx.cfg.max_request_bytes)
        return None

    async def _body(self, scope: dict, receive: Any) -> bytes | None:
        """The whole body, or None once it passes the limit (a chunked body declares no length).
        Reading it here, before the route, bounds what the JSON parser is ever given."""
        limit, parts, size = self.ctx.cfg.max_request_bytes, [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left; the route will see it
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(parts)


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that gives the buffered body once, then the connection's own messages (so a
    route still sees the client disconnect)."""
    sent = False

    async def replay() -> MutableMapping[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# -- the app's error handlers: every refusal in OpenAI's shape -----------------------------------------------------------
async def _api_error(request: Request, e: Exception) -> Response:
    assert isinstance(e, ApiError)
    return e.response()


async def _http_error(request: Request, e: Exception) -> Response:
    """Starlette's own refusals: 404, 405, and a body FastAPI could not parse (not UTF-8, JSON
    nested deeper than the parser's recursion limit, a number too long to convert)."""
    assert isinstance(e, StarletteHTTPException)
    if e.status_code == 404:
        msg = f"Invalid URL ({request.method} {request.url.path})"
    elif e.status_code == 405:
        msg = f"{request.method} is not allowed on {request.url.path}"
    elif e.status_code == 400:
        msg = "the request body could not be parsed as JSON (is it UTF-8, nested too deeply?)"
    else:
        msg = str(e.detail)
    return ApiError(e.status_code, msg, headers=dict(e.headers or {})).response()


async def _invalid(request: Request, e: Exception) -> Response:
    assert isinstance(e, RequestValidationError)
    errs = e.errors()
    if any(err.get("type") == "json_invalid" for err in errs):
        return ApiError(400, "the request body is not valid JSON").response()
    bad_text = [err for err in errs if err.get("type") == INVALID_TEXT]
    first = (bad_text or errs or [{}])[0]
    loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
    if not loc and first.get("type") == "model_attributes_type":
        msg = "the request body must be a JSON object (Content-Type: application/json)"
    else:
        msg = f"{loc}: {first.get('msg', 'invalid request')}" if loc else "invalid request body"
    return ApiError(400 if bad_text else 422, msg, loc or None).response()


def add_error_handlers(app: Any) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
