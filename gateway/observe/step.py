"""The ``observe`` edge step: the request's Facts, in-flight and open-stream gauges.

It sits right inside error rendering, so everything below it (auth refusals, rate limits, upstream failures) is
seen; the line itself is written by ``AccessLog`` once the answer is sent (see access.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from time import perf_counter

from aiohttp import web

from ..keys import FACTS, Facts
from .access import CLIENT_CLOSED, record
from .metrics import Metrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Step = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


class Observer:
    """Per process: the metrics (None when ``server.metrics: false``) and whether anything is recorded per request."""

    def __init__(self, metrics: Metrics | None, *, lines: bool = True) -> None:
        self.metrics = metrics
        self.records = metrics is not None or lines  # anything per request (lines: server.access_log): else no step


def observe(observer: Observer, *, route: str) -> Step | None:
    """The step for the endpoint whose pattern is ``route`` (``/api/post/[pid]``); None when there is neither an
    access log nor metrics (nothing would read the Facts it creates)."""
    if not observer.records:
        return None
    metrics = observer.metrics

    async def step(request: web.Request, call_next: Handler) -> web.StreamResponse:
        started = perf_counter()
        facts = request[FACTS] = Facts(route=route, started=started, inside=True)
        if metrics is not None:
            metrics.in_flight_now += 1
        try:
            return await call_next(request)
        except asyncio.CancelledError:  # the client left (or shutdown_grace ran out): aiohttp logs no line for it
            # a WebSocket the client closed also ends this way: it was a 101 and its close code says how it ended
            closed = facts.websocket is not None and facts.websocket.close_code is not None
            record(request, 101 if closed else CLIENT_CLOSED, perf_counter() - started, None, metrics)
            raise
        finally:
            facts.inside = False
            if metrics is not None:
                metrics.in_flight_now -= 1
                if facts.streamed:
                    metrics.streams_now -= 1

    return step


def stream_opened(observer: Observer) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An ``on_response_prepare`` hook: an answer prepared while its handler still runs is a stream (SSE, a
    download, a WebSocket) and counts as open until the observe step sees the handler finish."""
    metrics = observer.metrics

    async def opened(request: web.Request, response: web.StreamResponse) -> None:
        if isinstance(response, web.Response):
            return
        facts = request.get(FACTS)
        if facts is not None and facts.inside and not facts.streamed:
            facts.streamed = True
            if metrics is not None:
                metrics.streams_now += 1

    return opened


__all__ = ["Observer", "observe", "stream_opened"]
