"""A ``forwards:`` entry as an endpoint of the route table: build the upstream call, send it, relay the answer.

The order is fixed here, once (STYLE rule 2): method check -> URL from the template -> client headers filtered
through the allowlist -> secrets injected over them -> send -> relay (shape, scrub, stream).
"""

from __future__ import annotations

from aiohttp import web

from ..config import Config, ForwardConfig
from ..errors import MethodNotAllowed, PayloadTooLarge
from ..keys import FACTS
from ..paths import pattern_of
from ..routing import MATCH
from .body import body_headers, request_body
from .headers import pick_request_headers
from .relay import relay
from .rewrite import UrlRewriter
from .sessions import UPSTREAMS
from .shape import Shaper
from .urls import UrlTemplate


class ForwardEndpoint:
    kind = "forward"

    def __init__(self, forward: ForwardConfig, config: Config, prefix: str) -> None:
        upstream = config.upstreams[forward.upstream]
        self.segments = forward.segments
        self.pattern = pattern_of(prefix, forward.segments)
        self.target = forward.upstream
        where = f"{config.file.name}:{forward.line}" if forward.line else config.file.name
        self.source = f"{where}: forwards.{forward.key}"
        self.public = forward.public
        allowed = set(forward.methods) | {"OPTIONS"}
        if "GET" in allowed:
            allowed.add("HEAD")
        self.methods = tuple(sorted(allowed))
        self.allow = ", ".join(self.methods)
        self._allowed = frozenset(allowed - {"OPTIONS"})
        self._url = UrlTemplate(upstream.url, forward.path, {name for name, _ in upstream.inject.query})
        self._max_body = forward.max_body if forward.max_body is not None else config.server.max_body
        self._shape = Shaper(forward.response) if forward.response else None
        self._rewriter = UrlRewriter(upstream, config.forwards, prefix)
        self._rewrite_body = forward.rewrite_urls

    async def handle(self, request: web.Request) -> web.StreamResponse:
        method = request.method
        if method not in self._allowed:
            if method == "OPTIONS":
                return web.Response(status=204, headers={"Allow": self.allow})
            raise MethodNotAllowed(method, self.allow)
        upstream = request.app[UPSTREAMS][self.target]
        match = request[MATCH]
        url = self._url.build(match.params, match.raw, request.rel_url.raw_query_string, upstream.inject_query)
        headers = pick_request_headers(request.headers, upstream.request_allow)
        headers.update(upstream.inject_headers)
        body = request_body(request, self._max_body)
        if body is not None:
            headers.update(body_headers(request))
        try:
            up = await upstream.send(method, url, headers, body, request.get(FACTS))
        except Exception:
            if body is not None and body.exceeded:
                raise PayloadTooLarge(f"the request body is larger than the limit of {self._max_body} bytes") from None
            raise
        return await relay(
            request, up, upstream, rewriter=self._rewriter, shape=self._shape, rewrite_body=self._rewrite_body,
        )
