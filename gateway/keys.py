"""Every typed key the gateway keeps on the aiohttp application or on a request, in one place.

Request keys carry what one step learns for the steps after it (the client's identity, the headers every answer
must carry, what the access log will say); app keys hold the process-wide resources owned by ``cleanup_ctx``.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict


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


# headers every answer to this request carries, errors and streams included (CORS, RateLimit, ...); merged into
# the response when it is prepared. A "Vary" entry adds its tokens to the response's own Vary.
ANSWER_HEADERS = web.RequestKey("gateway.answer_headers", CIMultiDict)
FACTS = web.RequestKey("gateway.facts", Facts)
IDENTITY = web.RequestKey("gateway.identity", str)  # who is calling: see Facts.client
CLAIMS = web.RequestKey("gateway.claims", dict)  # a verified JWT's claims (handlers read req["claims"] too)
