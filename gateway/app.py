"""Assemble the aiohttp application: the route table under the prefix, health checks, and the upstreams' pools."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web, web_response

from .config import Config
from .discovery import RouteFileError, discover, import_route, prepare_imports
from .edge.answer import apply_answer_headers
from .errors import MethodNotAllowed, NotFound, error_response
from .file_routes import FileEndpoint
from .forward.client import Pool
from .forward.scrub import Scrubber
from .forward.upstream import Upstream
from .keys import CONFIG, RUNTIME, STATE, UPSTREAMS, Resources, Runtime
from .pipeline.build import build_call, build_endpoint, build_fallback, build_health
from .pipeline.endpoint import ForwardEndpoint
from .pipeline.urlmap import UrlMapper
from .pipeline.websocket import WebSocketEndpoint, WebSocketSessions
from .request_id import add_request_id
from .routing import FallbackResource, GatewayResource, RouteConflict, RouteTable, bad_path
from .state import State, open_state

SERVER_HEADER = "gateway"  # a fixed generic word: no software name, no version


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
        kind = WebSocketEndpoint if forward.websocket else ForwardEndpoint
        endpoints.append(kind(forward, config, table.prefix))
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
    scrubber = Scrubber(config.secret_values)  # one for the app: upstream bodies, headers and our own log lines
    upstreams = build_upstreams(config, scrubber)
    websockets = WebSocketSessions()
    state = open_state(config.state, cache_size=config.server.cache_size)
    res = Resources(config, scrubber, upstreams, websockets, state, debug)
    app[CONFIG] = config
    app[RUNTIME] = Runtime(scrubber, debug=debug, max_response=config.server.max_response)
    app[UPSTREAMS] = upstreams
    app[STATE] = state
    app.router.add_route("*", "/healthz", build_health(healthz, res))
    app.router.add_route("*", "/readyz", build_health(readyz, res))
    handlers = {id(e): build_endpoint(e, res) for e in table.endpoints}
    app.router.register_resource(GatewayResource(table, handlers, redirect=build_fallback(redirect_trailing_slash, res),
                                                 bad_path=build_fallback(bad_path, res)))
    app.router.register_resource(FallbackResource(build_fallback(not_found, res)))  # last: whatever nothing matched
    # aiohttp sets "Server: Python/3.x aiohttp/3.x" on every response that has none, also on a request it cannot
    # parse (before any app code runs): replacing that default is the one way to keep software and version out.
    web_response.SERVER_SOFTWARE = SERVER_HEADER
    app.on_response_prepare.append(add_request_id)
    app.on_response_prepare.append(apply_answer_headers)  # what the edge steps put in ANSWER_HEADERS, on every answer
    app.on_shutdown.append(_start_draining)
    app.cleanup_ctx.append(_close_pools(upstreams, websockets, state))
    return app


def build_upstreams(config: Config, scrubber: Scrubber) -> dict[str, Upstream]:
    """Each upstream with its connection pool (no connection is opened yet) and its call chain for forward()."""
    upstreams = {}
    for name, upstream_config in config.upstreams.items():
        mapper = UrlMapper(upstream_config, config.forwards, config.server.prefix)
        upstream = Upstream(upstream_config, Pool(upstream_config.url), scrubber, mapper)
        upstream.call = build_call(upstream, max_response=config.server.max_response)
        upstreams[name] = upstream
    return upstreams


def _close_pools(upstreams: dict[str, Upstream], websockets: WebSocketSessions,
                 state: State) -> Callable[[web.Application], AsyncIterator[None]]:
    """The cleanup_ctx that owns every upstream's connection pool, the WebSocket client and the state (counters,
    cached answers) for the life of the app."""

    async def pools(app: web.Application) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for upstream in upstreams.values():
                await upstream.pool.close()
            await websockets.close()
            await state.close()

    return pools


async def not_found(request: web.Request) -> web.StreamResponse:
    raise NotFound()


async def healthz(request: web.Request) -> web.Response:
    _only_get(request)
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    _only_get(request)
    if request.app[RUNTIME].draining:
        return error_response(503, "unavailable", "the gateway is shutting down", {"Retry-After": "1"})
    return web.json_response({"status": "ready", "state": await request.app[STATE].status()})


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


__all__ = ["STATE", "StartupError", "build_table", "create_app", "RouteFileError"]
