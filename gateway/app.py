"""Assemble the aiohttp application: the route table under the prefix, health checks, and the upstreams' pools."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

from aiohttp import web, web_response

from .broken_route import BrokenRoute
from .config import Config
from .config_jwt import auth_problem
from .discovery import RouteFile, RouteFileError, discover, import_route, prepare_imports
from .edge.answer import apply_answer_headers
from .edge.jwt import jwt_verifier
from .errors import MethodNotAllowed, NotFound, error_response
from .file_routes import FileEndpoint
from .keys import (
    CONFIG,
    FALLBACK,
    METRICS,
    OBSERVER,
    RESOURCE,
    RUNTIME,
    STATE,
    UPSTREAMS,
    Resources,
    Runtime,
)
from .mask.scrub import Scrubber
from .observe import Metrics, Observer, metrics_handler, stream_opened
from .pipeline.build import build_call, build_endpoint, build_fallback, build_health
from .pipeline.endpoint import ForwardEndpoint
from .pipeline.upstream import Upstream
from .pipeline.urlmap import UrlMapper
from .pipeline.websocket import WebSocketEndpoint, WebSocketSessions
from .request_id import add_request_id
from .routing import FallbackResource, GatewayResource, Handler, RouteConflict, RouteTable, bad_path
from .state import open_state
from .upstream.client import FROM_ENV, Pool

SERVER_HEADER = "gateway"  # a fixed generic word: no software name, no version


class StartupError(Exception):
    """Problems that stop the gateway from starting, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def build_table(config: Config, *, broken: list[str] | None = None) -> RouteTable:
    """Discover and import every route file, add the forwards, and check that no two answer the same path.

    ``broken`` (gateway dev): a route module that cannot be used is not a problem that stops start-up; its error is
    appended there and a BrokenRoute answers its path with it, so every other route keeps serving."""
    routes_dir = config.routes_dir
    table = RouteTable(config.server.prefix)
    files: list[RouteFile] = []
    problems: list[str] = []
    if routes_dir is not None:
        display_dir = config.server.routes.as_posix().rstrip("/")
        if not routes_dir.is_dir() and config.server.routes_required:
            problems.append(f"{config.file.name}: server.routes: the folder {display_dir!r} does not exist (looked for "
                            f"{routes_dir}): create it, or set routes: null if the gateway has no file routes")
        files, bad_names = discover(routes_dir, display_dir)
        problems += bad_names
        prepare_imports(routes_dir)
    endpoints = []
    for route in files:
        try:
            module = import_route(route, routes_dir)
            endpoints.append(FileEndpoint(route, module, table.prefix, app_max_body=config.server.max_body))
        except RouteFileError as exc:
            if broken is None:
                problems.append(str(exc))
            else:
                broken.append(str(exc))
                endpoints.append(BrokenRoute(route, str(exc), table.prefix))
    for endpoint in endpoints:  # a route module's config["auth"] needs that kind of client configured
        if problem := auth_problem(endpoint.auth, bool(config.clients.api_keys), config.clients.jwt is not None):
            problems.append(f"{endpoint.source}: config['auth']: {problem}")
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
    metrics = Metrics() if config.server.metrics else None
    observer = Observer(metrics, lines=config.server.access_log)
    state = open_state(config.state, cache_size=config.server.cache_size)
    res = Resources(config, scrubber, build_upstreams(config, scrubber), WebSocketSessions(), state, debug,
                    jwt_verifier(config.clients.jwt), observer)
    app[CONFIG] = config
    app[RUNTIME] = Runtime(scrubber, debug=debug, max_response=config.server.max_response, resources=res)
    app[UPSTREAMS] = dict(res.upstreams)  # filled anew in place on a reload: the running app is frozen
    app[STATE] = res.state
    app[OBSERVER] = observer
    app.router.add_route("*", "/healthz", build_health(healthz, res))
    app.router.add_route("*", "/readyz", build_health(readyz, res))
    if metrics is not None and config.server.metrics:
        app[METRICS] = metrics
        app.router.add_route("*", config.server.metrics, build_health(metrics_handler, res))
    resource = GatewayResource(table, _handlers(table, res), redirect=build_fallback(redirect_trailing_slash, res),
                               bad_path=build_fallback(bad_path, res))
    app[RESOURCE] = resource
    app.router.register_resource(resource)
    fallback = FallbackResource(build_fallback(not_found, res))
    app[FALLBACK] = fallback
    app.router.register_resource(fallback)  # last: whatever nothing matched
    # aiohttp sets "Server: Python/3.x aiohttp/3.x" on every response that has none, also on a request it cannot
    # parse (before any app code runs): replacing that default is the one way to keep software and version out.
    web_response.SERVER_SOFTWARE = SERVER_HEADER
    app.on_response_prepare.append(add_request_id)
    app.on_response_prepare.append(apply_answer_headers)  # what the edge steps put in ANSWER_HEADERS, on every answer
    if observer.records:  # an answer prepared before its handler ends is a stream, counted
        app.on_response_prepare.append(stream_opened(observer))
    app.on_shutdown.append(_start_draining)
    app.cleanup_ctx.append(_close_pools)
    if res.jwt is not None:  # the JWKS is fetched before serving: start-up raises JwksUnavailable if it cannot be
        app.cleanup_ctx.append(res.jwt.cleanup_ctx())
    return app


def _handlers(table: RouteTable, res: Resources) -> dict[int, Handler]:
    return {id(e): build_endpoint(e, res) for e in table.endpoints}


def swap(app: web.Application, config: Config, table: RouteTable) -> None:
    """SIGHUP: new requests are answered from ``config`` and ``table``, with new upstream pools; requests already
    running finish on the old ones, which close each connection once its answer is read. The state (counters,
    cached answers), the WebSocket client and the identity provider's keys are kept."""
    resource = app[RESOURCE]
    if table.prefix != resource.prefix:  # aiohttp's router indexes the prefix: refused before anything changes
        raise ValueError(f"the prefix cannot change from {resource.prefix!r} to {table.prefix!r} while serving")
    runtime = app[RUNTIME]
    old = runtime.resources
    assert old is not None  # set by create_app
    scrubber = Scrubber(config.secret_values)
    res = replace(old, config=config, scrubber=scrubber, upstreams=build_upstreams(config, scrubber))
    resource.swap(table, _handlers(table, res), redirect=build_fallback(redirect_trailing_slash, res),
                  bad_path=build_fallback(bad_path, res))
    app[FALLBACK].swap(build_fallback(not_found, res))
    runtime.scrubber, runtime.max_response, runtime.resources = scrubber, config.server.max_response, res
    upstreams = app[UPSTREAMS]  # the same dict, filled anew: forward() finds the new pools from now on
    runtime.retired = [pool for pool in runtime.retired if pool.busy]  # those emptied since the last reload go
    for upstream in upstreams.values():  # requests already running finish on the old pools, which keep no
        upstream.pool.retire()  # connection once its answer is read
        runtime.retired.append(upstream.pool)
    upstreams.clear()
    upstreams.update(res.upstreams)


def build_upstreams(config: Config, scrubber: Scrubber) -> dict[str, Upstream]:
    """Each upstream with its connection pool (no connection is opened yet) and its call chain for forward()."""
    upstreams = {}
    for name, upstream_config in config.upstreams.items():
        mapper = UrlMapper(upstream_config, config.forwards, config.server.prefix)
        proxy = upstream_config.proxy.reveal() if upstream_config.proxy else \
            FROM_ENV if upstream_config.proxy_from_env else None
        pool = Pool(upstream_config.url, max_connections=upstream_config.max_connections, proxy=proxy)
        upstream = Upstream(upstream_config, pool, scrubber, mapper)
        jwt = config.clients.jwt
        upstream.call = build_call(upstream, max_response=config.server.max_response,
                                   claims=jwt.forward_claims if jwt else ())
        upstreams[name] = upstream
    return upstreams


async def _close_pools(app: web.Application) -> AsyncIterator[None]:
    """The cleanup_ctx that owns every upstream's connection pool (those of the last reload), the WebSocket client
    and the state (counters, cached answers) for the life of the app."""
    try:
        yield
    finally:
        runtime = app[RUNTIME]
        res = runtime.resources
        assert res is not None
        for pool in [*runtime.retired, *(upstream.pool for upstream in app[UPSTREAMS].values())]:
            await pool.close()
        await res.websockets.close()
        await res.state.close()


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


__all__ = ["STATE", "StartupError", "build_table", "create_app", "RouteFileError", "swap"]
