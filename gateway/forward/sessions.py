"""One keep-alive connection pool per upstream, opened at start-up and closed at shutdown (aiohttp cleanup_ctx)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from ..config import Config
from .client import FROM_ENV, Pool
from .rewrite import UrlRewriter
from .scrub import Scrubber
from .upstream import Upstream

UPSTREAMS = web.AppKey("upstreams", dict[str, Upstream])


def upstream_sessions(config: Config, scrubber: Scrubber) -> Callable[[web.Application], AsyncIterator[None]]:
    """The cleanup_ctx that owns every upstream's connection pool for the life of the app."""

    async def sessions(app: web.Application) -> AsyncIterator[None]:
        pools = []
        upstreams = {}
        for name, upstream in config.upstreams.items():
            proxy = upstream.proxy.reveal() if upstream.proxy else FROM_ENV if upstream.proxy_from_env else None
            pool = Pool(upstream.url, max_connections=upstream.max_connections, proxy=proxy)
            pools.append(pool)
            rewriter = UrlRewriter(upstream, config.forwards, config.server.prefix)
            upstreams[name] = Upstream(upstream, pool, scrubber, rewriter)
        app[UPSTREAMS] = upstreams
        try:
            yield
        finally:
            for pool in pools:
                await pool.close()

    return sessions
