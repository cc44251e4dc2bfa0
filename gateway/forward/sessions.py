"""One keep-alive ClientSession per upstream, opened at start-up and closed at shutdown (aiohttp cleanup_ctx)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from ..config import Config
from .rewrite import UrlRewriter
from .scrub import Scrubber
from .upstream import Upstream

UPSTREAMS = web.AppKey("upstreams", dict[str, Upstream])


def upstream_sessions(config: Config, scrubber: Scrubber) -> Callable[[web.Application], AsyncIterator[None]]:
    """The cleanup_ctx that owns every upstream's session for the life of the app."""

    async def sessions(app: web.Application) -> AsyncIterator[None]:
        opened = []
        upstreams = {}
        for name, upstream in config.upstreams.items():
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                cookie_jar=aiohttp.DummyCookieJar(),  # never keep an upstream's cookies
                auto_decompress=True,  # a compressed body is decoded so that it can be scrubbed; its header dropped
            )
            opened.append(session)
            rewriter = UrlRewriter(upstream, config.forwards, config.server.prefix)
            upstreams[name] = Upstream(upstream, session, scrubber, rewriter)
        app[UPSTREAMS] = upstreams
        try:
            yield
        finally:
            for session in opened:
                await session.close()

    return sessions
