"""Every typed key the gateway keeps on the aiohttp application or on a request, in one place.

Request keys carry what one step learns for the steps after it (the route match, the client's identity, the
headers every answer must carry, what the access log will say); app keys hold the process-wide resources that
``cleanup_ctx`` owns. Steps get their resources from their factories (``Resources``), not from the app.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict

from .config import Config
from .mask.scrub import Scrubber
from .pipeline.upstream import Upstream
from .state import State

if TYPE_CHECKING:
    from .edge.jwt import JwtVerifier
    from .observe.metrics import Metrics
    from .observe.step import Observer
    from .pipeline.websocket import WebSocketSessions
    from .routing import FallbackResource, GatewayResource
    from .upstream.client import Pool


@dataclass(frozen=True, slots=True)
class Match:
    """Which route answers a request, and its parameters."""

    endpoint: Any  # a routing.Endpoint
    params: dict[str, str]
    raw: dict[str, list[str]]  # catch-all params as their list of segments (for building upstream URLs)


@dataclass(slots=True)
class Facts:
    """What is known about one request, filled in by the steps it passes, read by the access log and metrics."""

    route: str  # the route pattern ("/api/post/[pid]"), never the raw path
    upstream: str | None = None  # the upstream's name
    upstream_status: int | None = None
    upstream_ms: float | None = None  # from sending upstream to its response headers (the last attempt's)
    cache: str | None = None  # "HIT" or "MISS" when the route is cached
    client: str | None = None  # the client identity ("key:3f2a...", "sub:...", "ip:..."), never a key or a token
    tokens: int | None = None  # model tokens spent, when a budget counts them
    streamed: bool = False  # the answer was streamed (set by the observe step when it is prepared)
    websocket: WebSocketTraffic | None = None  # what a WebSocket forward's connection carried, once it closed
    started: float = 0.0  # perf_counter() when the observe step saw the request
    inside: bool = False  # the request is still inside its observe step (an answer prepared now is a stream)


@dataclass(slots=True)
class WebSocketTraffic:
    """One WebSocket connection, both ways: counted as messages go, read by the access log and metrics."""

    messages_in: int = 0  # client -> upstream
    messages_out: int = 0  # upstream -> client
    bytes_in: int = 0
    bytes_out: int = 0
    close_code: int | None = None


@dataclass
class Runtime:
    """Process-wide state a request handler may need (most steps get theirs from their factory instead)."""

    scrubber: Scrubber
    debug: bool = False
    draining: bool = False
    max_response: int = 16 * 1024 * 1024  # the most of an upstream answer read into memory
    retired: list[Pool] = field(default_factory=list)  # upstream pools a reload replaced that still had connections
    resources: Resources | None = None  # what the edge stacks serving now were built from (swapped on a reload)


@dataclass(frozen=True)
class Resources:
    """What the step factories are built from, once at start-up."""

    config: Config
    scrubber: Scrubber
    upstreams: Mapping[str, Upstream]
    websockets: WebSocketSessions  # the client of WebSocket forwards
    state: State  # rate-limit counters and cached answers
    debug: bool = False
    jwt: JwtVerifier | None = None  # clients.jwt: one verifier (and one cached JWKS) for every route
    observer: Observer | None = None  # the access log's Facts and the metrics


# -- the application ------------------------------------------------------------------------------------------
CONFIG = web.AppKey("config", Config)
RUNTIME = web.AppKey("runtime", Runtime)
UPSTREAMS = web.AppKey("upstreams", dict[str, Upstream])  # forward() finds its upstream's call chain here
STATE = web.AppKey("state", State)  # rate-limit counters and cached answers (/readyz reports its backend)
# typed by annotation only: their modules import this one
RESOURCE: web.AppKey[GatewayResource] = web.AppKey("gateway.resource")  # the route table's resource (swapped)
FALLBACK: web.AppKey[FallbackResource] = web.AppKey("gateway.fallback")  # the 404 of paths no route answers
OBSERVER: web.AppKey[Observer] = web.AppKey("gateway.observer")
METRICS: web.AppKey[Metrics] = web.AppKey("gateway.metrics")

# -- one request ----------------------------------------------------------------------------------------------
MATCH = web.RequestKey("gateway.match", Match)  # which route, and its parameters (set by the router)
# headers every answer to this request carries, errors and streams included (CORS, RateLimit, ...); merged into
# the response when it is prepared. A "Vary" entry adds its tokens to the response's own Vary.
ANSWER_HEADERS = web.RequestKey("gateway.answer_headers", CIMultiDict)
FACTS = web.RequestKey("gateway.facts", Facts)
IDENTITY = web.RequestKey("gateway.identity", str)  # who is calling: see Facts.client
REQUEST_ID = web.RequestKey("gateway.request_id", str)  # the X-Request-Id this request answers with
CLAIMS = web.RequestKey("gateway.claims", dict)  # a verified JWT's claims (handlers read req["claims"] too)
HEAD_AS_GET = web.RequestKey("gateway.head_as_get", bool)  # a HEAD answered by the module's GET function
PENDING = web.RequestKey("gateway.upstream_responses", list)  # forward() answers a handler has not returned
