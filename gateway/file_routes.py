"""Adapt a route module (``async def GET(req)`` ... or ``handler``) into an endpoint of the route table."""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict

from .config import METHODS
from .discovery import RouteFile, RouteFileError
from .errors import BadRequest, MethodNotAllowed, PayloadTooLarge
from .forward.helper import PENDING, UpstreamResponse
from .paths import pattern_of
from .units import Rate, parse_duration, parse_rate, parse_size

Handler = Callable[[web.Request], Awaitable[Any]]
_JSON_READER = BaseRequest.json.__code__


@dataclass(frozen=True)
class RouteOptions:
    """A module's ``config = {...}``: per-route overrides of the global settings."""

    max_body: int | None = None
    rate_limit: Rate | None = None
    cache: float | None = None
    public: bool = False


def route_options(module: ModuleType, display: str) -> RouteOptions:
    raw = getattr(module, "config", None)
    if raw is None:
        return RouteOptions()
    if not isinstance(raw, dict):
        raise RouteFileError(f"{display}: config must be a dict such as {{'max_body': '5mb'}}")
    parsers: dict[str, Callable[[Any], Any]] = {
        "max_body": parse_size, "rate_limit": parse_rate, "cache": parse_duration, "public": _parse_bool,
    }
    values = {}
    for key, value in raw.items():
        if key not in parsers:
            raise RouteFileError(f"{display}: config: unknown key {key!r}: known keys: {', '.join(parsers)}")
        try:
            values[key] = parsers[key](value)
        except (ValueError, TypeError) as exc:
            raise RouteFileError(f"{display}: config[{key!r}]: {value!r}: {exc}") from None
    return RouteOptions(**values)


def _parse_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected True or False")
    return value


class FileEndpoint:
    """Dispatches by method: HEAD falls back to GET, OPTIONS answers 204 with Allow, anything else 405."""

    kind = "file"

    def __init__(self, route: RouteFile, module: ModuleType, prefix: str, *, app_max_body: int) -> None:
        self.segments = route.segments
        self.pattern = pattern_of(prefix, route.segments)
        self.target = self.source = route.display
        self.options = route_options(module, route.display)
        self.public = self.options.public
        self._handlers = _exported_handlers(module, route.display)
        self.methods = tuple(sorted(self._handlers))
        self.allow = ", ".join(self.methods)
        max_body = self.options.max_body
        self._max_body = max_body if max_body is not None and max_body != app_max_body else None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        handler = self._handlers.get(request.method)
        result: Any = None
        if handler is None:
            raise MethodNotAllowed(request.method, self.allow)
        limit = request.client_max_size if self._max_body is None else self._max_body
        if (request.content_length or 0) > limit:  # refused up front, whether or not the handler reads the body
            raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
        if self._max_body is not None:
            request = request.clone(client_max_size=self._max_body)
        try:
            result = await handler(request)
            if isinstance(result, UpstreamResponse):
                return await result.respond()
            return to_response(result)
        except web.HTTPRequestEntityTooLarge:  # a chunked body past the limit, found while reading it
            raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes") from None
        except (ValueError, LookupError) as exc:  # JSONDecodeError, or a body not in its declared (or known) charset
            if not _raised_by_request_json(exc):
                raise
            detail = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "undecodable text"
            raise BadRequest(f"the request body is not valid JSON: {detail}") from None
        finally:
            for pending in request.get(PENDING, ()):
                if pending is not result:
                    pending.close()


def _exported_handlers(module: ModuleType, display: str) -> dict[str, Handler]:
    handlers = {m: getattr(module, m) for m in METHODS if callable(getattr(module, m, None))}
    catch_all = getattr(module, "handler", None)
    if catch_all is not None and handlers:
        raise RouteFileError(f"{display}: exports both handler and {', '.join(handlers)}: keep one style")
    if catch_all is not None:
        handlers = dict.fromkeys(METHODS, catch_all)
    if not handlers:
        raise RouteFileError(
            f"{display}: exports no handler: define async def GET(req) (or POST, ...) or async def handler(req)"
        )
    for name, fn in handlers.items():
        if not inspect.iscoroutinefunction(fn):
            label = "handler" if catch_all is not None else name
            raise RouteFileError(f"{display}: {label} must be an async function (async def {label}(req): ...)")
    if "GET" in handlers:
        handlers.setdefault("HEAD", handlers["GET"])
    handlers.setdefault("OPTIONS", _options_handler(handlers))
    return handlers


def _options_handler(handlers: dict[str, Handler]) -> Handler:
    allow = ", ".join(sorted({*handlers, "OPTIONS"}))

    async def options(request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"Allow": allow})

    return options


def _raised_by_request_json(exc: BaseException) -> bool:
    """True when the JSONDecodeError came from ``await req.json()``, not from the handler parsing something else."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is _JSON_READER:
            return True
        tb = tb.tb_next
    return False


def to_response(result: Any) -> web.StreamResponse:
    """dict/list -> JSON, str -> text, bytes -> octet-stream, None -> 204, (body, status[, headers]), or as is."""
    if isinstance(result, web.StreamResponse):
        return result
    status, headers = None, None
    if isinstance(result, tuple):
        if len(result) not in (2, 3) or not isinstance(result[1], int):
            raise TypeError("a route may return (body, status) or (body, status, headers)")
        result, status, *rest = result
        headers = rest[0] if rest else None
    if result is None:
        response = web.Response(status=status or 204)
    elif isinstance(result, dict | list):
        response = web.Response(body=json.dumps(result).encode(), content_type="application/json")
    elif isinstance(result, str):
        response = web.Response(text=result, content_type="text/plain")
    elif isinstance(result, bytes | bytearray | memoryview):
        response = web.Response(body=bytes(result), content_type="application/octet-stream")
    else:
        raise TypeError(f"a route returned {type(result).__name__}, which is not a supported response type")
    if status is not None:
        response.set_status(status)
    if headers:
        extra = CIMultiDict(headers)
        for name, value in extra.items():
            if any(c in f"{name}{value}" for c in "\r\n\0"):  # aiohttp would drop the connection, not answer 500
                raise ValueError(f"a route returned a header with a line break or NUL in it: {name!r}")
        response.headers.update(extra)
    return response
