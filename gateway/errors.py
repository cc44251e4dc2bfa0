"""The gateway's own errors: each knows its status, code and a public message safe to show a client.

    GatewayError
    ├── BadRequest            400 bad_request
    ├── Unauthorized          401 unauthorized
    ├── Forbidden             403 forbidden
    ├── NotFound              404 not_found
    ├── MethodNotAllowed      405 method_not_allowed   (carries Allow)
    ├── PayloadTooLarge       413 payload_too_large
    ├── RateLimited           429 rate_limited         (carries Retry-After)
    ├── InternalError         500 internal_error
    ├── UpstreamError         502 upstream_error
    ├── UpstreamUnavailable   502 upstream_unavailable
    ├── Unavailable           503 unavailable          (carries Retry-After)
    └── UpstreamTimeout       504 upstream_timeout

They are rendered as ``{"error": code, "message": ...}`` in exactly one place (``error_response``).
"""

from __future__ import annotations

import json

from aiohttp import web

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "rate_limited",
    500: "internal_error",
    502: "upstream_error",
    503: "unavailable",
    504: "upstream_timeout",
}


class GatewayError(Exception):
    status = 500
    code = "internal_error"
    message = "internal error"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message or self.message)
        if message:
            self.message = message
        self.headers = headers or {}


class BadRequest(GatewayError):
    status, code, message = 400, "bad_request", "bad request"


class Unauthorized(GatewayError):
    status, code, message = 401, "unauthorized", "a valid API key is required"


class Forbidden(GatewayError):
    status, code, message = 403, "forbidden", "forbidden"


class NotFound(GatewayError):
    status, code, message = 404, "not_found", "no route matches this path"


class MethodNotAllowed(GatewayError):
    status, code, message = 405, "method_not_allowed", "method not allowed"

    def __init__(self, method: str, allow: str) -> None:
        super().__init__(f"{method} is not allowed here; allowed: {allow}", headers={"Allow": allow})


class PayloadTooLarge(GatewayError):
    status, code, message = 413, "payload_too_large", "request body is too large"


class RateLimited(GatewayError):
    status, code, message = 429, "rate_limited", "too many requests"


class InternalError(GatewayError):
    status, code, message = 500, "internal_error", "internal error"


class UpstreamError(GatewayError):
    status, code, message = 502, "upstream_error", "the upstream service failed"


class UpstreamUnavailable(GatewayError):
    status, code, message = 502, "upstream_unavailable", "the upstream service could not be reached"


class Unavailable(GatewayError):
    status, code, message = 503, "unavailable", "the service is unavailable; retry shortly"


class UpstreamTimeout(GatewayError):
    status, code, message = 504, "upstream_timeout", "the upstream service did not answer in time"


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps({"error": code, "message": message}).encode()
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def render(exc: GatewayError) -> web.Response:
    return error_response(exc.status, exc.code, exc.message, exc.headers)


def render_http_exception(exc: web.HTTPException) -> web.Response:
    """aiohttp's own 4xx/5xx (from the router or raised by a handler with its default text body) as JSON."""
    code = _HTTP_CODES.get(exc.status, "bad_request" if exc.status < 500 else "internal_error")
    headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After", "WWW-Authenticate")}
    return error_response(exc.status, code, exc.reason.lower() if exc.reason else code, headers)


def has_default_body(exc: web.HTTPException) -> bool:
    return exc.text == f"{exc.status}: {exc.reason}"
