"""One keep-alive connection pool per upstream, opened at start-up and closed at shutdown (aiohttp cleanup_ctx)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from ..config import Config
from .client import Pool
from .rewrite import UrlRewriter
from .scrub import Scrubber
from .upstream import Upstream

UPSTREAMS = web.AppKey("upstreams", dict[str, Upstream])


def build_upstreams(config: Config, scrubber: Scrubber) -> dict[str, Upstream]:
    """Every upstream of ``config`` with a new, empty connection pool."""
    upstreams = {}
    for name, upstream in config.upstreams.items():
        rewriter = UrlRewriter(upstream, config.forwards, config.server.prefix)
        upstreams[name] = Upstream(upstream, Pool(upstream.url), scrubber, rewriter)
    return upstreams


def upstream_sessions(config: Config, scrubber: Scrubber) -> Callable[[web.Application], AsyncIterator[None]]:
    """The cleanup_ctx that owns every upstream's connection pool for the life of the app."""

    async def sessions(app: web.Application) -> AsyncIterator[None]:
        app[UPSTREAMS] = build_upstreams(config, scrubber)
        try:
            yield
        finally:
            # the pools serving now: a reload (app.swap) may have replaced the dict's contents since start-up
            for upstream in app[UPSTREAMS].values():
                await upstream.pool.close()

    return sessions
