"""Prometheus metrics (prometheus-client): what is counted, and ``GET /metrics`` for the whole gateway.

Labels are route patterns, upstream names, methods and statuses: never a raw path, a query or a header, so no
client input (and no secret) becomes a label and the number of series stays bounded. With ``--workers N`` every
worker writes its numbers to files in one private directory (prometheus-client's multiprocess mode) and whichever
worker answers ``/metrics`` adds them all up.

A request's numbers are first added up in plain dicts (``count``, ``observe``: a dict lookup and an addition) and
handed to prometheus-client at most every ``FLUSH_SECONDS`` and before each scrape (``flush``): its ``labels()``
and locked increments cost ~4 us per sample, most of what metrics used to add to a request (README, Performance).
A scrape sees its own worker's numbers exactly; with ``--workers N``, the other workers' as of their last flush,
at most ``FLUSH_SECONDS`` old.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from ..errors import MethodNotAllowed
from ..keys import METRICS

# up to a minute: a slow upstream or a long answer is what an operator looks for; streams land in +Inf
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "(unmatched)"  # the route label of a request no route answered: its raw path is never a label
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_SECONDS = 0.5  # how stale another worker's numbers can be at a scrape
_BOUNDS = (*BUCKETS, float("inf"))  # a histogram's buckets as prometheus-client keeps them: +Inf last


def enable_multiprocess(directory: str) -> None:
    """From now on, metrics created in this process write to ``directory`` (call it in each worker, before
    ``Metrics()``). prometheus-client picks its value class from this variable once, at import, which happened
    before the supervisor forked: ask it again."""
    os.environ[MULTIPROC_ENV] = directory
    values.ValueClass = values.get_value_class()


def forget_process(pid: int, directory: str) -> None:
    """A dead worker's in-flight and open-stream gauges no longer count (its counters keep their totals)."""
    mark_process_dead(pid, directory)


class Metrics:
    """Every metric the gateway exports, created once per process."""

    def __init__(self) -> None:
        self.directory = os.environ.get(MULTIPROC_ENV) or None
        # multiprocess: values live in the directory's files, collected at scrape; otherwise in this registry
        self.registry = CollectorRegistry()
        reg = None if self.directory else self.registry
        by_request = ("route", "method", "status")
        self.requests = Counter("gateway_requests", "Requests answered, by route pattern, method and status",
                                by_request, registry=reg)
        self.duration = Histogram("gateway_request_duration_seconds",
                                  "Time from request to the last byte of the answer", by_request,
                                  buckets=BUCKETS, registry=reg)
        self.upstream = Counter("gateway_upstream_responses", "Upstream answers by upstream and status "
                                "('error' when none came: refused, timeout, TLS)", ("upstream", "status"),
                                registry=reg)
        self.upstream_duration = Histogram("gateway_upstream_duration_seconds",
                                           "Time from sending to an upstream to its response headers", ("upstream",),
                                           buckets=BUCKETS, registry=reg)
        self.in_flight = Gauge("gateway_requests_in_flight", "Requests being handled now", registry=reg,
                               multiprocess_mode="livesum")
        self.streams = Gauge("gateway_open_streams", "Streamed answers (SSE, downloads) being sent now",
                             registry=reg, multiprocess_mode="livesum")
        self.cache = Counter("gateway_cache_lookups", "Cache lookups by route pattern and result (hit, miss)",
                             ("route", "result"), registry=reg)
        self.rate_limited = Counter("gateway_rate_limited", "Requests refused with 429 by the gateway's own limits",
                                    ("route",), registry=reg)
        self.tokens = Counter("gateway_tokens", "Model tokens spent, by route pattern and upstream",
                              ("route", "upstream"), registry=reg)
        self.ws_messages = Counter("gateway_websocket_messages", "WebSocket messages relayed, by route pattern and "
                                   "direction (in: client to upstream)", ("route", "direction"), registry=reg)
        self.ws_bytes = Counter("gateway_websocket_bytes", "WebSocket message bytes relayed, by route pattern and "
                                "direction", ("route", "direction"), registry=reg)

        self.in_flight_now = 0  # the gauges' values, set at each flush (the observe step counts them)
        self.streams_now = 0
        self._counted: dict[tuple[Counter, tuple[str, ...]], float] = {}
        self._observed: dict[tuple[Histogram, tuple[str, ...]], list[float]] = {}  # [sum, count per bucket...]
        self._timer: asyncio.TimerHandle | None = None

    def count(self, counter: Counter, labels: tuple[str, ...], amount: float = 1) -> None:
        """``counter.labels(*labels).inc(amount)``, at the next flush."""
        if self._timer is None:
            self._flush_soon()
        key = (counter, labels)
        self._counted[key] = self._counted.get(key, 0) + amount

    def observe(self, histogram: Histogram, labels: tuple[str, ...], seconds: float) -> None:
        """``histogram.labels(*labels).observe(seconds)``, at the next flush."""
        if self._timer is None:
            self._flush_soon()
        entry = self._observed.get((histogram, labels))
        if entry is None:
            entry = self._observed[(histogram, labels)] = [0.0] * (len(_BOUNDS) + 1)
        entry[0] += seconds
        entry[1 + bisect_left(_BOUNDS, seconds)] += 1  # the first bucket whose bound is >= seconds (le: inclusive)

    def flush(self) -> None:
        """Hand what was counted since the last flush to prometheus-client (its files, with ``--workers``)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        counted, self._counted = self._counted, {}
        for (counter, labels), amount in counted.items():
            counter.labels(*labels).inc(amount)
        observed, self._observed = self._observed, {}
        for (histogram, labels), entry in observed.items():
            child: Any = histogram.labels(*labels)
            # Histogram.observe() of each value, summed: its sum and its (non-cumulative) bucket counters, the
            # attributes it increments itself (prometheus-client 0.20-0.26; tests/test_observe.py checks the output)
            child._sum.inc(entry[0])
            for bucket, n in zip(child._buckets, entry[1:], strict=True):
                if n:
                    bucket.inc(n)
        self.in_flight.set(self.in_flight_now)
        self.streams.set(self.streams_now)

    def _flush_soon(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test, or shutdown): the next scrape or flush() hands it over
            return
        self._timer = loop.call_later(FLUSH_SECONDS, self.flush)

    def render(self) -> bytes:
        self.flush()
        if self.directory is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()  # a fresh one per scrape, as prometheus-client's multiprocess docs say
        MultiProcessCollector(registry, path=self.directory)
        return generate_latest(registry)


def method_label(method: str) -> str:
    """``GET`` -> ``GET``; a made-up method (any token is valid HTTP) -> ``other``: labels stay bounded."""
    return method if method in METHODS else "other"




async def metrics_handler(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text for the whole gateway. Needs no client key; not rate limited."""
    if request.method not in ("GET", "HEAD"):
        raise MethodNotAllowed(request.method, "GET, HEAD")
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


__all__ = ["METRICS", "Metrics", "UNMATCHED", "enable_multiprocess", "forget_process", "method_label",
           "metrics_handler"]
