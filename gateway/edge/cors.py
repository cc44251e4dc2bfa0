"""CORS (SPEC §7) as an edge step: preflights answered here, the CORS headers of every other answer set here.

The headers go into ``request[ANSWER_HEADERS]`` before the inner steps run, so they also reach an error raised
below (a 401, a 429, a 502) and a stream the endpoint prepares itself. Whatever the origin, every answer says
``Vary: Origin``: with CORS on, what a browser may read of it depends on the Origin it came with.

    OPTIONS + Origin: https://app.example.com + Access-Control-Request-Method: POST    (a preflight)
      -> 204, Access-Control-Allow-Origin: https://app.example.com, -Allow-Methods, -Allow-Headers, -Max-Age
    the same from an origin not in clients.cors.origins -> 403 forbidden, no Access-Control-Allow-*
    GET + Origin: https://app.example.com -> the route's answer + Access-Control-Allow-Origin, -Expose-Headers
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from aiohttp import hdrs, web
from multidict import CIMultiDict

from ..config import CorsConfig
from ..errors import Forbidden
from ..origins import OriginPolicy
from .answer import answer_headers

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Step = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

# the gateway's own headers a page may read on any answer (the CORS-safelisted ones need no mention)
EXPOSED = ("RateLimit", "RateLimit-Policy", "Retry-After", "X-Request-Id", "X-Cache")
MAX_REQUESTED_HEADERS = 64  # header names one preflight may ask for; a browser page needs a handful
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")
# hdrs' names are multidict's istr: a case-insensitive map need not fold them again
_ALLOW_ORIGIN = hdrs.ACCESS_CONTROL_ALLOW_ORIGIN  # the request's origin itself, also under "*": never a literal *
_PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


def cors(config: CorsConfig | None, *, methods: Iterable[str], allow_headers: frozenset[str] | None,
         expose_headers: Iterable[str] = ()) -> Step | None:
    """The CORS step for one route, or None without ``clients.cors``.

    ``methods``: what the route answers (a preflight for another is refused); ``allow_headers``: the lower-case
    request headers the route may receive (None: any); ``expose_headers``: the upstream headers it passes back.
    """
    if config is None:
        return None
    policy = OriginPolicy(config.origins)
    methods = tuple(dict.fromkeys(methods))
    allowed_methods = frozenset(methods)
    allow_methods = ", ".join(methods)
    exposed = {name.lower(): name for name in (*expose_headers, *EXPOSED)}  # later names win: the gateway's spelling
    expose = ", ".join(exposed.values())
    max_age = str(int(config.max_age))
    credentials = ((hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS, "true"),) if config.credentials else ()
    readable = (*credentials, (hdrs.ACCESS_CONTROL_EXPOSE_HEADERS, expose))  # with the origin, on an allowed answer

    def preflight(request: web.Request, headers: CIMultiDict[str], origin: str, allowed: bool) -> web.Response:
        if not allowed:
            raise Forbidden("this origin is not in clients.cors.origins: its preflight is refused")
        if request.headers["Access-Control-Request-Method"] not in allowed_methods:
            raise Forbidden(f"the preflight asks for a method this route does not answer (it answers {allow_methods})")
        requested = _requested_headers(request.headers.get("Access-Control-Request-Headers", ""), allow_headers)
        headers.extend(((_ALLOW_ORIGIN, origin), *credentials))
        reply = web.Response(status=204)
        reply.headers["Access-Control-Allow-Methods"] = allow_methods
        if requested:
            reply.headers["Access-Control-Allow-Headers"] = requested
        reply.headers["Access-Control-Max-Age"] = max_age
        return reply

    async def step(request: web.Request, call_next: Handler) -> web.StreamResponse:
        headers = answer_headers(request)
        origins = request.headers.getall(hdrs.ORIGIN, ())
        allowed = len(origins) == 1 and policy.allows(origins[0])  # two Origin headers: no browser sends that
        if request.method != "OPTIONS":
            vary = "Origin"
        elif origins and "Access-Control-Request-Method" in request.headers:
            headers.add(hdrs.VARY, _PREFLIGHT_VARY)
            return preflight(request, headers, origins[0], allowed)
        else:  # an OPTIONS that is no preflight is the route's to answer
            vary = _PREFLIGHT_VARY
        if allowed:
            headers.extend(((hdrs.VARY, vary), (_ALLOW_ORIGIN, origins[0]), *readable))
        else:
            headers.add(hdrs.VARY, vary)
        return await call_next(request)

    return step


def _requested_headers(value: str, allow: frozenset[str] | None) -> str:
    """``"Content-Type, x-trace"`` -> ``"content-type, x-trace"`` when the route may receive both, else Forbidden."""
    names = [name for name in (part.strip().lower() for part in value.split(",")) if name]
    if len(names) > MAX_REQUESTED_HEADERS:
        raise Forbidden(f"the preflight asks for more than {MAX_REQUESTED_HEADERS} request headers")
    for name in names:
        if not set(name) <= _TOKEN:
            raise Forbidden("the preflight asks for a request header whose name is not a valid header name")
        if allow is not None and name not in allow:
            raise Forbidden(f"this route does not accept the request header {name[:64]}: the preflight is refused")
    return ", ".join(dict.fromkeys(names))
