"""THE two assembly functions: every order in the gateway is decided here, with the reason for each position.

    build_endpoint  the edge stack of one route (file or forward), around its terminal handler
    build_call      the call chain of one upstream (or one YAML forward), around ``send``

A step is one shape: ``async def step(x, call_next)``; its factory takes only its slice of config and returns
None when the feature is not configured, and ``chain`` leaves it out. Both are assembled once, at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..config import METHODS, ForwardConfig
from ..edge.auth import authenticate
from ..edge.cache import cache, vary_headers
from ..edge.cors import cors
from ..edge.errors import render_errors
from ..edge.identity import identify
from ..edge.options import answer_options
from ..edge.origin import check_origin
from ..edge.ratelimit import rate_limit, route_policies
from ..edge.ws_credential import browser_credential
from ..keys import Resources
from ..observe import observe
from ..origins import OriginPolicy
from ..routing import Endpoint, Handler
from ..state import State
from .claims import forward_claims
from .guard import guard
from .headers import filter_request_headers, filter_response_headers, inject_secrets
from .hold import hold_whole
from .rewrite import rewrite_urls
from .scrub import scrub
from .send import BUFFER_LIMIT, send
from .shape import shape
from .upstream import Upstream
from .values import Call, chain
from .withhold import withhold_5xx


def build_endpoint(endpoint: Endpoint, res: Resources) -> Handler:
    """The edge stack of one route, outermost first."""
    clients = res.config.clients
    return chain(endpoint.terminal(res), [
        render_errors(res.scrubber, debug=res.debug,  # outermost: every step below may raise; all errors become JSON,
                      style=res.config.upstreams[endpoint.upstream].errors if endpoint.upstream else "gateway"),
        observe(res.observer, route=endpoint.pattern) if res.observer else None,  # second: it sees every answer,
        # errors included; it gives the request its Facts, which the access log and the metrics read
        cors(clients.cors, methods=endpoint.methods, allow_headers=_may_receive(endpoint, res),  # before auth and
             expose_headers=endpoint.exposes),  # the OPTIONS answer: a browser's preflight carries no key
        check_origin(_origins(res), enabled=endpoint.websocket),  # a WebSocket is not protected by CORS
        None if endpoint.own_options else answer_options(endpoint.allow),  # the gateway's own OPTIONS: no key needed
        browser_credential(enabled=endpoint.websocket),  # a browser's WebSocket brings its key in a subprotocol
        # who may spend the key at all: a client key and/or a signed-in user (whose claims it sets: request[CLAIMS])
        None if endpoint.public else authenticate(clients.api_keys, res.jwt, demand=endpoint.auth),
        identify(res.config.server.trusted_proxies,  # who is calling: a verified JWT's sub, key hash, or the IP;
                 enabled=_names_clients(endpoint, res),  # only when something below or the access log reads it
                 verified=bool(clients.api_keys or clients.jwt), observed=bool(res.observer and res.observer.records)),
        rate_limit(route_policies(clients.rate_limit, endpoint.rate_limit, endpoint.pattern),  # the cheapest
                   res.state),  # refusal once the client is known (a 401 or a preflight is never counted)
        cache(endpoint.cache, res.state, pattern=endpoint.pattern, vary=_vary(endpoint, res),  # below the limit
              timeout=_timeout(endpoint, res),  # (a hit still counts), above the call: it holds the masked answer;
              per_client=_per_user(res)),  # who calls reaches the upstream: one entry per user
    ])


def build_call(upstream: Upstream, forward: ForwardConfig | None = None, *, max_response: int,
               claims: Sequence[tuple[str, str]] = (), state: State | None = None) -> Call:
    """The call chain of an upstream, outermost first. The request goes down the list to ``send``; the answer comes
    back up it: withhold 5xx -> filter headers -> rewrite URLs -> shape -> scrub."""
    return chain(send(upstream), [
        hold_whole(BUFFER_LIMIT, enabled=forward is not None and forward.cache is not None),  # a cached forward's
        # small streamed answer read whole, after every change to it, so the cache can keep what the client gets
        scrub(upstream.scrubber),  # last on the way back: no step after it can rebuild a secret
        shape(forward.response if forward else None, limit=max_response),  # drop + JMESPath, on a bounded body
        rewrite_urls(upstream.mapper, enabled=forward is not None and forward.rewrite_urls, limit=max_response),
        guard(forward.guard if forward else None, state, scope=forward.key if forward else "", limit=max_response),
        # the body checked, capped and budgeted before anything goes; on the way back it reads the usage below
        # shape/rewrite (which may drop it) and adds its RateLimit fields above the header allowlist
        filter_response_headers(upstream.response_allow, upstream.mapper),  # allowlist; Location/Link mapped
        withhold_5xx(upstream.scrubber),  # first on the way back: nothing of a 5xx goes further
        filter_request_headers(upstream.request_allow),  # before injection: a client cannot pre-set Authorization
        forward_claims(claims),  # after the filter (a client cannot pre-set them), before injection (a secret wins)
        inject_secrets(upstream.inject_headers),  # over whatever came before: the secret always wins
    ])


def build_health(handler: Handler, res: Resources) -> Handler:
    """/healthz, /readyz and /metrics: errors as JSON, nothing else (no key, no limit)."""
    return chain(handler, [render_errors(res.scrubber, debug=res.debug)])


def build_fallback(handler: Handler, res: Resources) -> Handler:
    """What no route answers (a 404, the 308 of a trailing slash, the 400 of an unsafe path): errors as JSON, with
    the CORS headers a page needs to read them."""
    return chain(handler, [
        render_errors(res.scrubber, debug=res.debug),
        cors(res.config.clients.cors, methods=METHODS, allow_headers=None),
    ])


def _may_receive(endpoint: Endpoint, res: Resources) -> frozenset[str] | None:
    """The request headers a preflight may ask for: what the route passes on, the gateway's own, the client key."""
    if endpoint.receives is None:
        return None  # a file route reads whatever it likes
    auth = {"authorization", "x-api-key"} if res.config.clients.api_keys else set()
    return endpoint.receives | {"x-request-id"} | auth


def _names_clients(endpoint: Endpoint, res: Resources) -> bool:
    """Whether anything reads who is calling: a rate limit, a per-user cache, a token budget, the access log."""
    config = res.config
    return bool(config.server.access_log or config.clients.rate_limit or endpoint.rate_limit
                or (endpoint.cache is not None and _per_user(res)) or endpoint.budgeted)


def _per_user(res: Resources) -> bool:
    """A cached answer is per user when the user's claims reach the upstream."""
    jwt = res.config.clients.jwt
    return bool(jwt and jwt.forward_claims)


def _vary(endpoint: Endpoint, res: Resources) -> tuple[str, ...]:
    """The request headers an upstream may answer differently for: a forward's upstream's; for a route module,
    which may call forward() to any upstream, every upstream's."""
    upstreams = res.config.upstreams
    names = upstreams[endpoint.upstream].forward_headers if endpoint.upstream else \
        [name for upstream in upstreams.values() for name in upstream.forward_headers]
    return vary_headers(names)


def _timeout(endpoint: Endpoint, res: Resources) -> float:
    """How long requests coalesced on one cache miss wait for its answer: the upstream's timeout (the longest one
    for a route module)."""
    upstreams = res.config.upstreams
    if endpoint.upstream:
        return upstreams[endpoint.upstream].timeout
    return max((upstream.timeout for upstream in upstreams.values()), default=30.0)


def _origins(res: Resources) -> Callable[[str], bool] | None:
    policy = res.config.clients.cors
    return OriginPolicy(policy.origins).allows if policy is not None else None


__all__ = ["build_call", "build_endpoint", "build_fallback", "build_health"]
