"""A ``forwards:`` entry as an endpoint of the route table: its outgoing request built, its call chain run."""

from __future__ import annotations

from aiohttp import web

from ..config import Config, ForwardConfig
from ..errors import MethodNotAllowed
from ..keys import MATCH, Resources
from ..paths import pattern_of
from ..routing import Handler
from .build import build_call
from .headers import request_allowlist
from .outgoing import forward_request
from .respond import respond
from .urls import UrlTemplate


class ForwardEndpoint:
    kind = "forward"
    own_options = False  # the gateway answers OPTIONS for a forward
    websocket = False

    def __init__(self, forward: ForwardConfig, config: Config, prefix: str) -> None:
        self.forward = forward
        self.segments = forward.segments
        self.pattern = pattern_of(prefix, forward.segments)
        self.target = self.upstream = forward.upstream
        self.rate_limit = forward.rate_limit
        self.cache = forward.cache if not forward.websocket else None
        self.budgeted = bool(forward.guard and forward.guard.budget)
        where = f"{config.file.name}:{forward.line}" if forward.line else config.file.name
        self.source = f"{where}: forwards.{forward.key}"
        self.public = forward.public
        self.auth = forward.auth
        allowed = set(forward.methods) | {"OPTIONS"}
        if "GET" in allowed:
            allowed.add("HEAD")
        self.methods = tuple(sorted(allowed))
        self.allow = ", ".join(self.methods)
        self.max_body = forward.max_body if forward.max_body is not None else config.server.max_body
        upstream = config.upstreams[forward.upstream]
        self.receives = request_allowlist(upstream.forward_headers)
        self.exposes = upstream.expose_headers

    def terminal(self, res: Resources) -> Handler:
        upstream = res.upstreams[self.target]
        jwt = res.config.clients.jwt
        call = build_call(upstream, self.forward, max_response=res.config.server.max_response,
                          claims=jwt.forward_claims if jwt else (), state=res.state)
        template = UrlTemplate(upstream.url, self.forward.path, upstream.inject_query_names)
        allowed = frozenset(self.methods) - {"OPTIONS"}
        allow, max_body, origin = self.allow, self.max_body, self.forward.rewrite_urls

        async def forward_endpoint(request: web.Request) -> web.StreamResponse:
            if request.method not in allowed:
                raise MethodNotAllowed(request.method, allow)
            out = forward_request(request, request[MATCH], template, upstream, max_body=max_body, origin=origin)
            return await respond(request, await call(out))

        return forward_endpoint
