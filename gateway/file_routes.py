"""Adapt a route module (``async def GET(req)`` ... or ``handler``) into an endpoint of the route table."""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from .config import METHODS
from .config_jwt import auth_mode
from .discovery import RouteFile, RouteFileError
from .errors import BadRequest, MethodNotAllowed, PayloadTooLarge
from .intake import GatewayRequest
from .keys import CLAIMS, HEAD_AS_GET, PENDING, Resources
from .paths import pattern_of
from .pipeline.body import paced
from .pipeline.helper import UpstreamResponse
from .routing import Handler
from .units import Rate, parse_duration, parse_rate, parse_size

RouteFunction = Callable[[web.Request], Awaitable[Any]]  # a module's GET, POST ... or handler


@dataclass(frozen=True)
class RouteOptions:
    """A module's ``config = {...}``: per-route overrides of the global settings."""

    max_body: int | None = None
    rate_limit: Rate | None = None
    cache: float | None = None
    public: bool = False
    auth: str | None = None  # "jwt", "api_key" or "public": the one kind of client this route admits


def route_options(module: ModuleType, display: str) -> RouteOptions:
    raw = getattr(module, "config", None)
    if raw is None:
        return RouteOptions()
    if not isinstance(raw, dict):
        raise RouteFileError(f"{display}: config must be a dict such as {{'max_body': '5mb'}}")
    parsers: dict[str, Callable[[Any], Any]] = {
        "max_body": parse_size, "rate_limit": parse_rate, "cache": parse_duration, "public": _parse_bool,
        "auth": auth_mode,
    }
    values = {}
    for key, value in raw.items():
        if key not in parsers:
            raise RouteFileError(f"{display}: config: unknown key {key!r}: known keys: {', '.join(parsers)}")
        try:
            values[key] = parsers[key](value)
        except (ValueError, TypeError) as exc:
            raise RouteFileError(f"{display}: config[{key!r}]: {value!r}: {exc}") from None
    if values.get("public") and values.get("auth", "public") != "public":
        raise RouteFileError(f"{display}: config: 'public': True and 'auth': {values['auth']!r} disagree: keep one")
    if values.get("auth") == "public":
        values["public"] = True
    return RouteOptions(**values)


def _parse_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected True or False")
    return value


class FileEndpoint:
    """Dispatches by method: HEAD falls back to GET, anything the module does not answer gets 405."""

    kind = "file"
    websocket = False
    receives = None  # a handler may read any request header
    exposes: tuple[str, ...] = ()
    upstream = None  # a handler may call any upstream
    budgeted = False  # forward() calls an upstream's own chain: budgets are a YAML forward's

    def __init__(self, route: RouteFile, module: ModuleType, prefix: str, *, app_max_body: int) -> None:
        self.segments = route.segments
        self.pattern = pattern_of(prefix, route.segments)
        self.target = self.source = route.display
        self.options = route_options(module, route.display)
        self.public = self.options.public
        self.rate_limit, self.cache = self.options.rate_limit, self.options.cache
        self.auth = self.options.auth
        own = _exported_handlers(module, route.display)
        self.own_options = "OPTIONS" in own  # else the gateway answers OPTIONS (pipeline/build.py)
        self._head_from_get = "HEAD" not in own and "GET" in own
        self._handlers = {**own, "HEAD": own["GET"]} if self._head_from_get else own
        self.methods = tuple(sorted({*self._handlers, "OPTIONS"}))
        self.allow = ", ".join(self.methods)
        max_body = self.options.max_body
        self._max_body = max_body if max_body is not None and max_body != app_max_body else None

    def terminal(self, res: Resources) -> Handler:
        handlers, allow, own_limit, head_as_get = self._handlers, self.allow, self._max_body, self._head_from_get

        async def file_endpoint(request: web.Request) -> web.StreamResponse:
            handler = handlers.get(request.method)
            if handler is None:
                raise MethodNotAllowed(request.method, allow)
            limit = request.client_max_size if own_limit is None else own_limit
            if (request.content_length or 0) > limit:  # refused up front, whether or not the handler reads the body
                raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
            request = request.clone(client_max_size=own_limit) if own_limit is not None else request
            request.__class__ = RouteRequest  # json() answers a bad body with 400 (same layout: no new state)
            if head_as_get and request.method == "HEAD":
                request[HEAD_AS_GET] = True
            result: Any = None
            try:
                result = await handler(request)
                if isinstance(result, UpstreamResponse):
                    return await result.respond(request)
                return to_response(result)
            except web.HTTPRequestEntityTooLarge:  # a chunked body past the limit, found while reading it
                raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes") from None
            finally:
                for pending in request.get(PENDING, ()):
                    if pending is not result:
                        await pending.aclose()

        return file_endpoint

class RouteRequest(GatewayRequest):
    """The request a route handler gets: an ``aiohttp.web.Request`` whose ``json()`` turns a body that is not JSON
    (or not in its charset) into a 400 ``bad_request``, decided here, where the body is parsed."""

    # SPEC §8: handlers read the verified claims as req["claims"]; they live under the typed key (a plain str key
    # set on a request is an aiohttp NotAppKeyWarning), so that one name is read through it
    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(CLAIMS if key == "claims" else key)

    def get(self, key: Any, default: Any = None) -> Any:
        return super().get(CLAIMS if key == "claims" else key, default)

    def __contains__(self, key: object) -> bool:
        return super().__contains__(CLAIMS if key == "claims" else key)

    async def read(self) -> bytes:
        """aiohttp's ``read()`` (bounded by max_body: 413), whose body must keep a pace (pipeline/body.py: 408)."""
        if self._read_bytes is None:
            body = bytearray()
            async for chunk in paced(self._payload):
                body.extend(chunk)
                if self._client_max_size and len(body) > self._client_max_size:
                    raise web.HTTPRequestEntityTooLarge(max_size=self._client_max_size, actual_size=len(body))
            self._read_bytes = bytes(body)
        return self._read_bytes

    async def json(self, *, loads: Callable[[str], Any] = json.loads) -> Any:
        try:
            text = await self.text()
        except (LookupError, UnicodeDecodeError):
            raise BadRequest("the request body is not valid JSON: undecodable text") from None
        try:
            return loads(text)
        except ValueError as exc:
            detail = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise BadRequest(f"the request body is not valid JSON: {detail}") from None


def _exported_handlers(module: ModuleType, display: str) -> dict[str, RouteFunction]:
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
    return handlers


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
