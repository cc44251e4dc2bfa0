"""Assemble the aiohttp application: the route table under the prefix, health checks, and error rendering."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiohttp import web, web_response

from .auth import require_api_key
from .config import Config
from .discovery import RouteFileError, discover, import_route, prepare_imports
from .edge.cache import cache, vary_headers
from .edge.identity import Step, identify
from .edge.ratelimit import rate_limit, route_policies
from .errors import (
    GatewayError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    error_response,
    has_default_body,
    render,
    render_http_exception,
)
from .file_routes import FileEndpoint
from .forward.endpoint import ForwardEndpoint
from .forward.scrub import Scrubber
from .forward.sessions import upstream_sessions
from .keys import ANSWER_HEADERS
from .paths import pattern_of
from .request_id import add_request_id
from .routing import Endpoint, FallbackResource, GatewayResource, Handler, RouteConflict, RouteTable
from .state import State, open_state

log = logging.getLogger("gateway")
SERVER_HEADER = "gateway"  # a fixed generic word: no software name, no version


@dataclass
class Runtime:
    scrubber: Scrubber
    debug: bool = False
    draining: bool = False


CONFIG = web.AppKey("config", Config)
RUNTIME = web.AppKey("runtime", Runtime)
TABLE = web.AppKey("table", RouteTable)
STATE = web.AppKey("state", State)


class StartupError(Exception):
    """Problems that stop the gateway from starting, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def build_table(config: Config) -> RouteTable:
    """Discover and import every route file, add the forwards, and check that no two answer the same path."""
    routes_dir = config.routes_dir
    display_dir = config.server.routes.as_posix().rstrip("/")
    table = RouteTable(config.server.prefix)
    files, problems = discover(routes_dir, display_dir)
    prepare_imports(routes_dir)
    endpoints = []
    for route in files:
        try:
            module = import_route(route, routes_dir)
            endpoints.append(FileEndpoint(route, module, table.prefix, app_max_body=config.server.max_body))
        except RouteFileError as exc:
            problems.append(str(exc))
    for forward in config.forwards:
        endpoints.append(ForwardEndpoint(forward, config, table.prefix))
    for endpoint in endpoints:
        try:
            table.add(endpoint)
        except RouteConflict as exc:
            problems.append(str(exc))
    if problems:
        raise StartupError(problems)
    return table


def create_app(config: Config, table: RouteTable, *, debug: bool = False) -> web.Application:
    app = web.Application(client_max_size=config.server.max_body)
    app[CONFIG] = config
    scrubber = Scrubber(config.secret_values)  # one for the app: upstream bodies, headers and our own log lines
    app[RUNTIME] = Runtime(scrubber, debug=debug)
    app[TABLE] = table
    app.router.add_route("*", "/healthz", guard(healthz))
    app.router.add_route("*", "/readyz", guard(readyz))
    keys = config.clients.api_keys
    protect = require_api_key(keys) if keys else None
    app[STATE] = state = open_state(cache_size=config.server.cache_size)
    edge = edge_stack(config, state)
    app.router.register_resource(GatewayResource(table, redirect_trailing_slash, wrap=guard, protect=protect,
                                                 edge=edge))
    app.router.register_resource(FallbackResource(guard(not_found)))  # last: whatever nothing else matched
    # aiohttp sets "Server: Python/3.x aiohttp/3.x" on every response that has none, also on a request it cannot
    # parse (before any app code runs): replacing that default is the one way to keep software and version out.
    web_response.SERVER_SOFTWARE = SERVER_HEADER
    app.on_response_prepare.append(add_request_id)
    app.on_response_prepare.append(merge_answer_headers)
    app.on_shutdown.append(_start_draining)
    app.cleanup_ctx.append(upstream_sessions(config, scrubber))
    app.on_cleanup.append(_close_state)
    return app


def edge_stack(config: Config, state: State) -> Callable[[Endpoint], Handler]:
    """Interim, until the pipeline's build_endpoint (issue 6): per endpoint, after the API-key check,
    identify -> rate_limit -> cache -> the endpoint. Each factory returns None when its setting is absent.
    """
    forwards = {pattern_of(config.server.prefix, f.segments): f for f in config.forwards}
    upstreams = config.upstreams
    every_forwarded = [name for upstream in upstreams.values() for name in upstream.forward_headers]
    file_timeout = max((upstream.timeout for upstream in upstreams.values()), default=30.0)
    identified = identify(config.server.trusted_proxies)

    def build(endpoint: Endpoint) -> Handler:
        forward = forwards.get(endpoint.pattern) if endpoint.kind == "forward" else None
        if forward is not None:
            upstream = upstreams[forward.upstream]
            rate, ttl = forward.rate_limit, forward.cache
            vary, timeout = vary_headers(upstream.forward_headers), upstream.timeout
        else:  # a route module may call forward() to any upstream: it may vary on any forwarded header
            options = getattr(endpoint, "options", None)
            rate = options.rate_limit if options is not None else None
            ttl = options.cache if options is not None else None
            vary, timeout = vary_headers(every_forwarded), file_timeout
        limiter = rate_limit(route_policies(config.clients.rate_limit, rate, endpoint.pattern), state)
        return stack(endpoint.handle, [
            identified if limiter is not None else None,  # nothing else reads the identity yet
            limiter,
            cache(ttl, state, pattern=endpoint.pattern, vary=vary, timeout=timeout),
        ])

    return build


def stack(handler: Handler, steps: Sequence[Step | None]) -> Handler:
    """``stack(h, [a, b])`` -> a request passes a, then b, then h; ``None`` steps are left out."""
    for step in reversed(steps):
        if step is not None:
            handler = _bind(step, handler)
    return handler


def _bind(step: Step, call_next: Handler) -> Handler:
    async def bound(request: web.Request) -> web.StreamResponse:
        return await step(request, call_next)

    return bound


async def _close_state(app: web.Application) -> None:
    await app[STATE].close()


def guard(handler: Handler) -> Handler:
    """Wrap a handler so that its exceptions become responses: the one place where that happens.

    A wrapper per route rather than an aiohttp middleware: middlewares cost every request a few extra frames.
    """

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            limit = request.client_max_size
            return render(PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes"))
        except web.HTTPException as exc:
            if exc.status >= 400 and has_default_body(exc):
                return render_http_exception(exc)
            raise  # a redirect, or an error with a body of the handler's own: aiohttp sends it as is
        except Exception as exc:  # CancelledError is a BaseException: a client that left is not an error
            return _error_response(request, exc)

    return guarded


def _error_response(request: web.Request, exc: Exception) -> web.Response:
    """The gateway's own errors as JSON, never a traceback (except under ``gateway dev``)."""
    if isinstance(exc, GatewayError):
        return render(exc)
    runtime = request.app[RUNTIME]
    # a handler's exception may quote a secret it read from the environment: scrub before it is logged or shown
    trace = runtime.scrubber.scrub_text("".join(traceback.format_exception(exc)))
    log.error("unhandled error in %s %s\n%s", request.method, request.rel_url.path, trace.rstrip())
    if runtime.debug:
        return error_response(500, "internal_error", trace)
    return render(InternalError())


async def merge_answer_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the headers every answer to this request carries (RateLimit, X-Cache), errors and
    streams included. Interim: the pipeline's own hook (issue 6) replaces this one.
    """
    extra = request.get(ANSWER_HEADERS)
    if extra:
        for name in extra.keys():
            response.headers.popall(name, None)
        response.headers.extend(extra)


async def not_found(request: web.Request) -> web.StreamResponse:
    raise NotFound()


async def healthz(request: web.Request) -> web.Response:
    _only_get(request)
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    _only_get(request)
    if request.app[RUNTIME].draining:
        return error_response(503, "unavailable", "the gateway is shutting down", {"Retry-After": "1"})
    return web.json_response({"status": "ready"})


def _only_get(request: web.Request) -> None:
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed(request.method, "GET, HEAD")


async def redirect_trailing_slash(request: web.Request) -> web.StreamResponse:
    """``/api/users/`` -> 308 ``/api/users``, as Next.js does; never a scheme-relative ``//host`` Location."""
    path = request.rel_url.raw_path.rstrip("/") or "/"
    if path.startswith(("//", "/\\")):
        raise NotFound()
    query = request.rel_url.raw_query_string
    location = f"{path}?{query}" if query else path
    return web.Response(status=308, headers={"Location": location})


async def _start_draining(app: web.Application) -> None:
    app[RUNTIME].draining = True


__all__ = ["CONFIG", "RUNTIME", "STATE", "TABLE", "StartupError", "build_table", "create_app", "RouteFileError"]
