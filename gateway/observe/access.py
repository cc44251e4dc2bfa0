"""The access log line and the per-request metrics, written once each request is over.

aiohttp calls ``AccessLog.log`` after the answer's last byte is written, so status, bytes out and duration are
the real ones, also for errors rendered outside the edge stack and for paths no route matched. A handler
cancelled because its client left gets no such call: the observe step writes that line itself (status 499).
What the line says comes from the request's ``Facts``; the raw path and query are never written (they can hold
an injected key or a client's token), the route pattern is.
"""

from __future__ import annotations

import logging
from time import perf_counter

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from ..keys import FACTS, METRICS, STARTED, Facts
from ..request_id import request_id
from .logs import ACCESS, FIELDS
from .metrics import UNMATCHED, Metrics, method_label

log = logging.getLogger(ACCESS)
# when the observe step took the request: perf_counter() is finer than the loop clock aiohttp times with (uvloop's
# ticks in milliseconds), and the histogram's first buckets are 5 and 10 ms
CLIENT_CLOSED = 499  # nginx's status for a client that left before its answer was complete


class AccessLog(AbstractAccessLogger):
    """aiohttp's access-logger hook (``access_log_class``): one JSON line and the request metrics per request."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        try:
            app = request.app  # type: ignore[attr-defined]
        except (AttributeError, RuntimeError):  # a request aiohttp could not parse never reached an app
            app = None
        metrics = app.get(METRICS) if app is not None else None
        started = request.get(STARTED)
        seconds = time if started is None else perf_counter() - started
        record(request, response.status, seconds, response.body_length, metrics)

    @property
    def enabled(self) -> bool:
        return True


def record(request: web.BaseRequest, status: int, seconds: float, sent: int | None, metrics: Metrics | None) -> None:
    facts = request.get(FACTS)
    route = facts.route if facts is not None else _route_without_facts(request)
    method = method_label(request.method)
    if log.isEnabledFor(logging.INFO):
        log.info("%s %s %d", method, route, status,
                 extra={FIELDS: _fields(request, method, route, status, seconds, sent, facts)})
    if metrics is not None:
        _count(metrics, route, method, status, seconds, facts)


def _fields(request: web.BaseRequest, method: str, route: str, status: int, seconds: float, sent: int | None,
            facts: Facts | None) -> dict[str, object]:
    fields: dict[str, object] = {
        "request_id": request_id(request),  # type: ignore[arg-type] - only reads headers and the request's dict
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": round(seconds * 1000, 2),
        "bytes": sent,
    }
    if facts is None:
        facts = Facts(route)  # a request no route answered: the same fields, all unknown
    fields.update(upstream=facts.upstream, upstream_status=facts.upstream_status,
                  upstream_ms=None if facts.upstream_ms is None else round(facts.upstream_ms, 2), cache=facts.cache,
                  client=facts.client, streamed=facts.streamed)
    if facts.tokens is not None:
        fields["tokens"] = facts.tokens
    if (ws := facts.websocket) is not None:  # a WebSocket: the line is written when it closes
        fields.update(ws_messages_in=ws.messages_in, ws_messages_out=ws.messages_out, ws_bytes_in=ws.bytes_in,
                      ws_bytes_out=ws.bytes_out, ws_close_code=ws.close_code)
    return fields


def _count(metrics: Metrics, route: str, method: str, status: int, seconds: float, facts: Facts | None) -> None:
    code = str(status)
    metrics.requests.labels(route, method, code).inc()
    metrics.duration.labels(route, method, code).observe(seconds)
    if facts is None:
        return
    if facts.upstream is not None:
        upstream_code = "error" if facts.upstream_status is None else str(facts.upstream_status)
        metrics.upstream.labels(facts.upstream, upstream_code).inc()
        if facts.upstream_ms is not None:
            metrics.upstream_duration.labels(facts.upstream).observe(facts.upstream_ms / 1000)
    elif status == 429:  # a 429 no upstream sent: the gateway's own limit (or budget) refused it
        metrics.rate_limited.labels(route).inc()
    if facts.cache is not None:
        metrics.cache.labels(route, "hit" if facts.cache == "HIT" else "miss").inc()
    if facts.tokens:
        metrics.tokens.labels(route, facts.upstream or "").inc(facts.tokens)
    if (ws := facts.websocket) is not None:
        for direction, messages, size in (("in", ws.messages_in, ws.bytes_in), ("out", ws.messages_out, ws.bytes_out)):
            metrics.ws_messages.labels(route, direction).inc(messages)
            metrics.ws_bytes.labels(route, direction).inc(size)


def _route_without_facts(request: web.BaseRequest) -> str:
    """``/healthz``, ``/readyz``, ``/metrics``: their fixed path; anything else no route answered: ``(unmatched)``."""
    try:
        resource = request.match_info.route.resource  # type: ignore[attr-defined]
    except (AttributeError, AssertionError):  # a request aiohttp could not parse was never routed
        resource = None
    if isinstance(resource, web.PlainResource):
        return resource.canonical
    return UNMATCHED


__all__ = ["AccessLog", "CLIENT_CLOSED", "record"]
