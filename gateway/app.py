"""Assemble the aiohttp application: the route table under the prefix, health checks, and error rendering."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web, web_response

from .auth import require_api_key
from .config import Config
from .discovery import RouteFileError, discover, import_route, prepare_imports
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
from .forward.sessions import UPSTREAMS, build_upstreams, upstream_sessions
from .forward.upstream import Upstream
from .observe import METRICS, OBSERVER, Metrics, Observer, metrics_handler, observe, stream_opened
from .request_id import add_request_id
from .routing import Endpoint, FallbackResource, GatewayResource, Handler, RouteConflict, RouteTable

log = logging.getLogger("gateway")
SERVER_HEADER = "gateway"  # a fixed generic word: no software name, no version


@dataclass
class Runtime:
    scrubber: Scrubber
    debug: bool = False
    draining: bool = False
    retiring: set[asyncio.Task[None]] = field(default_factory=set)  # old pools closing after a reload


CONFIG = web.AppKey("config", Config)
RUNTIME = web.AppKey("runtime", Runtime)
TABLE = web.AppKey("table", RouteTable)
RESOURCE = web.AppKey("resource", GatewayResource)


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
    metrics = Metrics() if config.server.metrics else None
    app[OBSERVER] = observer = Observer(metrics)
    app.router.add_route("*", "/healthz", guard(healthz))
    app.router.add_route("*", "/readyz", guard(readyz))
    if metrics is not None and config.server.metrics:
        app[METRICS] = metrics
        app.router.add_route("*", config.server.metrics, guard(metrics_handler))
    resource = GatewayResource(table, redirect_trailing_slash, wrap=guard, build=edge_stacks(config, observer))
    app[RESOURCE] = resource
    app.router.register_resource(resource)
    app.router.register_resource(FallbackResource(guard(not_found)))  # last: whatever nothing else matched
    # aiohttp sets "Server: Python/3.x aiohttp/3.x" on every response that has none, also on a request it cannot
    # parse (before any app code runs): replacing that default is the one way to keep software and version out.
    web_response.SERVER_SOFTWARE = SERVER_HEADER
    app.on_response_prepare.append(add_request_id)
    app.on_response_prepare.append(stream_opened(observer))
    app.on_shutdown.append(_start_draining)
    app.cleanup_ctx.append(upstream_sessions(config, scrubber))
    return app


def edge_stacks(config: Config, observer: Observer) -> Callable[[Endpoint], Handler]:
    """Each endpoint's handler: errors rendered (guard) -> observed -> client key checked -> the endpoint."""
    keys = config.clients.api_keys
    protect = require_api_key(keys) if keys else None

    def build(endpoint: Endpoint) -> Handler:
        handler = endpoint.handle if endpoint.public or protect is None else protect(endpoint.handle)
        step = observe(observer, route=endpoint.pattern)

        async def observed(request: web.Request) -> web.StreamResponse:
            return await step(request, handler)

        return guard(observed)

    return build


def swap(app: web.Application, config: Config, table: RouteTable) -> None:
    """SIGHUP: new requests are answered from ``config`` and ``table`` with new upstream pools; requests already
    running finish on the old ones, whose pools are closed once those requests are over."""
    runtime = app[RUNTIME]
    # first: on a new prefix it raises ValueError before anything has changed
    app[RESOURCE].swap(table, edge_stacks(config, app[OBSERVER]))
    runtime.scrubber = Scrubber(config.secret_values)
    upstreams = app[UPSTREAMS]  # the same dict, filled anew: the running app cannot take a new one
    old = list(upstreams.values())
    upstreams.clear()
    upstreams.update(build_upstreams(config, runtime.scrubber))
    task = asyncio.ensure_future(_retire(app[OBSERVER], old))
    runtime.retiring.add(task)
    task.add_done_callback(runtime.retiring.discard)


async def _retire(observer: Observer, upstreams: list[Upstream]) -> None:
    await observer.settled()
    for upstream in upstreams:
        await upstream.pool.close()


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


__all__ = ["CONFIG", "RESOURCE", "RUNTIME", "TABLE", "StartupError", "build_table", "create_app", "RouteFileError",
           "swap"]
