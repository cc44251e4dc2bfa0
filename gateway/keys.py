"""Every typed key the gateway keeps on the aiohttp application or on a request, in one place.

Request keys carry what one step learns for the steps after it (the route match, the client's identity, the
headers every answer must carry, what the access log will say); app keys hold the process-wide resources that
``cleanup_ctx`` owns. Steps get their resources from their factories (``Resources``), not from the app.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict

from .config import Config
from .forward.scrub import Scrubber
from .forward.upstream import Upstream
from .state import State

if TYPE_CHECKING:
    from .pipeline.websocket import WebSocketSessions

if TYPE_CHECKING:
    from .edge.jwt import JwtVerifier


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
    cache: str | None = None  # "HIT" or "MISS" when the route is cached
    client: str | None = None  # the client identity ("key:3f2a...", "sub:...", "ip:..."), never a key or a token
    tokens: int | None = None  # model tokens spent, when a budget counts them


@dataclass
class Runtime:
    """Process-wide state a request handler may need (most steps get theirs from their factory instead)."""

    scrubber: Scrubber
    debug: bool = False
    draining: bool = False
    max_response: int = 16 * 1024 * 1024  # the most of an upstream answer read into memory


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


# -- the application ------------------------------------------------------------------------------------------
CONFIG = web.AppKey("config", Config)
RUNTIME = web.AppKey("runtime", Runtime)
UPSTREAMS = web.AppKey("upstreams", dict[str, Upstream])  # forward() finds its upstream's call chain here
STATE = web.AppKey("state", State)  # rate-limit counters and cached answers (/readyz reports its backend)

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
