"""THE two assembly functions: every order in the gateway is decided here, with the reason for each position.

    build_endpoint  the edge stack of one route (file or forward), around its terminal handler
    build_call      the call chain of one upstream (or one YAML forward), around ``send``

A step is one shape: ``async def step(x, call_next)``; its factory takes only its slice of config and returns
None when the feature is not configured, and ``chain`` leaves it out. Both are assembled once, at start-up.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config import ForwardConfig
from ..edge.auth import authenticate
from ..edge.errors import render_errors
from ..edge.options import answer_options
from ..forward.upstream import Upstream
from ..keys import Resources
from ..routing import Endpoint, Handler
from .claims import forward_claims
from .headers import filter_request_headers, filter_response_headers, inject_secrets
from .rewrite import rewrite_urls
from .scrub import scrub
from .send import send
from .shape import shape
from .values import Call, chain
from .withhold import withhold_5xx


def build_endpoint(endpoint: Endpoint, res: Resources) -> Handler:
    """The edge stack of one route, outermost first."""
    return chain(endpoint.terminal(res), [
        render_errors(res.scrubber, debug=res.debug),  # outermost: every step below may raise; all errors become JSON
        # observe (access log, metrics): second, so it sees every answer, errors included      -- issue 9
        # cors: before auth and the OPTIONS answer, as a browser's preflight carries no key   -- issue 8
        None if endpoint.own_options else answer_options(endpoint.allow),  # the gateway's own OPTIONS: no key needed
        # who may spend the key at all: a client key and/or a signed-in user (whose claims it sets: request[CLAIMS])
        None if endpoint.public else authenticate(res.config.clients.api_keys, res.jwt, demand=endpoint.auth),
        # rate_limit: the cheapest refusal once the client is known (a 401 is never counted)  -- issue 8
        # cache: below the limit (a hit still counts), above the call (it holds the masked answer) -- issue 8
    ])


def build_call(upstream: Upstream, forward: ForwardConfig | None = None, *, max_response: int,
               claims: Sequence[tuple[str, str]] = ()) -> Call:
    """The call chain of an upstream, outermost first. The request goes down the list to ``send``; the answer comes
    back up it: withhold 5xx -> filter headers -> rewrite URLs -> shape -> scrub."""
    return chain(send(upstream), [
        scrub(upstream.scrubber),  # last on the way back: no step after it can rebuild a secret
        shape(forward.response if forward else None, limit=max_response),  # drop + JMESPath, on a bounded body
        rewrite_urls(upstream.mapper, enabled=forward is not None and forward.rewrite_urls, limit=max_response),
        filter_response_headers(upstream.response_allow, upstream.mapper),  # allowlist; Location/Link mapped
        withhold_5xx(upstream.scrubber),  # first on the way back: nothing of a 5xx goes further
        filter_request_headers(upstream.request_allow),  # before injection: a client cannot pre-set Authorization
        forward_claims(claims),  # after the filter (a client cannot pre-set them), before injection (a secret wins)
        inject_secrets(upstream.inject_headers),  # over whatever came before: the secret always wins
    ])


def build_health(handler: Handler, res: Resources) -> Handler:
    """/healthz, /readyz, /metrics and the 404 fallback: errors as JSON, nothing else (no key, no limit)."""
    return chain(handler, [render_errors(res.scrubber, debug=res.debug)])


__all__ = ["build_call", "build_endpoint", "build_health"]
